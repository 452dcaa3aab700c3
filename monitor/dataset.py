"""Reviewed stills as a training set: one folder per class plus a manifest.

Responsible for `monitor dataset export OUT_DIR`, the feedback loop from the review queue
into `monitor train` (fastai's ImageClassifierCleaner, done properly). The class of a
reviewed still is:

    approved    -> the label the model predicted (the person agreed)
    relabelled  -> the label the person gave
    rejected    -> ``none`` (a false alarm: no bear)

Files are named ``<site>-<camera>-<item id>.jpg`` under ``OUT_DIR/<class>/`` and listed
in ``OUT_DIR/manifest.csv``. Exporting again is incremental: new decisions are copied,
items whose class changed since (a later relabel) are moved, items whose decision was
undone are removed, and everything else is left alone. Items pruned from the database
after they were exported stay in the export: they are still good training data.
Every file and the manifest are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, col, select

from monitor.store import SnapshotNotFound, SnapshotStore
from monitor.store.tables import ReviewItem, ReviewStatus
from monitor.types import NONE_LABEL

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
FIELDS = ("item_id", "file", "class", "status", "predicted", "confidence", "site", "camera", "captured_at",
          "reviewed_at", "model_id")
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BATCH = 1000


class ExportError(ValueError):
    """The output folder cannot be used for an export; the message names the fix."""


@dataclass
class ExportReport:
    """What an export did."""

    added: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)
    classes: Counter[str] = field(default_factory=Counter)


def class_for(item: ReviewItem) -> str | None:
    """The training class of a reviewed item, or None while it is pending."""
    if item.status == ReviewStatus.APPROVED.value:
        return item.label
    if item.status == ReviewStatus.RELABELLED.value:
        return item.review_label
    if item.status == ReviewStatus.REJECTED.value:
        return NONE_LABEL
    return None


def export_dataset(out_dir: Path, *, session: Session, snapshots: SnapshotStore) -> ExportReport:
    """Write (or bring up to date) the training folders for every reviewed item.

    Args:
        out_dir: the export folder; created when missing. An existing folder must be
            empty or hold an earlier export (a ``manifest.csv``).
        session: an open session (only read).
        snapshots: where the stills are.

    Returns:
        Counts of what was added, moved, removed and left alone, and per-class totals.

    Raises:
        ExportError: ``out_dir`` is a file, or a non-empty folder that is not an export.
        OSError: a file could not be written (full disk, permissions).
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; give a folder to export into")
    if out_dir.is_dir() and not manifest_path.is_file() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty and holds no {MANIFEST}; give an empty folder or an earlier export")
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(manifest_path)
    rows: dict[int, dict[str, str]] = {}
    report = ExportReport()

    for item in _reviewed_items(session):
        item_id = int(item.id or 0)
        label = class_for(item)
        if label is None or not _CLASS_NAME.match(label):
            report.skipped.append(f"item {item_id}: class {label!r} cannot be a folder name")
            continue
        relative = f"{label}/{item.site_id}-{item.camera_id}-{item_id}.jpg"
        target = out_dir / relative
        old = previous.get(item_id)
        if old is not None and old["file"] == relative and target.is_file():
            report.unchanged += 1
        elif old is not None and (out_dir / old["file"]).is_file() and _inside(out_dir, old["file"]):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out_dir / old["file"], target)
            report.moved += 1
        else:
            try:
                source = snapshots.resolve(item.snapshot)
            except SnapshotNotFound:
                report.skipped.append(f"item {item_id}: its snapshot is missing")
                continue
            _copy_atomically(source, target)
            report.added += 1
        rows[item_id] = _row(item, relative, label)
        report.classes[label] += 1

    # Exported before but not reviewed now: undone (still in the database) or pruned.
    gone = [item_id for item_id in previous if item_id not in rows]
    still_there = _existing_ids(session, gone)
    for item_id in gone:
        old = previous[item_id]
        if item_id in still_there:
            if _inside(out_dir, old["file"]):
                (out_dir / old["file"]).unlink(missing_ok=True)
            report.removed += 1
        else:
            rows[item_id] = old
            report.classes[old["class"]] += 1
    _write_manifest(manifest_path, [rows[i] for i in sorted(rows)])
    return report


def _reviewed_items(session: Session) -> Iterator[ReviewItem]:
    """Reviewed items by id, a batch at a time (keyset), so a large queue is never all in memory."""
    last = 0
    while True:
        statement = (
            select(ReviewItem)
            .where(col(ReviewItem.status) != ReviewStatus.PENDING.value, col(ReviewItem.id) > last)
            .order_by(col(ReviewItem.id))
            .limit(BATCH)
        )
        batch = list(session.exec(statement).all())
        if not batch:
            return
        yield from batch
        last = int(batch[-1].id or 0)
        session.expunge_all()


def _existing_ids(session: Session, ids: list[int]) -> set[int]:
    found: set[int] = set()
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        found.update(int(i) for i in session.exec(select(ReviewItem.id).where(col(ReviewItem.id).in_(chunk))).all())
    return found


def _row(item: ReviewItem, relative: str, label: str) -> dict[str, str]:
    return {
        "item_id": str(item.id), "file": relative, "class": label, "status": item.status,
        "predicted": item.label, "confidence": f"{item.confidence:.4f}", "site": item.site_id,
        "camera": item.camera_id, "captured_at": item.captured_at.isoformat(),
        "reviewed_at": item.reviewed_at.isoformat() if item.reviewed_at else "", "model_id": item.model_id,
    }


def _inside(root: Path, relative: str) -> bool:
    """Whether a manifest path stays inside the export (a hand-edited manifest must not
    make us move or delete files elsewhere)."""
    path = Path(relative)
    return not path.is_absolute() and ".." not in path.parts and len(path.parts) == 2


def _read_manifest(path: Path) -> dict[int, dict[str, str]]:
    if not path.is_file():
        return {}
    rows: dict[int, dict[str, str]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                rows[int(row["item_id"])] = {name: row.get(name) or "" for name in FIELDS}
            except (KeyError, ValueError):
                raise ExportError(f"{path} is not a manifest written by `monitor dataset export`") from None
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    temp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    temp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temp, path)


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
    try:
        shutil.copyfile(source, temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
