"""What happens to a prediction at each rollout stage: review queue, alert, or both.

The pipeline receives a policy object and calls :meth:`RoutingPolicy.route` for every
prediction; it never looks inside. Two policies:

* :class:`ManualPolicy`: the manual stage everywhere (no database needed).
* :class:`StagePolicy`: each site's own stage, read from an in-memory
  :class:`StageSnapshot` that :class:`PolicyRefresher` reloads from the database every
  few seconds, so a stage change reaches a running process within ``refresh_interval``
  (at most 5 s) plus one batch, without a restart. ``route`` never touches the database.

What each stage does (defaults; see :mod:`rollout.config`):

* manual     positives reviewed; 5% of negatives reviewed; no alerts.
* limited    inside the site's schedule windows positives alert and are all reviewed;
             outside them, as manual.
* expansion  positives alert; 25% of positives and 5% of negatives reviewed, and every
             out-of-domain or low-confidence frame.
* full       positives alert; a 5% audit sample (positive or not) and every
             out-of-domain frame reviewed.

The random sample is drawn before the out-of-domain check, so the items queued as
``positive`` / ``negative_sample`` / ``audit`` stay a uniform sample of all frames
(doubtful ones included) and the gates can estimate precision and misses from them
without bias. A low-confidence frame is queued with the ``out_of_domain`` reason: low
confidence is one of the out-of-domain signals.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from monitor.types import Prediction, QueueReason, Route
from rollout.config import RolloutConfig, RoutingConfig
from rollout.schedule import Interval, WindowSpec, inside, open_intervals
from rollout.stages import Stage

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_REFRESH_INTERVAL = 5.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RoutingPolicy(Protocol):
    """Decides, per prediction, whether it is reviewed and whether it alerts."""

    def route(
        self, *, site_id: str, camera_id: str, prediction: Prediction, positive: bool, out_of_domain: bool = False
    ) -> Route:
        """Return what to do with one prediction.

        Args:
            site_id: the camera's site; stages are per site.
            camera_id: the camera that took the still.
            prediction: the classifier's output.
            positive: the prediction is an alert label at or above the camera's threshold.
            out_of_domain: the frame's out-of-domain signals fired (see monitor.ood).
        """
        ...


class ManualPolicy:
    """Manual stage: every positive is reviewed, negatives are sampled, nothing alerts.

    Args:
        negative_sample_rate: share of negatives sent to review, in [0, 1].
        rng: random source; pass a seeded one in tests for repeatable sampling.
    """

    def __init__(self, negative_sample_rate: float, rng: random.Random | None = None) -> None:
        if not 0.0 <= negative_sample_rate <= 1.0:
            raise ValueError(f"negative_sample_rate must be in [0, 1], got {negative_sample_rate}")
        self.negative_sample_rate = negative_sample_rate
        self._rng = rng or random.Random()

    def route(
        self, *, site_id: str, camera_id: str, prediction: Prediction, positive: bool, out_of_domain: bool = False
    ) -> Route:
        if positive:
            return Route(positive=True, review_reason=QueueReason.POSITIVE, alert=False)
        if self._rng.random() < self.negative_sample_rate:
            return Route(positive=False, review_reason=QueueReason.NEGATIVE_SAMPLE, alert=False)
        return Route(positive=False)


@dataclass(frozen=True)
class StageSnapshot:
    """Every site's stage and open windows as read at one moment; never mutated.

    Attributes:
        stages: site id -> stage; a site not listed is manual.
        windows: site id -> its window schedules (for moments past ``valid_until``).
        open_windows: site id -> merged ``[start, end)`` intervals precomputed up to
            ``valid_until``, so routing only compares times.
        taken_at: when it was read.
        valid_until: how far ``open_windows`` reaches.
    """

    stages: Mapping[str, Stage] = field(default_factory=dict)
    windows: Mapping[str, tuple[WindowSpec, ...]] = field(default_factory=dict)
    open_windows: Mapping[str, tuple[Interval, ...]] = field(default_factory=dict)
    taken_at: datetime | None = None
    valid_until: datetime | None = None

    def stage_of(self, site_id: str) -> Stage:
        return self.stages.get(site_id, Stage.MANUAL)

    def in_window(self, site_id: str, moment: datetime) -> bool:
        """Whether one of the site's schedule windows is open at ``moment``."""
        specs = self.windows.get(site_id)
        if not specs:
            return False
        if self.valid_until is not None and moment < self.valid_until and (
            self.taken_at is None or moment >= self.taken_at
        ):
            return inside(self.open_windows.get(site_id, ()), moment)
        # Outside the precomputed stretch (the refresher stalled): evaluate cron directly.
        return any(spec.is_open(moment) for spec in specs)


