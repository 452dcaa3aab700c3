"""Promote, roll back, evaluate and schedule: every change to a site's rollout, audited.

Responsible for the rules of moving a site between stages:

* **Promotion** goes one step up and only when every gate passes, unless forced, and a
  forced promotion needs a reason. The gate report (with its numbers) is stored with the
  transition whether it passed or not.
* **Rollback** goes one step down and always needs a reason.
* **Evaluation** runs the gates; at limited or later a FAIL extends the site's run of
  failures, anything else ends it, and with automatic rollback on, K failures in a row
  drop the site one stage (audited as ``auto_rollback``, actor ``auto-rollback``).
* **Windows** for the limited stage are added and removed with an audit row each.

Each operation is one transaction: the stage change is a compare-and-set on the site's
row version, so two racing changes cannot both apply, and the audit row commits with it.
The clock is injected through :class:`RolloutContext`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlmodel import Session

from rollout import store
from rollout.config import RolloutConfig
from rollout.gates import DriftFlagProvider, GateReport, Positivity, Verdict, evaluate_gates
from rollout.policy import Clock, utcnow
from rollout.schedule import WindowSpec, parse_cron
from rollout.stages import Stage
from rollout.tables import EventAction, RolloutEvent, ScheduleWindow, SiteStage

log = logging.getLogger(__name__)

AUTO_ROLLBACK_ACTOR = "auto-rollback"
MAX_REASON_CHARS = 2000


class RolloutError(Exception):
    """A rollout operation that cannot be done now; the message is one line (exit 1)."""


class RolloutUsageError(RolloutError):
    """A rollout operation asked for wrongly (unknown site, missing reason); exit 2."""


class UnknownSite(RolloutUsageError):
    """The site is not in the config."""


class GatesNotPassed(RolloutError):
    """Promotion refused because not every gate passed.

    Attributes:
        report: the gate report, with the failing gates and their numbers.
    """

    def __init__(self, report: GateReport) -> None:
        self.report = report
        super().__init__(
            f"site {report.site_id!r} stays at {report.stage.value}: gates {report.verdict.value} "
            f"({', '.join(f'{r.name} {r.verdict.value}' for r in report.not_passed())}); "
            "wait for more data, or use --force with --reason"
        )


class StageConflict(RolloutError):
    """The site's stage changed while the operation was deciding; try again."""


@dataclass(frozen=True)
class RolloutContext:
    """What every rollout operation needs, built once by the caller.

    Attributes:
        config: the ``rollout:`` config section.
        positivity: alert labels and camera thresholds (tells positive audit items).
        clock: the current time, aware; inject it in tests.
        drift_flags: open drift flags per site; None until a drift detector is wired.
        sites: the configured site ids; None accepts any site id.
        model_id: the model configured now (``config.model``); used when a site has no
            review items to name the model from.
    """

    config: RolloutConfig = field(default_factory=RolloutConfig)
    positivity: Positivity = field(default_factory=Positivity)
    clock: Clock = utcnow
    drift_flags: DriftFlagProvider | None = None
    sites: frozenset[str] | None = None
    model_id: str | None = None

    @classmethod
    def from_config(
        cls, config: Any, *, clock: Clock = utcnow, drift_flags: DriftFlagProvider | None = None
    ) -> "RolloutContext":
        """From a ``monitor.config.MonitorConfig``; its ``rollout`` section when it has one.

        Args:
            config: the validated monitor config.
            clock: current time.
            drift_flags: open drift flags per site.
        """
        rollout_config = getattr(config, "rollout", None) or RolloutConfig()
        return cls(
            config=rollout_config,
            positivity=Positivity.from_config(config),
            clock=clock,
            drift_flags=drift_flags,
            sites=frozenset(site.id for site in config.sites),
            model_id=str(config.model),
        )

    def now(self) -> datetime:
        moment = self.clock()
        if moment.utcoffset() is None:
            raise ValueError("the rollout clock must return timezone-aware datetimes")
        return moment

    def check_site(self, site_id: str) -> None:
        """Raises RolloutUsageError for a site that is not configured."""
        if self.sites is not None and site_id not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none"
            raise UnknownSite(f"site {site_id!r} is not in the config (sites: {known}); check the id")


