"""Folders of stills: EXIF capture times, each image once, bad files skipped."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitor.sources.base import SourceError
from monitor.sources.stills import EXIF_IFD, StillsSource, load_still


def write_image(
    path: Path,
    *,
    size: tuple[int, int] = (64, 48),
    colour: tuple[int, int, int] = (200, 30, 30),
    original: str | None = None,
    offset: str | None = None,
    datetime_tag: str | None = None,
    orientation: int | None = None,
    mtime: datetime | None = None,
) -> Path:
    """An image with optional EXIF DateTimeOriginal / OffsetTimeOriginal / DateTime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    exif = Image.Exif()
    if datetime_tag:
        exif[306] = datetime_tag
    if orientation:
        exif[274] = orientation
    if original or offset:
        sub = exif.get_ifd(EXIF_IFD)
        if original:
            sub[36867] = original
        if offset:
            sub[36881] = offset
    image.save(path, exif=exif.tobytes()) if len(exif) or exif.get_ifd(EXIF_IFD) else image.save(path)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def stills(folder: Path, make_camera, **kwargs) -> StillsSource:
    kwargs.setdefault("settle_seconds", 0.0)
    return StillsSource(make_camera(folder, every=1.0), **kwargs)


def test_exif_time_is_used_when_present(tmp_path, make_camera):
    write_image(tmp_path / "a_original.jpg", original="2024:07:01 06:15:30")
    write_image(tmp_path / "b_offset.jpg", original="2024:07:01 06:15:30", offset="+02:00")
    write_image(tmp_path / "c_datetime.jpg", datetime_tag="2023:12:24 23:59:59")
    file_time = datetime(2022, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    write_image(tmp_path / "d_none.jpg", mtime=file_time)
    write_image(tmp_path / "e_zeros.jpg", original="0000:00:00 00:00:00", mtime=file_time)

    frames = {f.origin: f for f in stills(tmp_path, make_camera).scan()}

    assert frames["a_original.jpg"].captured_at == datetime(2024, 7, 1, 6, 15, 30, tzinfo=timezone.utc)
    assert frames["b_offset.jpg"].captured_at == datetime(2024, 7, 1, 4, 15, 30, tzinfo=timezone.utc)
    assert frames["c_datetime.jpg"].captured_at == datetime(2023, 12, 24, 23, 59, 59, tzinfo=timezone.utc)
    assert frames["d_none.jpg"].captured_at == file_time
    assert frames["e_zeros.jpg"].captured_at == file_time
    assert all(f.captured_at.tzinfo == timezone.utc and f.media_ts is None for f in frames.values())


def test_exif_timezone_applies_to_times_without_offset(tmp_path, make_camera):
    write_image(tmp_path / "local.jpg", original="2024:07:01 06:15:30")
    zone = timezone(timedelta(hours=-7))
    [frame] = stills(tmp_path, make_camera, exif_timezone=zone).scan()
    assert frame.captured_at == datetime(2024, 7, 1, 13, 15, 30, tzinfo=timezone.utc)


def test_each_new_image_once_across_polls(tmp_path, make_camera):
    write_image(tmp_path / "card" / "IMG_0001.JPG")
    write_image(tmp_path / "card" / "IMG_0002.jpeg")
    source = stills(tmp_path, make_camera)

    first = source.poll()
    write_image(tmp_path / "card" / "IMG_0003.png")
    write_image(tmp_path / "later" / "IMG_0004.webp")
    second = source.poll()
    third = source.poll()

    assert [f.origin for f in first] == ["card/IMG_0001.JPG", "card/IMG_0002.jpeg"]
    assert [f.origin for f in second] == ["card/IMG_0003.png", "later/IMG_0004.webp"]
    assert third == []
    assert not source.status.ended


def test_poll_waits_until_a_file_has_settled(tmp_path, make_camera):
    now = [time.time()]
    write_image(tmp_path / "copying.jpg", mtime=datetime.fromtimestamp(now[0], timezone.utc))
    source = StillsSource(make_camera(tmp_path, every=1.0), settle_seconds=2.0, wall_time=lambda: now[0])

    assert source.poll() == []  # maybe still being copied
    now[0] += 2.5
    assert [f.origin for f in source.poll()] == ["copying.jpg"]


def test_poll_hands_out_a_big_dump_in_chunks(tmp_path, make_camera):
    for index in range(5):
        write_image(tmp_path / f"IMG_{index:04d}.jpg")
    source = stills(tmp_path, make_camera, max_per_poll=2)
    assert [len(source.poll()) for _ in range(4)] == [2, 2, 1, 0]


def test_scan_is_sorted_recursive_case_insensitive_and_ignores_hidden(tmp_path, make_camera):
    write_image(tmp_path / "b" / "2.JPG")
    write_image(tmp_path / "a" / "1.Png")
    write_image(tmp_path / "c.WebP")
    (tmp_path / "._c.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    write_image(tmp_path / ".Trashes" / "old.jpg")
    (tmp_path / "notes.txt").write_text("not an image suffix")

    source = stills(tmp_path, make_camera)
    assert [f.origin for f in source.scan()] == ["a/1.Png", "b/2.JPG", "c.WebP"]
    assert source.status.frames_failed == 0 and source.status.ended


def test_a_non_image_is_skipped_with_a_warning_and_counted(tmp_path, make_camera, caplog):
    write_image(tmp_path / "1.jpg")
    (tmp_path / "2.jpg").write_text("this is a text file with a .jpg name\n")
    (tmp_path / "3.jpg").write_bytes(write_image(tmp_path / "tmp.jpg").read_bytes()[:200])  # truncated JPEG
    (tmp_path / "tmp.jpg").unlink()
    write_image(tmp_path / "4.jpg")
    source = stills(tmp_path, make_camera)

    with caplog.at_level(logging.WARNING):
        frames = list(source.scan())

    assert [f.origin for f in frames] == ["1.jpg", "4.jpg"]
    assert source.status.frames_failed == 2
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 2 and "2.jpg" in skipped[0] and "\n" not in skipped[0]


def test_empty_folder_yields_nothing_and_says_why(tmp_path, make_camera, caplog):
    source = stills(tmp_path, make_camera)
    with caplog.at_level(logging.WARNING):
        assert list(source.scan()) == []
    assert "holds no images" in source.status.last_error
    assert "holds no images" in caplog.text
    assert source.poll() == []


def test_missing_folder_raises_one_line(tmp_path, make_camera):
    folder = tmp_path / "card"
    folder.mkdir()
    source = stills(folder, make_camera)
    folder.rmdir()
    with pytest.raises(SourceError, match="does not exist") as raised:
        source.scan()
    assert "\n" not in str(raised.value)
    assert source.poll() == [] and not source.status.up


def test_large_images_are_scaled_down_and_turned_upright(tmp_path, make_camera):
    write_image(tmp_path / "wide.jpg", size=(2000, 1000))
    write_image(tmp_path / "rotated.jpg", size=(1600, 1200), orientation=6)  # stored sideways
    frames = {f.origin: f for f in stills(tmp_path, make_camera, max_width=640).scan()}
    assert frames["wide.jpg"].image.shape == (320, 640, 3)
    assert frames["rotated.jpg"].image.shape == (853, 640, 3)
    assert frames["wide.jpg"].image.dtype == np.uint8
    assert frames["wide.jpg"].image[160, 320].astype(int).tolist() == pytest.approx([200, 30, 30], abs=8)


def test_load_still_returns_rgb_for_grey_and_rgba(tmp_path):
    Image.new("L", (40, 30), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (40, 30), (1, 2, 3, 4)).save(tmp_path / "alpha.png")
    for name in ("grey.png", "alpha.png"):
        image, taken = load_still(tmp_path / name, 1280)
        assert image.shape == (30, 40, 3) and taken is None


def test_real_photos_all_decode(data_dir, make_camera):
    folder = data_dir / "bears"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not in the test data")
    source = StillsSource(make_camera(folder, every=1.0), max_width=320, settle_seconds=0.0)
    started = time.monotonic()
    frames = list(source.scan())
    elapsed = time.monotonic() - started
    assert len(frames) + source.status.frames_failed == len(source.list_images()) > 0
    assert source.status.frames_failed == 0
    assert all(f.width <= 320 and f.image.std() > 1 for f in frames)
    assert len({f.origin.split("/")[0] for f in frames}) >= 2  # several class folders
    assert elapsed < 30
