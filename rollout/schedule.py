"""Limited-stage schedule windows: when a site's model may alert.

A window opens at every fire time of a cron expression (evaluated by APScheduler's
``CronTrigger`` in the window's time zone), stays open for a fixed duration, and no
window is open at or after its ``until`` moment. "Every 4 hours for a month, one hour
each" is ``--cron "0 */4 * * *" --duration 1h --until 2026-08-01``.

Evaluating cron on every prediction would be wasteful, so :func:`open_intervals` turns
windows into merged ``[start, end)`` intervals over a short horizon once per policy
refresh; routing then only compares times.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from apscheduler.triggers.cron import CronTrigger

# Bounds what a pathological schedule ("* * * * *" with a long horizon) can cost.
MAX_FIRES = 5000
MAX_DURATION = timedelta(days=31)
_TICK = timedelta(microseconds=1)

Interval = tuple[datetime, datetime]


def parse_cron(expression: str, tz: str = "UTC") -> CronTrigger:
    """Build the trigger of a five-field cron expression.

    Args:
        expression: e.g. ``"0 */4 * * *"`` (minute hour day month weekday).
        tz: IANA time zone the expression is read in.

    Raises:
        ValueError: one line naming what is wrong and the expected form.
    """
    try:
        zone = zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {tz!r} is unknown; use an IANA name like UTC or America/Denver") from None
    try:
        return CronTrigger.from_crontab(expression.strip(), timezone=zone)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"cron expression {expression!r} is not valid ({exc}); use five fields: "
            "minute hour day month weekday, e.g. '0 */4 * * *'"
        ) from None


def parse_until(value: str, tz: str = "UTC") -> datetime:
    """Parse an end date: a date means the end of that day in ``tz``; a datetime is used as is.

    Args:
        value: ``2026-08-01`` (windows end when that day ends) or ``2026-08-01T06:00``
            (naive means in ``tz``) or with an offset.
        tz: IANA time zone for dates and naive datetimes.

    Returns:
        An aware UTC datetime.

    Raises:
        ValueError: one line with the accepted forms.
    """
    text = value.strip()
    try:
        zone = zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {tz!r} is unknown; use an IANA name like UTC or America/Denver") from None
    try:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
        else:
            moment = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a date; use YYYY-MM-DD (through the end of that day) or YYYY-MM-DDTHH:MM"
        ) from None
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class WindowSpec:
    """One schedule of windows, ready to evaluate.

    Attributes:
        cron: five-field cron expression of window starts.
        duration: how long each window stays open.
        until: aware; windows are cut off here.
        tz: IANA time zone of the cron expression.
    """

    cron: str
    duration: timedelta
    until: datetime
    tz: str = "UTC"
    trigger: CronTrigger = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.until.utcoffset() is None:
            raise ValueError("WindowSpec.until must be timezone-aware")
        if not timedelta(0) < self.duration <= MAX_DURATION:
            raise ValueError(f"window duration must be more than 0 and at most {MAX_DURATION.days} days")
        object.__setattr__(self, "trigger", parse_cron(self.cron, self.tz))

    def fires(self, start: datetime, end: datetime) -> list[datetime]:
        """Fire times f with start <= f < min(end, until), at most :data:`MAX_FIRES`."""
        stop = min(end, self.until)
        found: list[datetime] = []
        moment = self.trigger.get_next_fire_time(None, start)
        while moment is not None and moment < stop and len(found) < MAX_FIRES:
            found.append(moment)
            moment = self.trigger.get_next_fire_time(None, moment + _TICK)
        return found

    def intervals(self, start: datetime, end: datetime) -> list[Interval]:
        """The windows that are open at some moment in ``[start, end)``, cut at ``until``."""
        # A window that opened up to one duration before `start` may still be open.
        return [
            (fire, min(fire + self.duration, self.until))
            for fire in self.fires(start - self.duration + _TICK, end)
        ]

    def is_open(self, moment: datetime) -> bool:
        """Whether a window of this schedule is open at ``moment``."""
        return any(s <= moment < e for s, e in self.intervals(moment, moment + _TICK))

    def next_open(self, moment: datetime, *, horizon: timedelta = timedelta(days=366)) -> Interval | None:
        """The window open at ``moment``, or else the next one to open, within ``horizon``."""
        for interval in self.intervals(moment, moment + horizon):
            if interval[1] > moment:
                return interval
        return None


def merge_intervals(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sort and merge overlapping or touching ``[start, end)`` intervals."""
    merged: list[list[datetime]] = []
    for start, end in sorted(intervals):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def open_intervals(specs: Sequence[WindowSpec], start: datetime, end: datetime) -> tuple[Interval, ...]:
    """Every window of ``specs`` open at some moment in ``[start, end)``, merged."""
    return merge_intervals(i for spec in specs for i in spec.intervals(start, end))


def inside(intervals: Sequence[Interval], moment: datetime) -> bool:
    """Whether ``moment`` lies in one of the ``[start, end)`` intervals."""
    return any(start <= moment < end for start, end in intervals)
