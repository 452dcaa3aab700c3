"""Review-queue load: items recorded and decisions made per second, PostgreSQL with 3 workers vs SQLite with 1.

Each worker is a separate process doing what a `monitor run --worker` process does when
it stores: the real :class:`monitor.store.recording.Recorder` (a ``samples`` row per
still, review items with their JPEG snapshots, hourly counts; one transaction per batch
of 16, the pipeline's default batch), for its own share of the cameras, as fast as it
can for ``--seconds``. Then the same number of processes decide the items, as reviewers
do: one :func:`monitor.store.reviews.decide` per item (compare-and-set on the item's
version plus a history row, one transaction each).

Rows compared (items/s and decisions/s, summed over the processes, sustained over the
whole run):

* ``postgresql x3``: three processes on one PostgreSQL (the scale-out set-up);
* ``sqlite x1``: one process on one SQLite file (the one-box set-up);
* ``sqlite x3``: three processes on one SQLite file (why many workers need PostgreSQL:
  SQLite takes one writer at a time);
* the first two again marked ``*``: without encoding and writing a JPEG per item, to
  show what the database itself takes.

Target: at least 1,000 items/s sustained on PostgreSQL here (2 cores shared by the
workers and the server).

    .venv/bin/python bench/queue_load.py [--seconds 20] [--postgres URL]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import sqlalchemy  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from monitor.config import MonitorConfig  # noqa: E402
from monitor.store import SnapshotStore, StoreError, create_engine_for, init_schema, session_scope  # noqa: E402
from monitor.store import sync_sites_and_cameras  # noqa: E402
from monitor.store.recording import Recorder  # noqa: E402
from monitor.store.reviews import decide  # noqa: E402
from monitor.store.tables import DecisionAction, ReviewItem  # noqa: E402
from monitor.store.users import create_user, get_user  # noqa: E402
from monitor.types import Frame, Outcome, Prediction, QueueReason, Route  # noqa: E402

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 16
CAMERAS_PER_WORKER = 4
LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def config_for(url: str, workers: int, snapshots: Path) -> MonitorConfig:
    cameras = [{"id": f"w{w}-cam{c}", "url": f"rtsp://10.0.0.{w}/{c}"}
               for w in range(workers) for c in range(CAMERAS_PER_WORKER)]
    return MonitorConfig(database=url, snapshots=snapshots, sites=[{"id": "park", "cameras": cameras}])


def outcome(camera_id: str, moment: datetime, image: np.ndarray, rng: np.random.Generator) -> Outcome:
    label = LABELS[int(rng.integers(len(LABELS)))]
    confidence = float(rng.uniform(0.4, 0.99))
    rest = (1.0 - confidence) / (len(LABELS) - 1)
    probabilities = {name: (confidence if name == label else rest) for name in LABELS}
    return Outcome(
        site_id="park",
        frame=Frame(camera_id=camera_id, image=image, captured_at=moment),
        prediction=Prediction(label, confidence, probabilities, "bench-model@1"),
        route=Route(positive=label not in ("none", "teddy"), review_reason=QueueReason.NEGATIVE_SAMPLE),
    )


class UnwrittenSnapshots(SnapshotStore):
    """For the database-only rows: a path per still, no JPEG encoded or written."""

    def save_many(self, requests) -> list[str]:  # noqa: ANN001
        return [f"{r.site_id}/{r.camera_id}/{uuid.uuid4().hex}.jpg" for r in requests]


def record_worker(url: str, worker: int, snapshots: str, seconds: float, results, write_jpegs: bool = True) -> None:
    """One process recording batches for its cameras until the time is up."""
    engine = create_engine_for(url)
    store = SnapshotStore(Path(snapshots)) if write_jpegs else UnwrittenSnapshots(Path(snapshots))
    recorder = Recorder(engine, store, worker=f"w{worker}")
    rng = np.random.default_rng(worker)
    image = rng.integers(0, 256, size=(72, 128, 3), dtype=np.uint8)  # a small still: the database is measured
    cameras = [f"w{worker}-cam{c}" for c in range(CAMERAS_PER_WORKER)]
    items, step, retries = 0, 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        moment = T0 + timedelta(seconds=step)
        batch = [outcome(cameras[i % len(cameras)], moment + timedelta(milliseconds=i), image, rng)
                 for i in range(BATCH)]
        try:
            items += len(recorder(batch))
        except StoreError:  # what the pipeline does: keep the batch, try again
            retries += 1
            continue
        step += 1
    results.put(("record", items, time.perf_counter() - started, retries))
    engine.dispose()


def decide_worker(url: str, worker: int, workers: int, seconds: float, results) -> None:
    """One reviewer approving their share of the pending items, one decision at a time."""
    engine = create_engine_for(url)
    with Session(engine) as session:
        reviewer = get_user("bench", session=session)
        ids = session.exec(select(ReviewItem.id).where(col(ReviewItem.status) == "pending")
                           .order_by(col(ReviewItem.id))).all()
    mine = [item_id for item_id in ids if item_id % workers == worker]
    decided = 0
    started = time.perf_counter()
    retries = 0
    with Session(engine) as session:
        for item_id in mine:
            if time.perf_counter() - started >= seconds:
                break
            while True:
                try:
                    decide(item_id, session=session, reviewer=reviewer, action=DecisionAction.APPROVE,
                           expected_version=0)
                    break
                except (StoreError, sqlalchemy.exc.OperationalError):  # a reviewer's retry
                    session.rollback()
                    retries += 1
            decided += 1
    results.put(("decide", decided, time.perf_counter() - started, retries))
    engine.dispose()


def run_case(name: str, url: str, workers: int, seconds: float, workdir: Path, write_jpegs: bool = True) -> dict:
    engine = create_engine_for(url)
    init_schema(engine)
    config = config_for(url, workers, workdir / "snapshots")
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
    with session_scope(engine) as session:
        create_user("bench", "bench-password-1", session=session)
    engine.dispose()
    context = multiprocessing.get_context("spawn")
    row = {"case": name}
    for phase, target, args in (
        ("record", record_worker, lambda w: (url, w, str(workdir / "snapshots"), seconds)),
        ("decide", decide_worker, lambda w: (url, w, workers, seconds)),
    ):
        results = context.Queue()
        extra = (write_jpegs,) if phase == "record" else ()
        processes = [context.Process(target=target, args=(*args(w), results, *extra)) for w in range(workers)]
        for process in processes:
            process.start()
        done = [results.get(timeout=seconds + 120) for _ in processes]
        for process in processes:
            process.join(30)
        count = sum(n for _, n, _, _ in done)
        wall = max(t for _, _, t, _ in done)
        row[phase] = (count, count / wall, sum(r for _, _, _, r in done))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase per case")
    parser.add_argument("--postgres", default=POSTGRES_URL, help="PostgreSQL URL (a scratch schema is made in it)")
    args = parser.parse_args()

    admin = sqlalchemy.create_engine(args.postgres)
    schemas = [f"bench_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with admin.begin() as connection:
        for schema in schemas:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    pg_urls = [make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
               .render_as_string(hide_password=False) for schema in schemas]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="queue-load-") as scratch:
            root = Path(scratch)
            rows.append(run_case("postgresql x3", pg_urls[0], 3, args.seconds, root / "pg"))
            for name, workers in (("sqlite x1", 1), ("sqlite x3", 3)):
                folder = root / name.replace(" ", "")
                rows.append(run_case(name, f"sqlite:///{folder / 'monitor.db'}", workers, args.seconds, folder))
            # The same without encoding and writing JPEGs: what the database itself takes.
            rows.append(run_case("postgresql x3 *", pg_urls[1], 3, args.seconds, root / "pg-db", write_jpegs=False))
            folder = root / "sqlite-db"
            rows.append(run_case("sqlite x1 *", f"sqlite:///{folder / 'monitor.db'}", 1, args.seconds, folder,
                                 write_jpegs=False))
    finally:
        with admin.begin() as connection:
            for schema in schemas:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()

    print(f"\nreview queue load, {args.seconds:.0f} s per phase, batches of {BATCH} stills")
    print(f"{'case':<16}{'items':>10}{'items/s':>10}{'retries':>9}{'decisions':>11}{'decisions/s':>13}{'retries':>9}")
    for row in rows:
        (items, item_rate, item_retries), (decisions, decide_rate, decide_retries) = row["record"], row["decide"]
        print(f"{row['case']:<16}{items:>10}{item_rate:>10.0f}{item_retries:>9}{decisions:>11}{decide_rate:>13.0f}"
              f"{decide_retries:>9}")
    print("retries: transactions refused (SQLite: 'database is locked') and tried again, as the pipeline does")
    print("*: database only (no JPEG encoded or written per item)")
    for row in (rows[0], rows[3]):
        rate = row["record"][1]
        verdict = "meets" if rate >= 1000 else "MISSES"
        print(f"{row['case']}: {rate:.0f} items/s sustained, {verdict} the 1,000 items/s target")


if __name__ == "__main__":
    main()
