"""`monitor prune` and the rows `monitor run` keeps per alert and per still, on both backends:
finished notifications and bare alerts go after the retention period, pending and dead
ones never; samples rows go only for stream cameras, never for a still that still has
an alert, and never for folders and video files, whose stills come back with their old
capture times when the files are read again."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest
import yaml
from sqlmodel import Session, func, select

from scaleout_helpers import CAMERAS, T0
from monitor.config import MonitorConfig
from monitor.retention import prune_history, wall_clock_cameras
from monitor.store import session_scope, sync_sites_and_cameras
from monitor.store.cluster_tables import Alert, OutboxEntry, SampleRow
from monitor.store.outbox import discard_dead, mark_dead, mark_delivered
from monitor.store.recording import Recorder
from monitor.store.samples import prune_samples
from monitor.store.tables import ReviewItem
from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

NOW = T0 + timedelta(days=40)
THIRTY_DAYS, TWO_DAYS = timedelta(days=30), timedelta(days=2)


def still(site: str, camera: str, at: datetime, *, origin: str = "", alert: bool = False, seed: int = 0) -> Outcome:
    image = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    label = "grizzly" if alert else "none"
    return Outcome(site_id=site, frame=Frame(camera_id=camera, image=image, captured_at=at, origin=origin),
                   prediction=Prediction(label, 0.9, {label: 0.9, "teddy": 0.1}, "test-model@1"),
                   route=Route(positive=alert, review_reason=QueueReason.POSITIVE, alert=alert))


def count(engine, table) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def sample_keys(engine) -> set[tuple[str, str]]:
    with Session(engine) as session:
        return {(row.camera_id, row.origin or row.captured_at.isoformat()[:19])
                for row in session.exec(select(SampleRow)).all()}


@pytest.fixture
def cards_config(scaleout_config: MonitorConfig, engine, tmp_path) -> MonitorConfig:
    """The stream cameras plus, at site `cards`, a folder of stills, a video file read as it
    is (its stills carry the file's times) and one replayed at real time (wall-clock times)."""
    folder = tmp_path / "card"
    folder.mkdir()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"only the path matters here")
    data = scaleout_config.model_dump(mode="json")
    data["sites"].append({"id": "cards", "cameras": [
        {"id": "card", "path": str(folder)},
        {"id": "file", "path": str(clip), "replay": False},
        {"id": "replayed", "path": str(clip), "replay": True},
    ]})
    config = MonitorConfig.model_validate(data)
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
    return config


def test_the_cameras_whose_samples_may_be_forgotten(cards_config):
    streams = [camera for cameras in CAMERAS.values() for camera in cameras]
    assert wall_clock_cameras(cards_config) == ([*streams, "replayed"], ["card", "file"])


def test_prune_deletes_finished_notifications_and_bare_alerts_never_pending_or_dead(
    engine, snapshots, make_routed, clock, scaleout_config
):
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["ops", "pager"]}, clock=clock)
    recorder([make_routed("gate", T0), make_routed("trail", T0, seed=1), make_routed("creek", T0, seed=2),
              make_routed("gate", T0 + timedelta(seconds=1), seed=3), make_routed("lake", T0, seed=4)])
    clock.now = NOW - timedelta(days=1)
    recorder([make_routed("gate", clock.now, seed=5)])
    with Session(engine) as session:
        ids = {(alert.camera_id, alert.captured_at, entry.target): int(entry.id) for entry, alert in session.exec(
            select(OutboxEntry, Alert).where(OutboxEntry.alert_id == Alert.id)).all()}
    late = T0 + timedelta(seconds=1)
    with session_scope(engine) as session:
        for key, when in [(("gate", T0, "ops"), T0), (("gate", T0, "pager"), T0), (("trail", T0, "ops"), T0),
                          (("gate", late, "ops"), NOW - TWO_DAYS),  # delivered late, after a requeue
                          (("gate", late, "pager"), T0), (("gate", clock.now, "ops"), clock.now)]:
            mark_delivered(ids[key], session=session, now=when)
        mark_dead(ids[("trail", T0, "pager")], session=session, error="HTTP 410", now=T0)
        mark_dead(ids[("creek", T0, "ops")], session=session, error="HTTP 410", now=T0)
        discard_dead(session=session, target="ops", ids=[ids[("creek", T0, "ops")]], now=T0)
    # left as they are: creek's pager entry (pending since T0), the new gate alert's pager entry

    with session_scope(engine) as session:
        dry = prune_history(session=session, config=scaleout_config, older_than=THIRTY_DAYS, now=NOW, dry_run=True)
    assert count(engine, OutboxEntry) == 10 and count(engine, Alert) == 6
    with session_scope(engine) as session:
        report = prune_history(session=session, config=scaleout_config, older_than=THIRTY_DAYS, now=NOW)
    assert (report.notifications, report.alerts) == (dry.notifications, dry.alerts) == (5, 2)
    with Session(engine) as session:
        left = {(alert.camera_id, alert.captured_at, entry.target, entry.status) for entry, alert in session.exec(
            select(OutboxEntry, Alert).where(OutboxEntry.alert_id == Alert.id)).all()}
        alerts = {(alert.camera_id, alert.captured_at) for alert in session.exec(select(Alert)).all()}
    assert left == {
        ("trail", T0, "pager", "dead"),  # dead: kept until someone requeues or discards it
        ("creek", T0, "pager", "pending"),  # never deleted, however old
        ("gate", late, "ops", "delivered"),  # delivered within the period
        ("gate", clock.now, "ops", "delivered"), ("gate", clock.now, "pager", "pending"),
    }
    # gate@T0 (every entry gone) and lake (no targets) went; the rest keep their alerts.
    assert alerts == {("trail", T0), ("creek", T0), ("gate", late), ("gate", clock.now)}