def load_snapshot(*, session: Session, now: datetime, horizon: timedelta = timedelta(minutes=2)) -> StageSnapshot:
    """Read every site's stage and live windows into a snapshot.

    Args:
        session: an open session (read only).
        now: aware current time.
        horizon: how far ahead window intervals are precomputed; refreshes come much
            sooner, and past it windows are evaluated from cron directly.

    Returns:
        The snapshot.

    Raises:
        StoreError: the database failed.
    """
    from rollout import store  # late: keeps this module importable without the tables

    stages = {state.site_id: Stage(state.stage) for state in store.list_states(session=session)}
    specs: dict[str, list[WindowSpec]] = {}
    for window in store.list_windows(session=session, active_at=now):
        try:
            spec = WindowSpec(
                cron=window.cron, duration=timedelta(seconds=window.duration_s), until=window.until, tz=window.timezone
            )
        except ValueError as exc:  # validated when added; a bad row must not stop routing
            log.error("ignoring schedule window %s of site %s: %s", window.id, window.site_id, exc)
            continue
        specs.setdefault(window.site_id, []).append(spec)
    valid_until = now + horizon
    return StageSnapshot(
        stages=stages,
        windows={site: tuple(s) for site, s in specs.items()},
        open_windows={site: open_intervals(s, now, valid_until) for site, s in specs.items()},
        taken_at=now,
        valid_until=valid_until,
    )


