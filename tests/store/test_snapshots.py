"""Snapshot files: atomic writes, refusing paths outside the root, crash clean-up, full disks."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitor.store import SnapshotNotFound, SnapshotStore, StoreError
from monitor.store import snapshots as snapshots_module

REPO = Path(__file__).resolve().parents[2]
CAPTURED = datetime(2026, 3, 1, 23, 30, 15, tzinfo=timezone(timedelta(hours=-7)))  # 2026-03-02 06:30:15 UTC


def gradient(height: int = 120, width: int = 160) -> np.ndarray:
    """A smooth image, so JPEG's loss is small and content can be compared."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1).astype(np.uint8)


def noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_save_writes_a_jpeg_under_site_camera_utc_date(snapshots: SnapshotStore, files_under) -> None:
    image = gradient()
    relative = snapshots.save(image, site_id="north", camera_id="cam-a", captured_at=CAPTURED)

    assert re.fullmatch(r"north/cam-a/2026-03-02/063015-[0-9a-f]{8}\.jpg", relative), relative
    path = snapshots.resolve(relative)
    assert path == (snapshots.root / relative).resolve()
    with Image.open(path) as decoded:
        assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (160, 120)
        pixels = np.asarray(decoded, dtype=np.int16)
    assert np.abs(pixels - image).mean() < 4  # the same picture, not just any JPEG
    assert files_under(snapshots.root) == [path], "nothing but the JPEG is left (no temp file)"