@dataclass(frozen=True)
class Transition:
    """A stage change that was made."""

    site_id: str
    from_stage: Stage
    to_stage: Stage
    at: datetime
    actor: str
    forced: bool
    event_id: int
    report: GateReport | None
    reason: str | None


def _clean_reason(reason: str | None, *, required: bool, what: str) -> str | None:
    text = " ".join((reason or "").split())
    if required and not text:
        raise RolloutUsageError(f"{what} needs a reason; give --reason TEXT")
    if len(text) > MAX_REASON_CHARS:
        raise RolloutUsageError(f"the reason is longer than {MAX_REASON_CHARS} characters; shorten it")
    return text or None


def _clean_actor(actor: str) -> str:
    actor = " ".join(actor.split())
    if not actor:
        raise RolloutUsageError("who is making the change must be named (actor)")
    return actor[:200]


def _model_for(site_id: str, ctx: RolloutContext, session: Session, model_id: str | None) -> str | None:
    return model_id or store.latest_model_id(site_id, session=session) or ctx.model_id


def _transition(
    state: SiteStage,
    *,
    to_stage: Stage,
    action: EventAction,
    actor: str,
    reason: str | None,
    forced: bool,
    report: GateReport | None,
    model_id: str | None,
    now: datetime,
    session: Session,
) -> Transition:
    from_stage = Stage(state.stage)
    if not store.set_stage(
        state.site_id, expected_version=state.version, stage=to_stage, since=now, model_id=model_id, session=session
    ):
        session.rollback()
        raise StageConflict(f"site {state.site_id!r} changed while deciding; look at its status and try again")
    event = store.append_event(
        RolloutEvent(
            site_id=state.site_id, at=now, actor=actor, action=action.value, from_stage=from_stage.value,
            to_stage=to_stage.value, forced=forced, model_id=model_id,
            evidence=report.to_evidence() if report is not None else {}, reason=reason,
        ),
        session=session,
    )
    session.commit()
    log.info("site %s: %s -> %s by %s (%s)", state.site_id, from_stage.value, to_stage.value, actor, action.value)
    return Transition(
        site_id=state.site_id, from_stage=from_stage, to_stage=to_stage, at=now, actor=actor, forced=forced,
        event_id=int(event.id or 0), report=report, reason=reason,
    )


def gate_report(site_id: str, *, session: Session, ctx: RolloutContext) -> GateReport:
    """Evaluate a site's gates now without changing anything (status pages).

    Raises:
        RolloutUsageError: unknown site.
        StoreError: the database failed.
    """
    ctx.check_site(site_id)
    return evaluate_gates(
        site_id, session=session, gates=ctx.config.gates, positivity=ctx.positivity, now=ctx.now(),
        drift_flags=ctx.drift_flags,
    )


def promote(
    site_id: str,
    *,
    session: Session,
    ctx: RolloutContext,
    actor: str,
    force: bool = False,
    reason: str | None = None,
    model_id: str | None = None,
) -> Transition:
    """Move a site one stage up when its gates pass (or when forced, with a reason); commits.

    Args:
        site_id: the site.
        session: an open session; committed on success.
        ctx: config, clock, positivity, drift flags.
        actor: who asks (a user name).
        force: promote although gates did not pass; needs ``reason``.
        reason: why; stored in the audit log.
        model_id: the model in charge; by default the one that made the site's latest
            review item, else the configured one.

    Returns:
        The transition made, with the gate report stored as evidence.

    Raises:
        RolloutUsageError: unknown site, or force without a reason.
        RolloutError: the site is already at full.
        GatesNotPassed: gates did not all pass and force was not given.
        StageConflict: the site changed meanwhile.
        StoreError: the database failed.
    """
    ctx.check_site(site_id)
    actor = _clean_actor(actor)
    reason = _clean_reason(reason, required=force, what="a forced promotion")
    now = ctx.now()
    state = store.ensure_states([site_id], session=session, now=now)[site_id]
    current = Stage(state.stage)
    target = current.next()
    if target is None:
        raise RolloutError(f"site {site_id!r} is already at {current.value}, the last stage; nothing to promote to")
    report = evaluate_gates(
        site_id, session=session, gates=ctx.config.gates, positivity=ctx.positivity, now=now,
        drift_flags=ctx.drift_flags,
    )
    if not report.passed and not force:
        session.commit()  # a stage row created above is worth keeping
        raise GatesNotPassed(report)
    return _transition(
        state, to_stage=target, action=EventAction.PROMOTE, actor=actor, reason=reason,
        forced=not report.passed, report=report, model_id=_model_for(site_id, ctx, session, model_id),
        now=now, session=session,
    )


