"""Read models for the `rollout status` / `history` commands, the web page and the API.

Responsible for assembling, per site, its stage, since when, the model in charge, every
gate with its numbers, its schedule windows (and the next one to open), and its audit
log, as plain data that a rich table, a template or a JSON response can show as is.
Nothing here changes a stage (a missing stage row is created as manual, like every
other reader does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from rollout import store
from rollout.gates import GateReport
from rollout.promote import RolloutContext, gate_report
from rollout.schedule import WindowSpec
from rollout.stages import Stage
from rollout.tables import RolloutEventPublic, ScheduleWindowPublic, SiteStagePublic


@dataclass(frozen=True)
class WindowStatus:
    """A schedule window and when it is next open."""

    window: ScheduleWindowPublic
    open_now: bool
    next_open: tuple[datetime, datetime] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.window.model_dump(mode="json"),
            "open_now": self.open_now,
            "next_open": [m.isoformat() for m in self.next_open] if self.next_open else None,
        }


@dataclass(frozen=True)
class SiteStatus:
    """One site's rollout as shown by `rollout status` and the status page."""

    site_id: str
    state: SiteStagePublic
    report: GateReport
    windows: tuple[WindowStatus, ...]
    next_stage: Stage | None

    @property
    def stage(self) -> Stage:
        return Stage(self.state.stage)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for the API."""
        return {
            "site_id": self.site_id,
            "stage": self.stage.value,
            "since": self.state.since.isoformat(),
            "model_id": self.state.model_id,
            "consecutive_failures": self.state.consecutive_failures,
            "last_evaluated_at": self.state.last_evaluated_at.isoformat() if self.state.last_evaluated_at else None,
            "last_verdict": self.state.last_verdict,
            "next_stage": self.next_stage.value if self.next_stage else None,
            "gates": self.report.to_evidence(),
            "windows": [w.to_dict() for w in self.windows],
        }


def site_status(site_id: str, *, session: Session, ctx: RolloutContext) -> SiteStatus:
    """Stage, gates with numbers and windows of one site, evaluated now.

    Args:
        site_id: the site.
        session: an open session.
        ctx: config, clock, positivity, drift flags.

    Raises:
        RolloutUsageError: unknown site.
        StoreError: the database failed.
    """
    report = gate_report(site_id, session=session, ctx=ctx)
    state = store.get_state(site_id, session=session)
    assert state is not None  # gate_report created it when missing
    now = ctx.now()
    windows = []
    for window in store.list_windows(session=session, site_id=site_id, active_at=now):
        try:
            spec = WindowSpec(window.cron, timedelta(seconds=window.duration_s), window.until, window.timezone)
            upcoming = spec.next_open(now)
        except ValueError:
            upcoming = None
        windows.append(
            WindowStatus(
                window=ScheduleWindowPublic.model_validate(window),
                open_now=upcoming is not None and upcoming[0] <= now < upcoming[1],
                next_open=upcoming,
            )
        )
    return SiteStatus(
        site_id=site_id,
        state=SiteStagePublic.model_validate(state),
        report=report,
        windows=tuple(windows),
        next_stage=Stage(state.stage).next(),
    )


def all_statuses(*, session: Session, ctx: RolloutContext) -> list[SiteStatus]:
    """Every configured site's status (every known site when the context has no config)."""
    site_ids = sorted(ctx.sites) if ctx.sites is not None else store.known_site_ids(session=session)
    return [site_status(site_id, session=session, ctx=ctx) for site_id in site_ids]


def site_history(site_id: str, *, session: Session, ctx: RolloutContext, limit: int = 100) -> list[RolloutEventPublic]:
    """A site's audit log, newest first.

    Raises:
        RolloutUsageError: unknown site.
        ValueError: ``limit`` outside 1..1000.
    """
    ctx.check_site(site_id)
    return [RolloutEventPublic.model_validate(e) for e in store.list_events(site_id, session=session, limit=limit)]
