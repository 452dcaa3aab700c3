"""Reviewing the queue: paging, decisions with optimistic concurrency, undo, history, stats.

Responsible for every change a reviewer makes to a review item and for the reads the
review UI and API need. The rules it keeps:

* **Nothing is overwritten silently.** A decision names the item version it was made
  on (or, without one, may only decide a pending item). The write is one
  ``UPDATE ... WHERE id = :id AND version = :seen`` (compare-and-set); if another
  reviewer got there first no row matches and :class:`DecisionConflict` carries the
  item as it is now. On SQLite the UPDATE is the first statement of its transaction,
  so a second writer waits for the busy timeout and then sees the new version, rather
  than failing on a stale read snapshot; on PostgreSQL the row lock does the same.
* **History is append-only.** Every decision and every undo inserts one
  :class:`ReviewDecision` row (who, when, what, the previous state, a note) in the same
  transaction as the change; rows are never updated.
* **Undo is a stack.** Undo reverts the item's latest decision that is still in effect
  and records that as a decision of its own; undoing again reverts the one before.

Functions take the session as a keyword (``*, session``); writers commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from monitor.store.tables import (
    DecisionAction,
    ReviewDecision,
    ReviewItem,
    ReviewStatus,
    User,
    utcnow,
)
from monitor.types import QueueReason

MAX_PAGE = 500
_STATUS_FOR = {
    DecisionAction.APPROVE: ReviewStatus.APPROVED,
    DecisionAction.REJECT: ReviewStatus.REJECTED,
    DecisionAction.RELABEL: ReviewStatus.RELABELLED,
}
MAX_NOTE_CHARS = 2000


class ItemNotFound(LookupError):
    """No review item with that id."""


class DecisionConflict(Exception):
    """The item changed since the reviewer loaded it (or there is nothing to undo).

    Attributes:
        current: the item as it is now, for the reviewer to look at again.
    """

    def __init__(self, message: str, current: ReviewItem) -> None:
        super().__init__(message)
        self.current = current


@dataclass
class Page:
    """One page of the queue, newest first, with the keys of its neighbours.

    Attributes:
        items: up to ``limit`` items, highest id first.
        older: pass as ``before_id`` for the next (older) page; None on the last page.
        newer: pass as ``after_id`` for the previous (newer) page; None on the first.
    """

    items: list[ReviewItem]
    older: int | None = None
    newer: int | None = None


@dataclass(frozen=True)
class Filters:
    """What the queue can be narrowed to; every field is optional."""

    status: str | None = None
    site_id: str | None = None
    camera_id: str | None = None
    label: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None:
            _enum_value(ReviewStatus, self.status, "status")
        if self.reason is not None:
            _enum_value(QueueReason, self.reason, "reason")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")

    def apply(self, statement: Any) -> Any:
        """Add this filter's WHERE clauses to a select on review items."""
        if self.status is not None:
            statement = statement.where(col(ReviewItem.status) == _enum_value(ReviewStatus, self.status, "status"))
        if self.site_id is not None:
            statement = statement.where(col(ReviewItem.site_id) == self.site_id)
        if self.camera_id is not None:
            statement = statement.where(col(ReviewItem.camera_id) == self.camera_id)
        if self.label is not None:
            statement = statement.where(col(ReviewItem.label) == self.label)
        if self.reason is not None:
            statement = statement.where(col(ReviewItem.reason) == _enum_value(QueueReason, self.reason, "reason"))
        if self.since is not None:
            statement = statement.where(col(ReviewItem.captured_at) >= self.since)
        if self.until is not None:
            statement = statement.where(col(ReviewItem.captured_at) < self.until)
        return statement


def _enum_value(enum_cls: Any, value: Any, what: str) -> str:
    try:
        return str(enum_cls(value).value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_cls)
        raise ValueError(f"unknown {what} {value!r}; use one of {allowed}") from None


# ---------------------------------------------------------------- reads