class StagePolicy:
    """Routes each prediction by its site's current stage (see the module docstring).

    Until the first :meth:`refresh` every site is treated as manual, the safe default.
    Route is called from the inference thread and refresh from the refresher thread; a
    refresh replaces the snapshot in one assignment, so route sees the old or the new
    one, never a mix.

    Args:
        routing: per-stage settings (``RolloutConfig.routing``).
        rng: random source for sampling; seed it in tests.
        clock: the current time (aware), for schedule windows.
        snapshot: a starting snapshot (tests); empty means every site is manual.
    """

    def __init__(
        self,
        routing: RoutingConfig | None = None,
        *,
        rng: random.Random | None = None,
        clock: Clock = utcnow,
        snapshot: StageSnapshot | None = None,
    ) -> None:
        self.routing = routing or RoutingConfig()
        self._rng = rng or random.Random()
        self._clock = clock
        self._snapshot = snapshot or StageSnapshot()

    @classmethod
    def from_config(cls, config: RolloutConfig, *, rng: random.Random | None = None, clock: Clock = utcnow) -> "StagePolicy":
        return cls(config.routing, rng=rng, clock=clock)

    @property
    def snapshot(self) -> StageSnapshot:
        return self._snapshot

    def stage_of(self, site_id: str) -> Stage:
        """The site's stage as this process currently sees it."""
        return self._snapshot.stage_of(site_id)

    def set_snapshot(self, snapshot: StageSnapshot) -> None:
        self._snapshot = snapshot

    def refresh(self, engine: Engine, *, horizon: timedelta = timedelta(minutes=2)) -> StageSnapshot:
        """Reload every site's stage and windows from the database.

        Args:
            engine: the store's engine.
            horizon: how far ahead window intervals are precomputed.

        Returns:
            The new snapshot (already in use).

        Raises:
            StoreError: the database failed; the previous snapshot stays in use.
        """
        from monitor.store.db import session_scope

        with session_scope(engine) as session:
            snapshot = load_snapshot(session=session, now=self._clock(), horizon=horizon)
        self._snapshot = snapshot
        return snapshot

    def route(
        self,
        *,
        site_id: str,
        camera_id: str,
        prediction: Prediction,
        positive: bool,
        out_of_domain: bool = False,
    ) -> Route:
        """What to do with one prediction at its site's current stage.

        Args:
            site_id: the camera's site.
            camera_id: the camera.
            prediction: the classifier's output (its confidence decides "low confidence").
            positive: an alert label at or above the camera's threshold.
            out_of_domain: the frame's out-of-domain signals fired (night IR, blur, ...).

        Returns:
            The route: review reason (or None) and whether to alert.
        """
        snapshot = self._snapshot
        stage = snapshot.stage_of(site_id)
        if stage is Stage.LIMITED:
            if positive and snapshot.in_window(site_id, self._clock()):
                return Route(positive=True, review_reason=QueueReason.POSITIVE, alert=True)
            return self._manual_like(positive, out_of_domain, self.routing.limited)
        if stage is Stage.EXPANSION:
            settings = self.routing.expansion
            doubtful = (out_of_domain and settings.review_out_of_domain) or (
                settings.review_low_confidence and prediction.confidence < settings.low_confidence_below
            )
            rate = settings.positive_sample_rate if positive else settings.negative_sample_rate
            sampled_reason = QueueReason.POSITIVE if positive else QueueReason.NEGATIVE_SAMPLE
            return self._sampled(positive, rate, sampled_reason, doubtful, alert=positive)
        if stage is Stage.FULL:
            settings_full = self.routing.full
            doubtful = (out_of_domain and settings_full.review_out_of_domain) or (
                settings_full.review_low_confidence and prediction.confidence < settings_full.low_confidence_below
            )
            return self._sampled(positive, settings_full.audit_sample_rate, QueueReason.AUDIT, doubtful, alert=positive)
        return self._manual_like(positive, out_of_domain, self.routing.manual)

    def _manual_like(self, positive: bool, out_of_domain: bool, settings) -> Route:
        if positive:
            return Route(positive=True, review_reason=QueueReason.POSITIVE, alert=False)
        return self._sampled(
            False, settings.negative_sample_rate, QueueReason.NEGATIVE_SAMPLE,
            out_of_domain and settings.review_out_of_domain, alert=False,
        )

    def _sampled(self, positive: bool, rate: float, reason: QueueReason, doubtful: bool, *, alert: bool) -> Route:
        # Draw first, whatever the frame looks like, so sampled items stay a uniform sample.
        if self._rng.random() < rate:
            return Route(positive=positive, review_reason=reason, alert=alert)
        if doubtful:
            return Route(positive=positive, review_reason=QueueReason.OUT_OF_DOMAIN, alert=alert)
        return Route(positive=positive, alert=alert)


class PolicyRefresher:
    """A daemon thread that refreshes a :class:`StagePolicy` every ``interval`` seconds.

    A failed refresh is logged and the previous snapshot stays in use (the database being
    away means nobody can change a stage either); the next tick tries again.

    Args:
        policy: the policy to refresh.
        engine: the store's engine.
        interval: seconds between refreshes, at most 5.
    """

    def __init__(self, policy: StagePolicy, engine: Engine, *, interval: float = 2.0) -> None:
        if not 0 < interval <= MAX_REFRESH_INTERVAL:
            raise ValueError(f"refresh interval must be more than 0 and at most {MAX_REFRESH_INTERVAL:g} s")
        self._policy = policy
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.refreshes = 0

    def start(self, *, refresh_now: bool = True) -> None:
        """Start refreshing in the background.

        Args:
            refresh_now: refresh once in this thread first, so a database problem
                surfaces to the caller (raises StoreError) before anything is routed.
        """
        if refresh_now:
            self._policy.refresh(self._engine)
            self.refreshes += 1
        self._thread = threading.Thread(target=self._run, name="rollout-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._policy.refresh(self._engine)
                self.refreshes += 1
            except Exception as exc:  # keep routing on the last good snapshot
                self.failures += 1
                log.error("could not refresh rollout stages, keeping the previous ones: %s", exc)
                log.debug("refresh failure", exc_info=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