def rollback(
    site_id: str,
    *,
    session: Session,
    ctx: RolloutContext,
    actor: str,
    reason: str,
    model_id: str | None = None,
) -> Transition:
    """Move a site one stage down; commits. The current gate report is kept as evidence.

    Args:
        site_id: the site.
        session: an open session; committed on success.
        ctx: config, clock, positivity, drift flags.
        actor: who asks.
        reason: why (required).
        model_id: the model in charge; by default as for :func:`promote`.

    Returns:
        The transition made.

    Raises:
        RolloutUsageError: unknown site or no reason.
        RolloutError: the site is already at manual.
        StageConflict: the site changed meanwhile.
        StoreError: the database failed.
    """
    ctx.check_site(site_id)
    actor = _clean_actor(actor)
    reason = _clean_reason(reason, required=True, what="a rollback")
    now = ctx.now()
    state = store.ensure_states([site_id], session=session, now=now)[site_id]
    target = Stage(state.stage).previous()
    if target is None:
        raise RolloutError(f"site {site_id!r} is already at manual, the first stage; nothing to roll back to")
    report = evaluate_gates(
        site_id, session=session, gates=ctx.config.gates, positivity=ctx.positivity, now=now,
        drift_flags=ctx.drift_flags,
    )
    return _transition(
        state, to_stage=target, action=EventAction.ROLLBACK, actor=actor, reason=reason, forced=False,
        report=report, model_id=_model_for(site_id, ctx, session, model_id), now=now, session=session,
    )


@dataclass(frozen=True)
class Evaluation:
    """One periodic evaluation of a site.

    Attributes:
        report: the gate report.
        consecutive_failures: the site's run of failing evaluations after this one.
        rolled_back: the automatic rollback it caused, if any.
    """

    report: GateReport
    consecutive_failures: int
    rolled_back: Transition | None = None


def evaluate(site_id: str, *, session: Session, ctx: RolloutContext) -> Evaluation:
    """Evaluate a site's gates, count failures, and roll back automatically when due; commits.

    At limited or later a FAIL verdict adds one to the site's run of failures and any
    other verdict ends the run. With ``auto_rollback.enabled`` and the run reaching
    ``auto_rollback.consecutive_failures``, the site drops one stage, audited with the
    report as evidence.

    Args:
        site_id: the site.
        session: an open session; committed.
        ctx: config, clock, positivity, drift flags.

    Returns:
        The evaluation.

    Raises:
        RolloutUsageError: unknown site.
        StoreError: the database failed.
    """
    ctx.check_site(site_id)
    now = ctx.now()
    state = store.ensure_states([site_id], session=session, now=now)[site_id]
    stage = Stage(state.stage)
    report = evaluate_gates(
        site_id, session=session, gates=ctx.config.gates, positivity=ctx.positivity, now=now,
        drift_flags=ctx.drift_flags,
    )
    failing = report.verdict is Verdict.FAIL and stage.rank >= Stage.LIMITED.rank
    failures = state.consecutive_failures + 1 if failing else 0
    auto = ctx.config.auto_rollback
    if failing and auto.enabled and failures >= auto.consecutive_failures:
        target = stage.previous()
        assert target is not None  # limited or later always has a previous stage
        failed = ", ".join(f"{r.name}: {r.detail}" for r in report.results if r.verdict is Verdict.FAIL)
        reason = f"gates failed on {failures} consecutive evaluations ({failed})"
        transition = _transition(
            state, to_stage=target, action=EventAction.AUTO_ROLLBACK, actor=AUTO_ROLLBACK_ACTOR,
            reason=reason[:MAX_REASON_CHARS], forced=False, report=report,
            model_id=_model_for(site_id, ctx, session, None), now=now, session=session,
        )
        log.warning("site %s rolled back automatically to %s: %s", site_id, target.value, reason)
        return Evaluation(report, 0, transition)
    if not store.record_evaluation(
        site_id, expected_version=state.version, verdict=report.verdict.value, failures=failures, at=now,
        session=session,
    ):
        # The stage changed while evaluating; this evaluation no longer applies to it.
        session.rollback()
        return Evaluation(report, 0, None)
    session.commit()
    return Evaluation(report, failures, None)