def test_prune_forgets_only_stream_stills_and_reading_a_card_again_still_records_nothing(
    cards_config, engine, snapshots, clock
):
    recorder = Recorder(engine, snapshots, clock=clock)
    old = [
        still("north", "gate", T0, alert=True),  # an alert (site without targets: no outbox entries)
        still("north", "trail", T0, seed=1), still("south", "lake", T0, seed=2),
        still("cards", "card", T0 - timedelta(days=90), origin="DCIM/IMG_0001.JPG", seed=3),  # EXIF time
        still("cards", "file", T0 - timedelta(days=30), origin="clip.mp4#t=0.000", seed=4),  # the file's time
        still("cards", "replayed", T0, origin="clip.mp4#t=0.000", seed=5),  # wall clock when replayed
    ]
    recorder(old)
    clock.now = NOW - timedelta(hours=1)
    recorder([still("north", "trail", clock.now, seed=6),
              still("north", "trail", T0 - timedelta(days=10), seed=7)])  # an old time, recorded just now
    assert count(engine, SampleRow) == 8

    with session_scope(engine) as session:
        report = prune_history(session=session, config=cards_config, older_than=timedelta(days=365),
                               samples_older_than=TWO_DAYS, now=NOW)
    assert report.samples == 3 and report.kept_cameras == ["card", "file"]
    assert {camera for camera, _ in sample_keys(engine)} == {"gate", "trail", "card", "file"}
    assert count(engine, SampleRow) == 5

    # A restarted worker reads the card and the file again: nothing is recorded twice,
    # and the still with an alert does not trip over its alert's unique key.
    items = count(engine, ReviewItem)
    recorder([old[0], old[3], old[4]])
    assert recorder.duplicates == 3 and count(engine, ReviewItem) == items and count(engine, Alert) == 1
    # A forgotten stream still would be recorded again: why only streams are pruned, after
    # a period no still of theirs can wait in a worker's memory.
    recorder([old[1]])
    assert count(engine, ReviewItem) == items + 1

    # Once its alert is pruned, the alerted still's row goes too.
    with session_scope(engine) as session:
        report = prune_history(session=session, config=cards_config, older_than=THIRTY_DAYS,
                               samples_older_than=TWO_DAYS, now=NOW)
    assert report.alerts == 1 and report.samples == 1 and count(engine, Alert) == 0
    assert "gate" not in {camera for camera, _ in sample_keys(engine)}


def test_samples_are_pruned_in_batches_past_rows_that_must_stay(engine, snapshots, clock):
    recorder = Recorder(engine, snapshots, clock=clock)
    stills = [still("north", camera, T0 + timedelta(seconds=i), alert=(i == 2), seed=i)
              for i, camera in enumerate(["gate"] * 5 + ["trail"] * 4)]
    recorder(stills)
    with session_scope(engine) as session:
        assert prune_samples(session=session, cameras=["gate", "trail"], cutoff=NOW, dry_run=True) == 8
        assert prune_samples(session=session, cameras=["gate", "trail"], cutoff=NOW, batch=2) == 8
        assert prune_samples(session=session, cameras=["gate", "trail"], cutoff=NOW, batch=2) == 0
        assert prune_samples(session=session, cameras=[], cutoff=NOW) == 0
    assert sample_keys(engine) == {("gate", (T0 + timedelta(seconds=2)).isoformat()[:19])}


def test_prune_history_refuses_periods_that_are_too_short(engine, scaleout_config):
    with session_scope(engine) as session:
        with pytest.raises(ValueError, match="at least 1h"):
            prune_history(session=session, config=scaleout_config, older_than=THIRTY_DAYS,
                          samples_older_than=timedelta(minutes=10))
        with pytest.raises(ValueError, match="greater than zero"):
            prune_history(session=session, config=scaleout_config, older_than=timedelta(0))


def test_cli_prune_reports_notifications_and_samples(cards_config, engine, snapshots, make_routed, clock, tmp_path):
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["ops"]}, clock=clock)  # in July 2026
    recorder([make_routed("gate", T0), still("cards", "card", T0, origin="a.jpg", seed=1),
              still("north", "trail", T0, seed=2)])
    with session_scope(engine) as session:
        mark_delivered(int(session.exec(select(OutboxEntry.id)).one()), session=session, now=T0)
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump(cards_config.model_dump(mode="json")))
    command = [sys.executable, "-m", "monitor.cli", "prune", "-c", str(config), "--older-than", "30d"]

    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 1 delivered or discarded notification(s) and 1 alert(s)" in dry.stdout
    # trail's, and gate's once its alert is gone: what the real run deletes
    assert "would delete 2 samples row(s) of 5 stream camera(s)" in dry.stdout
    assert count(engine, SampleRow) == 3 and count(engine, Alert) == 1
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 delivered or discarded notification(s) and 1 alert(s)" in done.stdout
    assert "deleted 2 samples row(s) of 5 stream camera(s)" in done.stdout
    assert "kept those of 2 folder or video-file camera(s)" in done.stdout
    assert {camera for camera, _ in sample_keys(engine)} == {"card"}
    short = subprocess.run([*command, "--samples-older-than", "10m"], capture_output=True, text=True, timeout=120)
    assert short.returncode == 2 and "at least 1h" in short.stderr
