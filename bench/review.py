"""Review queue speed with a million items in SQLite: ours (keyset paging) vs OFFSET paging.

Builds (or reuses, with --db) a SQLite file with N review items (default 1,000,000; 90%
pending, spread over 2 sites and 4 cameras), signs a reviewer in and times, through the
real FastAPI app in-process (TestClient: routing, auth, queries, JSON or the rendered
HTML page; no network):

* the queue page and the list API, first page and deep pages (90% of the way down the
  pending items), ours with keyset paging (``before=<id>``);
* the same pages through the naive baseline, identical except for ``LIMIT 50 OFFSET n``
  paging (added to the app by this script only);
* the list API deep with a camera filter (ours only);
* the decide call (approve with a version check and a history row), on distinct items.

Prints p50 and p95 per operation in milliseconds. Target: p95 under 100 ms for every
operation of ours.

    .venv/bin/python bench/review.py [--items 1000000] [--requests 40] [--db /tmp/review-bench.db]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from sqlmodel import col, select  # noqa: E402

from monitor.config import MonitorConfig  # noqa: E402
from monitor.store import SnapshotStore, create_engine_for, init_schema, session_scope  # noqa: E402
from monitor.store import sync_sites_and_cameras  # noqa: E402
from monitor.store.reviews import Filters, count_capped  # noqa: E402
from monitor.store.tables import ReviewItem  # noqa: E402
from monitor.store.users import create_user, get_user  # noqa: E402
from monitor.web import create_web_app  # noqa: E402
from monitor.web.api import item_out  # noqa: E402
from monitor.web.auth import page_user  # noqa: E402
from monitor.web.templating import render  # noqa: E402

PAGE = 50
CAMERAS = {"gate": "north", "trail": "north", "lake": "south", "ridge": "south"}
LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")
PASSWORD = "bench-password-1"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def bench_config(workdir: Path, db: Path) -> MonitorConfig:
    clip = workdir / "placeholder.mp4"
    clip.write_bytes(b"x")
    sites: dict[str, list[dict]] = {}
    for camera, site in CAMERAS.items():
        sites.setdefault(site, []).append({"id": camera, "path": str(clip)})
    return MonitorConfig(database=f"sqlite:///{db}", snapshots=workdir / "snapshots",
                         sites=[{"id": s, "cameras": c} for s, c in sites.items()])


def fill(engine, count: int) -> float:
    """Insert ``count`` review items with one executemany; returns seconds taken."""
    started = time.perf_counter()
    cameras = list(CAMERAS.items())
    probabilities = {label: round(1 / len(LABELS), 4) for label in LABELS}

    def rows():
        for i in range(count):
            camera, site = cameras[i % len(cameras)]
            label = LABELS[i % len(LABELS)]
            moment = (T0 + timedelta(seconds=5 * i)).strftime("%Y-%m-%d %H:%M:%S.%f")
            pending = i % 10 != 0
            status = "pending" if pending else "approved"
            reason = "positive" if label not in ("teddy", "none") else "negative_sample"
            yield (site, camera, moment, None, label, 0.8, json.dumps(probabilities), "bench@1", None,
                   None if pending else moment, reason, status, f"{site}/{camera}/x-{i}.jpg", moment, 0)

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA synchronous=OFF")  # bulk load only; the app runs with NORMAL
        cursor.executemany(
            "INSERT INTO review_items (site_id, camera_id, captured_at, media_ts, label, confidence, probabilities,"
            " model_id, review_label, reviewed_at, reason, status, snapshot, created_at, version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def add_naive_baseline(app) -> None:
    """The same list API and queue page, paged with OFFSET (what a first version does)."""

    @app.get("/bench/naive/items")
    def naive_items(request: Request, offset: int = 0, status: str = "pending") -> dict:
        page_user(_identity(request))
        with request.app.state.ctx.session() as session:
            statement = (select(ReviewItem).where(col(ReviewItem.status) == status)
                         .order_by(col(ReviewItem.id).desc()).offset(offset).limit(PAGE))
            items = session.exec(statement).all()
        return {"items": [item_out(i).model_dump(mode="json") for i in items]}

    @app.get("/bench/naive/queue")
    def naive_queue(request: Request, offset: int = 0, status: str = "pending"):
        identity = page_user(_identity(request))
        ctx = request.app.state.ctx
        with ctx.session() as session:
            statement = (select(ReviewItem).where(col(ReviewItem.status) == status)
                         .order_by(col(ReviewItem.id).desc()).offset(offset).limit(PAGE))
            items = list(session.exec(statement).all())
            count, more = count_capped(session=session, filters=Filters(status=status))
        from monitor.store.reviews import Page

        return render(request, "queue.html", identity, page=Page(items), count=count, more=more,
                      query={"status": status, "site": "", "camera": "", "label": "", "reason": "", "since": "",
                             "until": ""},
                      sites={}, cameras={}, statuses=[], reasons=[], older_url="", newer_url="", return_to="/queue")


def _identity(request: Request):
    from monitor.web.auth import identify

    return identify(request, request.app.state.ctx)


def timed(call: Callable[[int], object], requests: int, warmup: int = 3) -> tuple[float, float]:
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(requests):
        started = time.perf_counter()
        call(warmup + i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p95 = samples[max(0, round(0.95 * len(samples)) - 1)]
    return statistics.median(samples), p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per operation")
    parser.add_argument("--db", type=Path, default=None, help="reuse (or create) this SQLite file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="review-bench-"))
    db = args.db or workdir / "bench.db"
    config = bench_config(workdir, db)
    engine = create_engine_for(config.database)
    init_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
        existing = session.exec(select(ReviewItem.id).order_by(col(ReviewItem.id).desc()).limit(1)).first() or 0
        if get_user("alice", session=session) is None:
            create_user("alice", PASSWORD, session=session)
    if existing < args.items:
        if existing:
            raise SystemExit(f"{db} holds {existing} items, fewer than --items {args.items}; delete it first")
        print(f"inserting {args.items:,} review items into {db} ...", flush=True)
        print(f"inserted in {fill(engine, args.items):.1f} s")
    else:
        print(f"reusing {db} with {existing:,} items")

    app = create_web_app(engine=engine, snapshots=SnapshotStore(config.snapshots), registry=CollectorRegistry(),
                         config=config)
    add_naive_baseline(app)
    client = TestClient(app)
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    csrf = re.search(r'data-csrf="([^"]+)"', client.get("/queue").text).group(1)

    with session_scope(engine) as session:
        pending = count_capped(session=session, filters=Filters(status="pending"), cap=10**9)[0]
        depth = int(pending * 0.9)
        # keys of deep pages, looked up once (untimed): the id just above depth + k*PAGE
        deep_keys = [session.exec(
            select(ReviewItem.id).where(col(ReviewItem.status) == "pending").order_by(col(ReviewItem.id).desc())
            .offset(depth + k * PAGE - 1).limit(1)).one() for k in range(4)]
        lake = count_capped(session=session, filters=Filters(status="pending", camera_id="lake"), cap=10**9)[0]
        camera_key = session.exec(
            select(ReviewItem.id).where(col(ReviewItem.status) == "pending", col(ReviewItem.camera_id) == "lake")
            .order_by(col(ReviewItem.id).desc()).offset(int(lake * 0.9)).limit(1)).one()
        to_decide = list(session.exec(
            select(ReviewItem.id).where(col(ReviewItem.status) == "pending").order_by(col(ReviewItem.id))
            .limit(args.requests + 10)).all())

    def get(url: str) -> Callable[[int], object]:
        def call(i: int) -> object:
            response = client.get(url.format(key=deep_keys[i % len(deep_keys)], offset=depth + (i % 4) * PAGE))
            assert response.status_code == 200, response.text[:300]
            return response
        return call

    def decide(i: int) -> object:
        response = client.post(f"/api/v1/items/{to_decide[i]}/decision", json={"action": "approve", "version": 0},
                               headers={"X-CSRF-Token": csrf})
        assert response.status_code == 200, response.text[:300]
        return response

    operations = [
        ("queue page, first", get(f"/queue?status=pending&limit={PAGE}"), get("/bench/naive/queue?offset=0")),
        (f"queue page, deep (~{depth:,} down)", get(f"/queue?status=pending&limit={PAGE}&before={{key}}"),
         get("/bench/naive/queue?offset={offset}")),
        ("list API, first", get(f"/api/v1/items?status=pending&limit={PAGE}"), get("/bench/naive/items?offset=0")),
        (f"list API, deep (~{depth:,} down)", get(f"/api/v1/items?status=pending&limit={PAGE}&before={{key}}"),
         get("/bench/naive/items?offset={offset}")),
        ("list API, deep, camera filter", get(f"/api/v1/items?status=pending&camera=lake&limit={PAGE}&before="
                                              f"{camera_key}"), None),
        ("decide (approve, version check)", decide, None),
    ]
    print(f"{pending:,} pending of {existing or args.items:,} items; {args.requests} timed requests per operation; "
          f"page size {PAGE}")
    print(f"{'operation':<40} {'ours p50':>9} {'ours p95':>9} {'naive p50':>10} {'naive p95':>10}")
    worst = 0.0
    for name, ours, naive in operations:
        p50, p95 = timed(ours, args.requests, warmup=0 if ours is decide else 3)
        worst = max(worst, p95)
        if naive is not None:
            n50, n95 = timed(naive, max(5, args.requests // 4))
            print(f"{name:<40} {p50:>9.1f} {p95:>9.1f} {n50:>10.1f} {n95:>10.1f}")
        else:
            print(f"{name:<40} {p50:>9.1f} {p95:>9.1f} {'—':>10} {'—':>10}")
    print(f"worst p95 of ours: {worst:.1f} ms (target < 100 ms)")
    client.close()
    engine.dispose()
    shutil.rmtree(workdir, ignore_errors=True)  # with --db the database lives elsewhere and stays


if __name__ == "__main__":
    main()
