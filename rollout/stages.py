"""Rollout stages of a site and the transitions allowed between them.

A site moves one step at a time: up by a promotion, down by a rollback. Stages are
ordered by how much the site trusts the model, from manual (a person checks everything
and nobody is alerted) to full (the model alerts everywhere, a sample is audited).
"""

from __future__ import annotations

import enum


class Stage(str, enum.Enum):
    """How much a site trusts the model, from least to most."""

    MANUAL = "manual"
    LIMITED = "limited"
    EXPANSION = "expansion"
    FULL = "full"

    @property
    def rank(self) -> int:
        return list(Stage).index(self)

    def next(self) -> "Stage | None":
        """The stage a promotion leads to; None at full."""
        stages = list(Stage)
        return stages[self.rank + 1] if self.rank + 1 < len(stages) else None

    def previous(self) -> "Stage | None":
        """The stage a rollback leads to; None at manual."""
        return list(Stage)[self.rank - 1] if self.rank > 0 else None


def is_legal_transition(current: Stage, target: Stage) -> bool:
    """Stages move one step at a time, up (promote) or down (rollback)."""
    return abs(current.rank - target.rank) == 1


def parse_stage(value: str) -> Stage:
    """The stage named ``value`` (case-insensitive).

    Raises:
        ValueError: naming the stages there are.
    """
    try:
        return Stage(str(value).strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in Stage)
        raise ValueError(f"{value!r} is not a rollout stage; use one of {names}") from None
