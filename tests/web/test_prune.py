"""`monitor prune`: old unreviewed negative samples go with their snapshots; the rest stays."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from sqlmodel import Session, select

from monitor.retention import prune
from monitor.store import session_scope
from monitor.store.reviews import decide, undo
from monitor.store.tables import CameraHour, LabelHour, ReviewDecision, ReviewItem, User
from monitor.types import QueueReason
from review_helpers import T0

NOW = T0 + timedelta(days=40)
NEGATIVE = {"camera_id": "lake", "label": "none", "reason": QueueReason.NEGATIVE_SAMPLE}


def state(engine) -> tuple[set[int], list, list]:
    with Session(engine) as session:
        items = {i.id for i in session.exec(select(ReviewItem)).all()}
        cameras = sorted((r.camera_id, r.hour, r.frames) for r in session.exec(select(CameraHour)).all())
        labels = sorted((r.camera_id, r.hour, r.label, r.predictions) for r in session.exec(select(LabelHour)).all())
    return items, cameras, labels


def jpegs(snapshots) -> int:
    return len(list(snapshots.root.rglob("*.jpg")))


@pytest.fixture
def alice_user(engine, users) -> User:
    with Session(engine) as session:
        return session.exec(select(User).where(User.name == "alice")).one()


@pytest.fixture
def scene(add_items, engine, alice_user):
    """Old and recent items of every kind; returns their ids by name."""
    ids = {
        "old_negative": add_items(3, start=T0, **NEGATIVE),
        "old_positive": add_items(2, start=T0, camera_id="gate"),
        "old_negative_reviewed": add_items(1, start=T0 + timedelta(minutes=10), **NEGATIVE),
        "old_negative_undone": add_items(1, start=T0 + timedelta(minutes=20), **NEGATIVE),
        "old_positive_reviewed": add_items(1, start=T0 + timedelta(minutes=30), camera_id="gate"),
        "recent_negative": add_items(2, start=NOW - timedelta(days=2), **NEGATIVE),
    }
    with session_scope(engine) as session:
        decide(ids["old_negative_reviewed"][0], session=session, reviewer=alice_user, action="approve")
        decide(ids["old_negative_undone"][0], session=session, reviewer=alice_user, action="reject")
        undo(ids["old_negative_undone"][0], session=session, reviewer=alice_user)
        decide(ids["old_positive_reviewed"][0], session=session, reviewer=alice_user, action="approve")
    return ids


def test_prune_deletes_only_old_unreviewed_negative_samples_and_their_files(engine, snapshots, scene):
    items_before, cameras_before, labels_before = state(engine)
    files_before = jpegs(snapshots)
    with session_scope(engine) as session:
        report = prune(session=session, snapshots=snapshots, older_than=timedelta(days=30), now=NOW)
    assert (report.items, report.snapshots, report.missing_snapshots) == (3, 3, 0)
    items, cameras, labels = state(engine)
    assert items == items_before - set(scene["old_negative"])
    assert jpegs(snapshots) == files_before - 3
    # the hourly counts the baselines come from are untouched
    assert (cameras, labels) == (cameras_before, labels_before)


def test_include_reviewed_also_deletes_reviewed_items_and_their_history(engine, snapshots, scene):
    with session_scope(engine) as session:
        report = prune(session=session, snapshots=snapshots, older_than=timedelta(days=30), include_reviewed=True,
                       now=NOW)
    items, _, _ = state(engine)
    assert items == set(scene["old_positive"]) | set(scene["recent_negative"])  # unreviewed positives stay
    assert report.items == 6 and jpegs(snapshots) == 4
    with Session(engine) as session:
        assert session.exec(select(ReviewDecision)).all() == []


def test_dry_run_counts_and_deletes_nothing(engine, snapshots, scene):
    before = state(engine)
    with session_scope(engine) as session:
        report = prune(session=session, snapshots=snapshots, older_than=timedelta(days=30), dry_run=True, now=NOW)
    assert report.items == 3 and state(engine) == before


def test_an_already_missing_snapshot_is_counted_not_fatal(engine, snapshots, add_items):
    (item_id,) = add_items(1, **NEGATIVE)
    with Session(engine) as session:
        snapshots.resolve(session.get(ReviewItem, item_id).snapshot).unlink()
    with session_scope(engine) as session:
        report = prune(session=session, snapshots=snapshots, older_than=timedelta(days=30), now=NOW)
    assert (report.items, report.snapshots, report.missing_snapshots) == (1, 0, 1)


def test_cli_prune(tmp_path, web_config, engine, snapshots, add_items):
    add_items(2, start=T0, **NEGATIVE)  # captured in July 2026: older than 1 day by now
    add_items(1, start=T0, camera_id="gate")
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump(web_config.model_dump(mode="json")))
    command = [sys.executable, "-m", "monitor.cli", "prune", "-c", str(config)]
    dry = subprocess.run([*command, "--older-than", "1d", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "would delete 2" in dry.stdout, dry.stderr
    done = subprocess.run([*command, "--older-than", "1d"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "deleted 2" in done.stdout and "2 snapshot(s)" in done.stdout, done.stderr
    assert len(state(engine)[0]) == 1
    bad = subprocess.run([*command, "--older-than", "soon"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