def test_saves_in_the_same_second_get_different_names(snapshots: SnapshotStore) -> None:
    names = {snapshots.save(gradient(8, 8), site_id="s", camera_id="c", captured_at=CAPTURED) for _ in range(20)}
    assert len(names) == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image": np.zeros((8, 8), np.uint8)}, "HxWx3"),
        ({"image": np.zeros((8, 8, 4), np.uint8)}, "HxWx3"),
        ({"image": np.zeros((8, 8, 3), np.float32)}, "HxWx3"),
        ({"site_id": "../etc"}, "site_id"),
        ({"camera_id": "a/b"}, "camera_id"),
        ({"camera_id": ""}, "camera_id"),
        ({"captured_at": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_save_refuses_bad_input(snapshots: SnapshotStore, files_under, kwargs: dict, match: str) -> None:
    arguments = {"image": gradient(8, 8), "site_id": "s", "camera_id": "c", "captured_at": CAPTURED} | kwargs
    image = arguments.pop("image")
    with pytest.raises(ValueError, match=match):
        snapshots.save(image, **arguments)
    assert files_under(snapshots.root) == []


@pytest.mark.parametrize(
    "relative",
    [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "north/../../x",
        "",
        "a\\..\\..\\b",
        "C:/Windows/win.ini",
        "north/.tmp-0123-leftover.jpg",
        "north/x.jpg\x00.png",
    ],
)
def test_resolve_and_delete_refuse_paths_outside_the_root(tmp_path: Path, relative: str) -> None:
    root = tmp_path / "root"
    store = SnapshotStore(root)
    store.save(gradient(8, 8), site_id="north", camera_id="c", captured_at=CAPTURED)
    # The targets exist, so a refusal cannot be mistaken for "file not found".
    (tmp_path / "x").write_text("outside")
    (tmp_path / "b").write_text("outside")
    (root / "north" / ".tmp-0123-leftover.jpg").write_text("temp")

    with pytest.raises(SnapshotNotFound):
        store.resolve(relative)
    with pytest.raises(SnapshotNotFound):
        store.delete(relative)
    assert (tmp_path / "x").exists() and (tmp_path / "b").exists()


@pytest.mark.parametrize("relative", ["../x", "a/../../b", "north/cam/../../../etc/passwd"])
def test_dot_dot_is_refused_by_name_before_touching_the_disk(snapshots: SnapshotStore, relative: str) -> None:
    with pytest.raises(SnapshotNotFound, match=r"contains '\.\.'"):
        snapshots.resolve(relative)


def test_symlinks_that_leave_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = SnapshotStore(root)
    inside = store.save(gradient(8, 8), site_id="north", camera_id="c", captured_at=CAPTURED)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_text("not yours")
    (root / "north" / "evil.jpg").symlink_to(secret)
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "north" / "alias.jpg").symlink_to(root / inside)  # stays inside: allowed

    for relative in ("north/evil.jpg", "linked-dir/secret.jpg"):
        with pytest.raises(SnapshotNotFound, match="outside"):
            store.resolve(relative)
    assert store.resolve("north/alias.jpg") == (root / inside).resolve()

    with pytest.raises(SnapshotNotFound):
        store.delete("linked-dir/secret.jpg")
    assert store.delete("north/evil.jpg") is True  # removes the link itself ...
    assert secret.read_text() == "not yours"  # ... never its target
    assert not (root / "north" / "evil.jpg").is_symlink()


def test_resolve_a_missing_snapshot_is_not_found(snapshots: SnapshotStore) -> None:
    with pytest.raises(SnapshotNotFound, match="no snapshot"):
        snapshots.resolve("north/cam-a/2026-01-01/000000-deadbeef.jpg")


def test_delete_removes_the_file_once(snapshots: SnapshotStore) -> None:
    relative = snapshots.save(gradient(8, 8), site_id="s", camera_id="c", captured_at=CAPTURED)
    assert snapshots.delete(relative) is True
    assert not (snapshots.root / relative).exists()
    assert snapshots.delete(relative) is False
    with pytest.raises(SnapshotNotFound):
        snapshots.resolve(relative)


CRASHING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime, timezone
    from pathlib import Path
    import numpy as np
    from monitor.store.snapshots import SnapshotStore

    # Die the hard way (no cleanup handlers) after the temp file is written, before the rename.
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    SnapshotStore(Path(sys.argv[1])).save(
        np.zeros((32, 32, 3), np.uint8), site_id="s", camera_id="c",
        captured_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    """
)


def test_sweep_temp_removes_what_a_crash_mid_save_left(tmp_path: Path, files_under) -> None:
    root = tmp_path / "snapshots"
    store = SnapshotStore(root)
    kept = store.save(gradient(8, 8), site_id="s", camera_id="c", captured_at=CAPTURED)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashed = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(root)], env=env, cwd=REPO, timeout=60)
    assert crashed.returncode == -9, "the helper process must die by SIGKILL mid-save"
    leftovers = [p for p in files_under(root) if p.name.startswith(snapshots_module.TEMP_PREFIX)]
    assert len(leftovers) == 1, "a crash between write and rename leaves exactly one temp file"

    assert store.sweep_temp() == 0, "a fresh temp file may belong to a save still running"
    assert leftovers[0].exists()
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    assert store.sweep_temp() == 1
    assert files_under(root) == [root / kept], "only the finished snapshot remains"
    assert store.sweep_temp(older_than_s=0) == 0


CRASHING_BATCH = textwrap.dedent(
    """
    import os, signal, sys, threading
    from datetime import datetime, timezone
    from pathlib import Path
    import numpy as np
    from monitor.store import snapshots
    from monitor.store.snapshots import SnapshotRequest, SnapshotStore

    # Die the hard way once every file of the batch is written, before any rename.
    real_write, lock, done = snapshots._write_durably, threading.Lock(), []
    def write_then_die_after_the_last(path, data):
        real_write(path, data)
        with lock:
            done.append(path)
            if len(done) == 6:
                os.kill(os.getpid(), signal.SIGKILL)
    snapshots._write_durably = write_then_die_after_the_last
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    SnapshotStore(Path(sys.argv[1])).save_many(
        [SnapshotRequest(np.zeros((32, 32, 3), np.uint8), "s", f"c{i % 2}", moment) for i in range(6)])
    """
)


def test_a_crash_mid_batch_leaves_only_temp_files_which_the_sweep_removes(tmp_path: Path, files_under) -> None:
    root = tmp_path / "snapshots"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashed = subprocess.run([sys.executable, "-c", CRASHING_BATCH, str(root)], env=env, cwd=REPO, timeout=60)
    assert crashed.returncode == -9, "the helper process must die by SIGKILL mid-batch"
    leftovers = files_under(root)
    assert len(leftovers) == 6
    assert all(p.name.startswith(snapshots_module.TEMP_PREFIX) for p in leftovers), "no file got its final name"
    assert SnapshotStore(root).sweep_temp(older_than_s=0) == 6
    assert files_under(root) == []


def test_save_many_writes_every_still_in_request_order(snapshots: SnapshotStore, files_under) -> None:
    images = [np.full((24, 32, 3), 40 * i, np.uint8) for i in range(5)]
    requests = [snapshots_module.SnapshotRequest(image, "s", f"cam-{i % 2}", CAPTURED) for i, image in enumerate(images)]
    paths = snapshots.save_many(requests)
    assert [p.split("/")[1] for p in paths] == ["cam-0", "cam-1", "cam-0", "cam-1", "cam-0"]
    for path, image in zip(paths, images):
        with Image.open(snapshots.resolve(path)) as decoded:
            assert abs(int(np.asarray(decoded).mean()) - int(image.mean())) <= 2, path
    assert sorted(files_under(snapshots.root)) == sorted(snapshots.root / p for p in paths)
    assert snapshots.save_many([]) == []


def test_save_many_refuses_a_bad_request_before_writing_anything(snapshots: SnapshotStore, files_under) -> None:
    good = snapshots_module.SnapshotRequest(gradient(8, 8), "s", "c", CAPTURED)
    bad = snapshots_module.SnapshotRequest(np.zeros((8, 8), np.uint8), "s", "c", CAPTURED)
    with pytest.raises(ValueError, match="HxWx3"):
        snapshots.save_many([good, bad])
    assert files_under(snapshots.root) == []


def test_a_failure_after_the_renames_removes_the_whole_batch(
    snapshots: SnapshotStore, files_under, monkeypatch: pytest.MonkeyPatch
) -> None:
    def folder_sync_fails(folder):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(snapshots_module, "_fsync_folder", folder_sync_fails)
    requests = [snapshots_module.SnapshotRequest(gradient(8, 8), "s", f"c{i}", CAPTURED) for i in range(3)]
    with pytest.raises(StoreError, match="Input/output error") as caught:
        snapshots.save_many(requests)
    assert "\n" not in str(caught.value)
    assert files_under(snapshots.root) == [], "renamed files are removed with the temporary ones"


def test_sweep_temp_on_a_missing_root_does_nothing(tmp_path: Path) -> None:
    assert SnapshotStore(tmp_path / "never-created").sweep_temp() == 0
    assert not (tmp_path / "never-created").exists()


def test_write_failing_midway_with_enospc_leaves_nothing(
    snapshots: SnapshotStore, files_under, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = []

    def write_then_fill_the_disk(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a partial write first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshots_module.os, "write", write_then_fill_the_disk)
    with pytest.raises(StoreError, match="disk full") as caught:
        snapshots.save(noise(64, 64), site_id="s", camera_id="c", captured_at=CAPTURED)
    monkeypatch.undo()
    assert len(calls) == 2, "the partial write happened, then ENOSPC"
    assert "\n" not in str(caught.value)
    assert files_under(snapshots.root) == [], "no partial JPEG and no temp file"


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 64 KiB tmpfs; needs root (CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_real_full_disk_is_a_one_line_store_error_and_leaves_nothing(tiny_disk: Path, files_under) -> None:
    store = SnapshotStore(tiny_disk / "snapshots")
    small = store.save(gradient(16, 16), site_id="s", camera_id="c", captured_at=CAPTURED)  # fits
    with pytest.raises(StoreError, match="disk full") as caught:
        store.save(noise(480, 640), site_id="s", camera_id="c", captured_at=CAPTURED)  # ~700 KB JPEG
    assert "\n" not in str(caught.value)
    assert files_under(store.root) == [store.root / small]
