"""The overview page: each site's alert rate against its baseline over time, and the drift flags.

Responsible for turning the hourly counts into one chart per site (alert episodes per
day, the number the manual-stage baseline rate predicts for the stills classified that
day, and the band the drift detector tolerates around it) and for listing the open and
recently closed drift flags. The chart is an SVG drawn on the server: no script, no
inline style (the page keeps the app's strict Content-Security-Policy), readable without
JavaScript and printable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlmodel import Session, col, select

from monitor.store.observe import recent_flags, scope_counts
from monitor.store.tables import Camera, CameraHour, DriftFlag, Site
from monitor.web.auth import Identity, page_user
from monitor.web.context import WebContext, get_ctx
from monitor.web.templating import render

router = APIRouter(include_in_schema=False)
Ctx = Annotated[WebContext, Depends(get_ctx)]
PageUser = Annotated[Identity, Depends(page_user)]

CHART_DAYS = 30
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28


@dataclass(frozen=True)
class DayPoint:
    """One UTC day of a site: stills classified, alert episodes, and what the baseline expects."""

    day: date
    frames: int
    episodes: int
    expected: float | None


@dataclass
class Chart:
    """SVG geometry of one site's chart; every value is a number or built from numbers.

    Attributes:
        actual: polylines ("x,y x,y ...") of episodes per day, split where a day had no stills.
        expected: polylines of the baseline's expected episodes per day.
        band: polygons of the tolerated band (rate_ratio_down .. rate_ratio_up x expected).
        dots: (x, y, tooltip) per day with stills.
        y_ticks: (y, label) for the vertical axis.
        x_ticks: (x, label) for the horizontal axis.
    """

    actual: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    band: list[str] = field(default_factory=list)
    dots: list[tuple[float, float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT


def _segments(points: Sequence[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append(point)
    return [s for s in segments if s]


def _line(segment: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in segment)


def build_chart(points: Sequence[DayPoint], *, ratio_down: float, ratio_up: float) -> Chart:
    """Lay out a site's days as an SVG chart.

    Args:
        points: one per day, oldest first.
        ratio_down: lower edge of the band, as a multiple of the expected count.
        ratio_up: upper edge of the band.

    Returns:
        The chart's geometry.
    """
    chart = Chart()
    if not points:
        return chart
    top_value = max(
        [p.episodes for p in points] + [p.expected * ratio_up for p in points if p.expected is not None] + [1.0]
    )
    plot_width = chart.right - chart.left
    step = plot_width / max(1, len(points) - 1)

    def x_of(index: int) -> float:
        return chart.left + index * step if len(points) > 1 else chart.left + plot_width / 2

    def y_of(value: float) -> float:
        return chart.bottom - (chart.bottom - TOP) * value / top_value

    measured = [(x_of(i), y_of(p.episodes)) if p.frames else None for i, p in enumerate(points)]
    expected = [(x_of(i), y_of(p.expected)) if p.expected is not None and p.frames else None
                for i, p in enumerate(points)]
    chart.actual = [_line(s) for s in _segments(measured)]
    chart.expected = [_line(s) for s in _segments(expected)]
    for segment in _segments([
        (x_of(i), p.expected) if p.expected is not None and p.frames else None for i, p in enumerate(points)
    ]):
        upper = [(x, y_of(v * ratio_up)) for x, v in segment]
        lower = [(x, y_of(v * ratio_down)) for x, v in reversed(segment)]
        chart.band.append(_line(upper + lower))
    for i, p in enumerate(points):
        if p.frames:
            tip = f"{p.day.isoformat()}: {p.episodes} alert episodes"
            if p.expected is not None:
                tip += f", {p.expected:.1f} expected at the baseline rate"
            chart.dots.append((x_of(i), y_of(p.episodes), tip))
    chart.y_ticks = [(y_of(v), f"{v:g}") for v in (0.0, round(top_value / 2, 1), round(top_value, 1))]
    chart.x_ticks = [(x_of(i), p.day.strftime("%m-%d")) for i, p in enumerate(points) if i % 7 == 0]
    return chart


def site_days(
    camera_ids: Sequence[str], *, session: Session, now: datetime, baseline_rate: float | None, days: int = CHART_DAYS
) -> list[DayPoint]:
    """A site's last ``days`` UTC days, oldest first (today, so far, last).

    Args:
        camera_ids: the site's cameras.
        session: an open session.
        now: aware current time.
        baseline_rate: alert episodes per classified still in the baseline; None without one.
        days: how many days.
    """
    first = (now - timedelta(days=days - 1)).date()
    start = datetime(first.year, first.month, first.day, tzinfo=now.tzinfo)
    totals: dict[date, list[int]] = {first + timedelta(days=i): [0, 0] for i in range(days)}
    if camera_ids:
        rows = session.exec(
            select(CameraHour.hour, CameraHour.frames, CameraHour.alert_episodes)
            .where(col(CameraHour.camera_id).in_(list(camera_ids)), col(CameraHour.hour) >= start)
        ).all()
        for hour, frames, episodes in rows:
            if hour.date() in totals:
                totals[hour.date()][0] += int(frames)
                totals[hour.date()][1] += int(episodes)
    return [
        DayPoint(day, frames, episodes, baseline_rate * frames if baseline_rate is not None else None)
        for day, (frames, episodes) in sorted(totals.items())
    ]


@dataclass
class SiteOverview:
    """What the overview shows for one site."""

    site_id: str
    name: str
    stage: str
    baseline_rate: float | None
    baseline_episodes: int
    chart: Chart
    days: list[DayPoint]
    open_flags: list[DriftFlag]


def site_overviews(*, session: Session, now: datetime, ratio_down: float, ratio_up: float) -> list[SiteOverview]:
    """Every site's chart and open flags (the baseline is the site's manual-stage period).

    Args:
        session: an open session.
        now: aware current time.
        ratio_down: lower edge of the tolerated band (``drift.rate_ratio_down``).
        ratio_up: upper edge (``drift.rate_ratio_up``).
    """
    from rollout import store as rollout_store
    from rollout.stages import Stage

    cameras: dict[str, list[str]] = {}
    for camera in session.exec(select(Camera)).all():
        cameras.setdefault(camera.site_id, []).append(camera.id)
    flags = [f for f in recent_flags(session=session, since=now) if f.closed_at is None]
    overviews = []
    for site in session.exec(select(Site).order_by(col(Site.id))).all():
        camera_ids = cameras.get(site.id, [])
        state = rollout_store.get_state(site.id, session=session)
        manual = [(p.start, p.end) for p in rollout_store.stage_periods(site.id, session=session)
                  if p.stage is Stage.MANUAL]
        baseline = scope_counts(camera_ids, manual, session=session)
        rate = baseline.episodes / baseline.frames if baseline.frames else None
        days = site_days(camera_ids, session=session, now=now, baseline_rate=rate)
        overviews.append(SiteOverview(
            site_id=site.id, name=site.name, stage=state.stage if state else Stage.MANUAL.value,
            baseline_rate=rate, baseline_episodes=baseline.episodes,
            chart=build_chart(days, ratio_down=ratio_down, ratio_up=ratio_up), days=days,
            open_flags=[f for f in flags if f.site_id == site.id],
        ))
    return overviews


@router.get("/overview")
def overview_page(request: Request, ctx: Ctx, identity: PageUser) -> Response:
    now = ctx.clock()
    drift = ctx.config.drift
    with ctx.session() as session:
        sites = site_overviews(session=session, now=now, ratio_down=drift.rate_ratio_down, ratio_up=drift.rate_ratio_up)
        closed = [f for f in recent_flags(session=session, since=now - timedelta(days=14)) if f.closed_at is not None]
    return render(request, "overview.html", identity, sites=sites, closed=closed, drift=drift, days=CHART_DAYS)