def evaluate_all(site_ids: Iterable[str], *, engine: Any, ctx: RolloutContext) -> dict[str, Evaluation | Exception]:
    """Evaluate several sites, each in its own transaction; one failing site stops no other.

    Meant for the periodic job (every ``rollout.evaluation_interval``).

    Args:
        site_ids: the sites (the configured ones).
        engine: the store's engine.
        ctx: the rollout context.

    Returns:
        site id -> its evaluation, or the exception that stopped it (also logged).
    """
    from monitor.store.db import session_scope

    results: dict[str, Evaluation | Exception] = {}
    for site_id in site_ids:
        try:
            with session_scope(engine) as session:
                results[site_id] = evaluate(site_id, session=session, ctx=ctx)
        except Exception as exc:  # one site's trouble must not stop the others' evaluation
            log.error("could not evaluate rollout gates of site %s: %s", site_id, exc)
            log.debug("evaluation failure", exc_info=True)
            results[site_id] = exc
    return results


class Leadership(Protocol):
    """Whether this process is the one that evaluates (a ``monitor.job_lease.JobLease``)."""

    def holds(self) -> bool: ...


class EvaluationJob:
    """A daemon thread that runs :func:`evaluate_all` every ``interval`` seconds.

    For processes that have no scheduler of their own; `monitor run` may instead add
    :func:`evaluate_all` as a job to its APScheduler scheduler.

    With many workers on one database only one may evaluate: each evaluation counts a
    failure towards automatic rollback, so N evaluating workers would roll a site back
    after a Nth of the configured consecutive failures. ``leader`` is that election;
    ticks while another worker leads do nothing.

    Args:
        engine: the store's engine.
        ctx: the rollout context.
        site_ids: the sites to evaluate (the configured ones by default).
        interval: seconds between evaluations (``rollout.evaluation_interval``).
        leader: evaluate only while this holds; None (one process) always evaluates.
    """

    def __init__(
        self, engine: Any, ctx: RolloutContext, *, site_ids: Iterable[str] | None = None, interval: float | None = None,
        leader: Leadership | None = None,
    ) -> None:
        self._engine = engine
        self._ctx = ctx
        self._site_ids = sorted(site_ids if site_ids is not None else ctx.sites or ())
        self._interval = interval if interval is not None else ctx.config.evaluation_interval
        if self._interval <= 0:
            raise ValueError("the evaluation interval must be more than 0 seconds")
        self._leader = leader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_results: dict[str, Evaluation | Exception] = {}

    def run_once(self) -> dict[str, Evaluation | Exception]:
        """Evaluate every site now (also what the thread does on each tick)."""
        self.last_results = evaluate_all(self._site_ids, engine=self._engine, ctx=self._ctx)
        self.runs += 1
        return self.last_results

    def start(self) -> None:
        """Evaluate every ``interval`` seconds in the background, the first time after one interval."""
        self._thread = threading.Thread(target=self._run, name="rollout-evaluate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._leader is not None and not self._leader.holds():
                continue  # another worker evaluates
            self.run_once()  # evaluate_all logs and keeps going past any one site's failure

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for a running evaluation to finish."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


# ---------------------------------------------------------------- windows


def add_window(
    site_id: str,
    *,
    session: Session,
    ctx: RolloutContext,
    actor: str,
    cron: str,
    until: datetime,
    duration: timedelta | None = None,
    tz: str | None = None,
    reason: str | None = None,
) -> ScheduleWindow:
    """Add a limited-stage schedule window to a site, audited; commits.

    Args:
        site_id: the site.
        session: an open session; committed.
        ctx: config (default duration and time zone) and clock.
        actor: who adds it.
        cron: five-field cron expression of window starts.
        until: aware; no window is open at or after it.
        duration: how long each window stays open; ``rollout.window_duration`` by default.
        tz: IANA time zone of the cron expression; ``rollout.timezone`` by default.
        reason: optional note for the audit log.

    Returns:
        The window row.

    Raises:
        RolloutUsageError: unknown site, bad cron, duration or time zone, or ``until``
            already past.
        StoreError: the database failed.
    """
    ctx.check_site(site_id)
    actor = _clean_actor(actor)
    now = ctx.now()
    tz = tz or ctx.config.timezone
    duration = duration if duration is not None else timedelta(seconds=ctx.config.window_duration)
    if until.utcoffset() is None:
        raise RolloutUsageError("the window's end must be timezone-aware")
    if until <= now:
        raise RolloutUsageError(f"the window's end {until.isoformat()} is already past; give a later --until")
    try:
        parse_cron(cron, tz)
        spec = WindowSpec(cron=cron, duration=duration, until=until, tz=tz)
    except ValueError as exc:
        raise RolloutUsageError(str(exc)) from None
    upcoming = spec.next_open(now)
    state = store.ensure_states([site_id], session=session, now=now)[site_id]
    window = store.add_window(
        ScheduleWindow(
            site_id=site_id, cron=cron.strip(), timezone=tz, duration_s=duration.total_seconds(), until=until,
            created_at=now, created_by=actor,
        ),
        session=session,
    )
    store.append_event(
        RolloutEvent(
            site_id=site_id, at=now, actor=actor, action=EventAction.WINDOW_ADDED.value, from_stage=state.stage,
            to_stage=state.stage, model_id=state.model_id, reason=_clean_reason(reason, required=False, what=""),
            evidence={
                "window_id": window.id, "cron": window.cron, "timezone": tz, "duration_s": window.duration_s,
                "until": until.isoformat(), "next_open": upcoming[0].isoformat() if upcoming else None,
            },
        ),
        session=session,
    )
    session.commit()
    return window


def remove_window(
    window_id: int, *, session: Session, ctx: RolloutContext, actor: str, site_id: str | None = None
) -> ScheduleWindow:
    """Mark a schedule window removed (it stays for the record), audited; commits.

    Raises:
        RolloutUsageError: no such window (of ``site_id``, when given), or already removed.
        StoreError: the database failed.
    """
    actor = _clean_actor(actor)
    now = ctx.now()
    window = store.get_window(window_id, session=session)
    if window is None or (site_id is not None and window.site_id != site_id) or window.removed_at is not None:
        where = f" of site {site_id!r}" if site_id else ""
        raise RolloutUsageError(f"no window {window_id}{where}; `rollout status SITE` lists the windows")
    window.removed_at = now
    window.removed_by = actor
    session.add(window)
    state = store.ensure_states([window.site_id], session=session, now=now)[window.site_id]
    store.append_event(
        RolloutEvent(
            site_id=window.site_id, at=now, actor=actor, action=EventAction.WINDOW_REMOVED.value,
            from_stage=state.stage, to_stage=state.stage, model_id=state.model_id,
            evidence={"window_id": window.id, "cron": window.cron, "until": window.until.isoformat()},
        ),
        session=session,
    )
    session.commit()
    return window
