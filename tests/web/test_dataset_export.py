"""`monitor dataset export`: reviewed stills as one folder per class, incrementally."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session, select

from monitor.dataset import ExportError, export_dataset
from monitor.store import session_scope
from monitor.store.reviews import decide, undo
from monitor.store.tables import ReviewItem, User


@pytest.fixture
def alice_user(engine, users) -> User:
    with Session(engine) as session:
        return session.exec(select(User).where(User.name == "alice")).one()


@pytest.fixture
def review(engine, alice_user):
    """review(item_id, action, label=None, version=None) -> decide (or undo) as alice."""

    def act(item_id: int, action: str, label: str | None = None, version: int | None = None) -> None:
        with session_scope(engine) as session:
            if action == "undo":
                undo(item_id, session=session, reviewer=alice_user)
            else:
                decide(item_id, session=session, reviewer=alice_user, action=action, label=label,
                       expected_version=version)

    return act


@pytest.fixture
def export(engine, snapshots):
    def run(out: Path):
        with session_scope(engine) as session:
            return export_dataset(out, session=session, snapshots=snapshots)

    return run


def files(out: Path) -> dict[str, str]:
    """relative path -> class folder, for every exported JPEG (hidden temporary files too)."""
    return {str(p.relative_to(out)): p.parent.name for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv"}


def manifest(out: Path) -> dict[int, dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as handle:
        return {int(row["item_id"]): row for row in csv.DictReader(handle)}


def test_classes_follow_the_decisions_and_pending_items_stay_out(tmp_path, add_items, review, export, snapshots,
                                                                  engine):
    approved, rejected, relabelled, pending = add_items(4, label="grizzly")
    review(approved, "approve")
    review(rejected, "reject")
    review(relabelled, "relabel", "black")
    out = tmp_path / "export"
    report = export(out)
    assert (report.added, report.moved, report.removed, report.unchanged) == (3, 0, 0, 0)
    assert files(out) == {
        f"grizzly/north-gate-{approved}.jpg": "grizzly",
        f"none/north-gate-{rejected}.jpg": "none",
        f"black/north-gate-{relabelled}.jpg": "black",
    }
    rows = manifest(out)
    assert set(rows) == {approved, rejected, relabelled}
    assert rows[relabelled]["class"] == "black" and rows[relabelled]["predicted"] == "grizzly"
    with Session(engine) as session:
        original = snapshots.resolve(session.get(ReviewItem, approved).snapshot).read_bytes()
    assert (out / rows[approved]["file"]).read_bytes() == original


def test_exporting_again_adds_only_what_is_new_and_follows_changes(tmp_path, add_items, review, export):
    a, b, c, d = add_items(4, label="grizzly")
    review(a, "approve")
    review(b, "approve")
    review(c, "reject")
    out = tmp_path / "export"
    export(out)
    untouched = (out / f"grizzly/north-gate-{a}.jpg").stat().st_mtime_ns

    assert export(out).unchanged == 3  # nothing new: nothing written

    review(d, "relabel", "polar")  # new
    review(b, "relabel", "black", version=1)  # changed class since the last export
    review(c, "undo")  # no longer reviewed
    report = export(out)
    assert (report.added, report.moved, report.removed, report.unchanged) == (1, 1, 1, 1)
    assert files(out) == {
        f"grizzly/north-gate-{a}.jpg": "grizzly",
        f"black/north-gate-{b}.jpg": "black",
        f"polar/north-gate-{d}.jpg": "polar",
    }
    assert set(manifest(out)) == {a, b, d}
    assert (out / f"grizzly/north-gate-{a}.jpg").stat().st_mtime_ns == untouched


def test_exported_items_stay_when_pruned_from_the_database(tmp_path, add_items, review, export, engine):
    from monitor.store.tables import ReviewDecision

    (a,) = add_items(1)
    review(a, "approve")
    out = tmp_path / "export"
    export(out)
    with session_scope(engine) as session:
        for row in session.exec(select(ReviewDecision)).all():
            session.delete(row)
        session.flush()
        session.delete(session.get(ReviewItem, a))
    report = export(out)
    assert report.removed == 0 and set(manifest(out)) == {a}
    assert (out / f"grizzly/north-gate-{a}.jpg").is_file()


def test_refuses_a_folder_that_is_not_an_export(tmp_path, export, add_items):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(ExportError, match="not empty"):
        export(out)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]


def test_cli_export_prints_a_summary_and_exits_2_on_a_bad_folder(tmp_path, web_config, add_items, review):
    a, b = add_items(2)
    review(a, "approve")
    review(b, "reject")
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump(web_config.model_dump(mode="json")))
    command = [sys.executable, "-m", "monitor.cli", "dataset", "export"]
    done = subprocess.run([*command, str(tmp_path / "out"), "-c", str(config)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 added" in done.stdout and "grizzly 1" in done.stdout and "none 1" in done.stdout
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    bad = subprocess.run([*command, str(tmp_path / "busy"), "-c", str(config)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
