"""The overview page: each site's alert rate against its baseline as a server-drawn SVG,
and the open and recently closed drift flags; served under the strict CSP, shown in a
real browser without a console error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import MonitorConfig
from monitor.store import SnapshotStore, create_engine_for, init_schema, session_scope, sync_sites_and_cameras
from monitor.store import upsert_increments
from monitor.store.tables import CameraHour, DriftFlag, utc_hour
from monitor.store.users import create_user
from monitor.web import WebServer, create_web_app
from monitor.web.overview import DayPoint, build_chart
from rollout.promote import RolloutContext, promote
from rollout.store import init_rollout_schema

NOW = datetime(2026, 7, 31, 15, 0, tzinfo=timezone.utc)
PASSWORD = "a long enough password"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@pytest.fixture
def app(tmp_path, database_url):
    """North: 20 manual days at 10 episodes/day, then promoted, then 10 days at 25/day and
    a rate_up flag; south: only manual days, no flags."""
    config = MonitorConfig(
        database=database_url, snapshots=tmp_path / "snapshots",
        sites=[{"id": "north", "name": "North campground", "cameras": [{"id": "gate", "url": "rtsp://10.0.0.5/a"}]},
               {"id": "south", "cameras": [{"id": "lake", "url": "rtsp://10.0.0.6/b"}]}],
    )
    engine = create_engine_for(database_url)
    init_schema(engine)
    init_rollout_schema(engine)
    promoted = NOW - timedelta(days=10)
    rows = []
    for day in range(30, -1, -1):
        moment = NOW - timedelta(days=day)
        rows.append({"camera_id": "gate", "hour": utc_hour(moment), "frames": 17280,
                     "alert_episodes": 10 if moment < promoted else 25})
        if day != 3:  # the lake camera was down one day: a gap, not a zero
            rows.append({"camera_id": "lake", "hour": utc_hour(moment), "frames": 17280, "alert_episodes": 4})
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
        upsert_increments(CameraHour, rows, keys=("camera_id", "hour"), session=session)
        session.add(DriftFlag(site_id="north", camera_id="gate", kind="rate_up", opened_at=NOW - timedelta(days=8),
                              last_seen_at=NOW, statistic=2.5, detail="alert rate x2.50 over 7d (175 episodes)"))
        session.add(DriftFlag(site_id="south", camera_id=None, kind="confidence", opened_at=NOW - timedelta(days=6),
                              closed_at=NOW - timedelta(days=5), last_seen_at=NOW - timedelta(days=6),
                              statistic=0.3, detail="confidence PSI 0.30 over 1d (17280 stills)"))
        session.commit()
        create_user("alice", PASSWORD, session=session)
    with session_scope(engine) as session:
        promote("north", session=session, ctx=RolloutContext.from_config(config, clock=lambda: promoted),
                actor="test", force=True, reason="test")
    yield create_web_app(engine=engine, snapshots=SnapshotStore(tmp_path / "snapshots"), registry=CollectorRegistry(),
                         config=config, clock=lambda: NOW)
    engine.dispose()


def sign_in(client: TestClient) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token,
                                           "next": "/overview"}, follow_redirects=False)
    assert response.status_code == 303, response.text


def test_the_page_needs_a_signed_in_user(app):
    with TestClient(app) as client:
        response = client.get("/overview", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_each_site_has_its_chart_against_the_baseline_and_the_flags_are_listed(app):
    with TestClient(app) as client:
        sign_in(client)
        response = client.get("/overview")
    assert response.status_code == 200
    html = response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script" not in html and "style=" not in html  # nothing the CSP would block

    north, south = html.split('<section class="overview-site">')[1:3]
    assert "North campground" in north and "limited" in north and "1 drift flag" in north
    # 30 days of points plus today, one dot per day with stills; the baseline (manual
    # period: 10/day) predicts 10 episodes for each full day
    assert north.count('<circle class="actual"') == 30
    assert "07-30: 25 alert episodes, 10.0 expected at the baseline rate" in north
    assert "07-10: 10 alert episodes, 10.0 expected" in north
    assert north.count('<polygon class="band"') == 1 and north.count('<polyline class="expected"') == 1
    # a day without stills splits the line instead of drawing a false zero
    assert south.count('<polyline class="actual"') == 2 and south.count('<circle class="actual"') == 29
    assert '<span class="stage stage-manual">manual</span>' in south and "drift flag" not in south

    flags = html.split("<h2>Open drift flags</h2>")[1].split("</table>")[0]
    assert "rate up" in flags and "gate" in flags and "2026-07-23" in flags and "x2.50" in flags
    closed = html.split("Drift flags closed in the last 14 days")[1]
    assert "confidence" in closed and "all cameras" in closed and "2026-07-26" in closed


def test_chart_geometry_scales_to_the_largest_value_and_skips_empty_days():
    days = [DayPoint(NOW.date() - timedelta(days=3 - i), frames, episodes, expected)
            for i, (frames, episodes, expected) in enumerate([(100, 4, 5.0), (0, 0, None), (100, 20, 5.0), (100, 5, 5.0)])]
    chart = build_chart(days, ratio_down=0.5, ratio_up=2.0)
    assert len(chart.actual) == 2 and len(chart.dots) == 3
    heights = {tip.split(":")[1].strip(): y for _, y, tip in chart.dots}
    assert heights["20 alert episodes, 5.0 expected at the baseline rate"] == pytest.approx(12.0)  # the top
    assert chart.y_ticks[-1][1] == "20"
    assert build_chart([], ratio_down=0.5, ratio_up=2.0).dots == []


@pytest.fixture
def page(app) -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    server = WebServer(app, host="127.0.0.1", port=0)
    port = server.start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(base_url=f"http://127.0.0.1:{port}", viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.problems = []
            page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: page.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            yield page
            context.close()
            browser.close()
    finally:
        server.stop()


def test_a_real_browser_draws_the_charts_under_the_csp(page):
    page.goto("/overview")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/overview")
    charts = page.locator("svg.chart")
    assert charts.count() == 2
    box = charts.first.bounding_box()
    assert box["width"] > 500 and box["height"] > 100
    # the stylesheet applied (it is the only way styles get in): the measured line is red
    stroke = page.evaluate("getComputedStyle(document.querySelector('polyline.actual')).stroke")
    assert stroke in ("rgb(207, 34, 46)", "#cf222e"), stroke
    shots = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    assert page.problems == []