def page_items(
    *,
    session: Session,
    filters: Filters = Filters(),
    limit: int = 50,
    before_id: int | None = None,
    after_id: int | None = None,
) -> Page:
    """One page of review items, newest first, by keyset (no OFFSET: deep pages are as
    cheap as the first).

    Args:
        session: an open session.
        filters: what to narrow the queue to.
        limit: page size, 1 to 500.
        before_id: the page of items just older than this id (the ``older`` key).
        after_id: the page of items just newer than this id (the ``newer`` key).

    Returns:
        The page and its neighbours' keys.

    Raises:
        ValueError: a limit out of range, or both ``before_id`` and ``after_id``.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if before_id is not None and after_id is not None:
        raise ValueError("give before_id or after_id, not both")
    statement = filters.apply(select(ReviewItem))
    if after_id is not None:
        # Walk up from the key, then show the page newest first like every other page.
        statement = statement.where(col(ReviewItem.id) > after_id).order_by(col(ReviewItem.id).asc())
        rows = list(session.exec(statement.limit(limit + 1)).all())
        more_newer = len(rows) > limit
        items = list(reversed(rows[:limit]))
        return Page(items, older=items[-1].id if items else after_id + 1, newer=items[0].id if more_newer else None)
    if before_id is not None:
        statement = statement.where(col(ReviewItem.id) < before_id)
    rows = list(session.exec(statement.order_by(col(ReviewItem.id).desc()).limit(limit + 1)).all())
    items = rows[:limit]
    older = items[-1].id if len(rows) > limit else None
    newer = (items[0].id if items else before_id - 1) if before_id is not None else None
    return Page(items, older=older, newer=newer)


def count_capped(*, session: Session, filters: Filters = Filters(), cap: int = 10_000) -> tuple[int, bool]:
    """How many items match, counting at most ``cap`` (a full count of a million pending
    rows costs tens of milliseconds on every page view; "10000+" is as useful).

    Returns:
        (the count up to ``cap``, whether there are more).
    """
    inner = filters.apply(select(col(ReviewItem.id))).limit(cap + 1).subquery()
    counted = int(session.exec(select(func.count()).select_from(inner)).one())
    return min(counted, cap), counted > cap


def get_item_or_raise(item_id: int, *, session: Session) -> ReviewItem:
    """One review item.

    Raises:
        ItemNotFound: no such item.
    """
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise ItemNotFound(f"no review item {item_id}")
    return item


def neighbours(item_id: int, *, session: Session) -> tuple[int | None, int | None]:
    """The ids of the next newer and next older item (None at either end)."""
    newer = session.exec(select(func.min(ReviewItem.id)).where(col(ReviewItem.id) > item_id)).one()
    older = session.exec(select(func.max(ReviewItem.id)).where(col(ReviewItem.id) < item_id)).one()
    return newer, older


def history(item_id: int, *, session: Session) -> list[ReviewDecision]:
    """Every decision and undo on an item, oldest first."""
    statement = select(ReviewDecision).where(col(ReviewDecision.item_id) == item_id).order_by(col(ReviewDecision.id))
    return list(session.exec(statement).all())


# ---------------------------------------------------------------- writes


def decide(
    item_id: int,
    *,
    session: Session,
    reviewer: User,
    action: DecisionAction | str,
    label: str | None = None,
    note: str | None = None,
    expected_version: int | None = None,
    allowed_labels: Sequence[str] | None = None,
    now: datetime | None = None,
) -> tuple[ReviewItem, ReviewDecision]:
    """Approve, reject or relabel an item, record it in the history, then commit.

    Args:
        item_id: the item.
        session: an open session.
        reviewer: the signed-in user deciding.
        action: approve, reject or relabel.
        label: for relabel, the correct label; must be None otherwise.
        note: optional free text kept in the history.
        expected_version: the version the reviewer saw. Without it only a pending item
            can be decided, so a script never overwrites a person's decision.
        allowed_labels: when given, a relabel must use one of these.
        now: the decision time (for tests).

    Returns:
        (the item after the decision, the history row).

    Raises:
        ValueError: an unknown action, a missing or unexpected label, a label not
            allowed, or a note that is too long.
        ItemNotFound: no such item.
        DecisionConflict: the item is not at ``expected_version`` (or, without one, is
            no longer pending); nothing was changed.
    """
    action = DecisionAction(_enum_value(DecisionAction, action, "action"))
    if action is DecisionAction.UNDO:
        raise ValueError("use undo() to undo a decision")
    if action is DecisionAction.RELABEL:
        if not label:
            raise ValueError("relabel needs the correct label")
        if allowed_labels is not None and label not in allowed_labels:
            raise ValueError(f"unknown label {label!r}; use one of {', '.join(allowed_labels)}")
    elif label is not None:
        raise ValueError(f"{action.value} takes no label; use relabel to correct the label")
    note = _clean_note(note)
    now = now or utcnow()
    seen = get_item_or_raise(item_id, session=session)
    if expected_version is not None and seen.version != expected_version:
        raise DecisionConflict(f"item {item_id} changed since version {expected_version}", seen)
    if expected_version is None and seen.status != ReviewStatus.PENDING.value:
        raise DecisionConflict(f"item {item_id} was already decided ({seen.status}); pass its version to change it", seen)
    new_status = _STATUS_FOR[action].value
    return _compare_and_set(
        seen, session=session, reviewer=reviewer, action=action, status=new_status,
        review_label=label if action is DecisionAction.RELABEL else None, reviewed_at=now, note=note,
        undoes_id=None, now=now,
    )


def undo(
    item_id: int,
    *,
    session: Session,
    reviewer: User,
    expected_version: int | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> tuple[ReviewItem, ReviewDecision]:
    """Revert the item's latest decision still in effect, record the undo, then commit.

    Args:
        item_id: the item.
        session: an open session.
        reviewer: the signed-in user undoing (anyone may undo; it is recorded).
        expected_version: the version the reviewer saw; None undoes whatever is latest.
        note: optional free text kept in the history.
        now: the time (for tests).

    Returns:
        (the item after the undo, the history row of the undo).

    Raises:
        ItemNotFound: no such item.
        DecisionConflict: the item is not at ``expected_version``, or it has no
            decision left to undo; nothing was changed.
    """
    note = _clean_note(note)
    now = now or utcnow()
    seen = get_item_or_raise(item_id, session=session)
    if expected_version is not None and seen.version != expected_version:
        raise DecisionConflict(f"item {item_id} changed since version {expected_version}", seen)
    target, earlier = _latest_in_effect(history(item_id, session=session))
    if target is None:
        raise DecisionConflict(f"item {item_id} has no decision to undo", seen)
    restored_status = target.previous_status
    reviewed_at = None if restored_status == ReviewStatus.PENDING.value else (
        earlier.decided_at if earlier is not None else seen.reviewed_at
    )
    return _compare_and_set(
        seen, session=session, reviewer=reviewer, action=DecisionAction.UNDO, status=restored_status,
        review_label=target.previous_label, reviewed_at=reviewed_at, note=note, undoes_id=target.id, now=now,
    )


@dataclass
class BulkResult:
    """What happened to each item of a bulk decision."""

    decided: list[ReviewItem] = field(default_factory=list)
    conflicts: list[ReviewItem] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def approve_many(
    items: Iterable[tuple[int, int | None]],
    *,
    session: Session,
    reviewer: User,
    note: str | None = None,
    now: datetime | None = None,
) -> BulkResult:
    """Approve several items, each in its own transaction with its own version check.

    One conflict does not stop the others: the caller learns which items were decided,
    which changed under the reviewer, and which no longer exist.

    Args:
        items: (item id, version seen or None) pairs.
        session: an open session.
        reviewer: the signed-in user.
        note: optional note for every decision.
        now: the time (for tests).
    """
    result = BulkResult()
    for item_id, version in items:
        try:
            item, _ = decide(item_id, session=session, reviewer=reviewer, action=DecisionAction.APPROVE,
                             note=note, expected_version=version, now=now)
            result.decided.append(item)
        except DecisionConflict as conflict:
            result.conflicts.append(conflict.current)
        except ItemNotFound:
            result.missing.append(item_id)
    return result


def _compare_and_set(
    seen: ReviewItem,
    *,
    session: Session,
    reviewer: User,
    action: DecisionAction,
    status: str,
    review_label: str | None,
    reviewed_at: datetime | None,
    note: str | None,
    undoes_id: int | None,
    now: datetime,
) -> tuple[ReviewItem, ReviewDecision]:
    item_id = int(seen.id or 0)
    previous_status, previous_label, version = seen.status, seen.review_label, seen.version
    # The reads above ran outside a transaction; this UPDATE is the transaction's first
    # statement, which is what lets SQLite wait for a concurrent writer (see the module
    # docstring) instead of failing with "database is locked".
    statement = (
        update(ReviewItem)
        .where(col(ReviewItem.id) == item_id, col(ReviewItem.version) == version)
        .values(status=status, review_label=review_label, reviewed_at=reviewed_at, version=version + 1)
    )
    changed = session.execute(statement).rowcount  # type: ignore[attr-defined]
    if changed != 1:
        session.rollback()
        current = get_item_or_raise(item_id, session=session)
        session.refresh(current)
        raise DecisionConflict(f"item {item_id} was changed by someone else at the same moment", current)
    decision = ReviewDecision(
        item_id=item_id, user_id=int(reviewer.id or 0), reviewer=reviewer.name, action=action.value,
        previous_status=previous_status, previous_label=previous_label, status=status,
        review_label=review_label, note=note, undoes_id=undoes_id, version=version + 1, decided_at=now,
    )
    session.add(decision)
    session.commit()
    item = get_item_or_raise(item_id, session=session)
    session.refresh(item)
    return item, decision


def _latest_in_effect(decisions: Sequence[ReviewDecision]) -> tuple[ReviewDecision | None, ReviewDecision | None]:
    """The newest decision not yet undone, and the one in effect before it."""
    undone: set[int] = set()
    found: list[ReviewDecision] = []
    for decision in reversed(decisions):
        if decision.action == DecisionAction.UNDO.value:
            if decision.undoes_id is not None:
                undone.add(decision.undoes_id)
            continue
        if decision.id in undone:
            continue
        found.append(decision)
        if len(found) == 2:
            break
    return (found[0] if found else None), (found[1] if len(found) > 1 else None)


def _clean_note(note: str | None) -> str | None:
    if note is None:
        return None
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"a note may have at most {MAX_NOTE_CHARS} characters")
    return note or None


# ---------------------------------------------------------------- stats


@dataclass
class PrecisionRow:
    """Reviewed positives of one site, camera and predicted label.

    ``precision`` is approved / reviewed: the share of the model's positives a person
    confirmed. A relabel counts against it even between two bear labels, because the
    label the model gave was wrong.
    """

    site_id: str
    camera_id: str
    label: str
    reviewed: int = 0
    approved: int = 0
    rejected: int = 0
    relabelled: int = 0

    @property
    def precision(self) -> float | None:
        return self.approved / self.reviewed if self.reviewed else None


@dataclass
class ReviewStats:
    """What the stats page and API report."""

    pending: int
    by_status: dict[str, int]
    decisions_by_reviewer: dict[str, dict[str, int]]
    precision: list[PrecisionRow]


def review_stats(*, session: Session) -> ReviewStats:
    """Pending count, decisions per reviewer (from the history) and the reviewed
    precision of positives per site, camera and predicted label."""
    by_status = {status.value: 0 for status in ReviewStatus}
    for status, count in session.exec(select(ReviewItem.status, func.count()).group_by(col(ReviewItem.status))).all():
        by_status[str(status)] = int(count)
    decisions: dict[str, dict[str, int]] = {}
    statement = select(ReviewDecision.reviewer, ReviewDecision.action, func.count()).group_by(
        col(ReviewDecision.reviewer), col(ReviewDecision.action)
    )
    for reviewer, action, count in session.exec(statement).all():
        decisions.setdefault(str(reviewer), {a.value: 0 for a in DecisionAction})[str(action)] = int(count)
    rows: dict[tuple[str, str, str], PrecisionRow] = {}
    statement = (
        select(ReviewItem.site_id, ReviewItem.camera_id, ReviewItem.label, ReviewItem.status, func.count())
        .where(col(ReviewItem.reason) == QueueReason.POSITIVE.value)
        .where(col(ReviewItem.status) != ReviewStatus.PENDING.value)
        .group_by(col(ReviewItem.site_id), col(ReviewItem.camera_id), col(ReviewItem.label), col(ReviewItem.status))
    )
    for site_id, camera_id, label, status, count in session.exec(statement).all():
        row = rows.setdefault((site_id, camera_id, label), PrecisionRow(site_id, camera_id, label))
        row.reviewed += int(count)
        setattr(row, str(status), getattr(row, str(status)) + int(count))
    return ReviewStats(
        pending=by_status[ReviewStatus.PENDING.value],
        by_status=by_status,
        decisions_by_reviewer=dict(sorted(decisions.items())),
        precision=[rows[key] for key in sorted(rows)],
    )
