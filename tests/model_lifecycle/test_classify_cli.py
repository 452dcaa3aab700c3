"""`monitor classify` end to end, and classify_files (the function the web UI will share).

Real photos, the real built-in model and the session's trained bundle. A bad file gets one
error line and does not stop the others; bad references and configs exit 1 or 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from lifecycle_helpers import make_image
from running_monitor import run_monitor

from monitor.model import load_model
from monitor.model.builtin import MODEL_REF
from monitor.model.classify import FileResult, classify_files, expand_paths, read_image


@pytest.fixture
def config_for(builtin_cache: Path, tmp_path: Path):
    """config_for(**fields) -> path of a YAML config using the session's model cache."""

    def write(**fields) -> Path:
        path = tmp_path / "monitor.yaml"
        path.write_text(yaml.safe_dump({"model_cache": str(builtin_cache), **fields}))
        return path

    return write


def test_classify_prints_label_and_probabilities_per_image(bear_files, config_for) -> None:
    photos = [str(p) for p in bear_files[::40]]
    done = run_monitor("classify", *photos, "-c", str(config_for()))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(photos)
    for line, photo in zip(lines, photos, strict=True):
        path, label, confidence, probabilities = line.split("\t")
        assert path == photo and probabilities.startswith(f"{label} {confidence}")
    assert f"{len(photos)} classified, 0 failed (builtin:imagenet-bears@" in done.stderr


def test_classify_json_matches_classify_files(bear_files, builtin_cache: Path, config_for) -> None:
    photos = bear_files[::30]
    done = run_monitor("classify", *map(str, photos), "--json", "-c", str(config_for()))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    expected = classify_files(photos, load_model(MODEL_REF, cache_dir=builtin_cache))
    assert [r["file"] for r in rows] == [str(p) for p in photos]
    for row, result in zip(rows, expected, strict=True):
        assert row["label"] == result.prediction.label == max(row["probabilities"], key=row["probabilities"].get)
        assert row["model_id"] == result.prediction.model_id
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        for label, p in result.prediction.probabilities.items():
            assert row["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_classify_a_trained_bundle_and_a_folder(trained, bears_dir: Path, tmp_path: Path) -> None:
    done = run_monitor("classify", str(bears_dir / "sloth"), "--model", str(trained.bundle.directory), "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == len(list((bears_dir / "sloth").glob("*.jpg")))
    assert {r["model_id"] for r in rows} == {trained.bundle.model_id}
    assert set(rows[0]["probabilities"]) == set(trained.bundle.labels)


def test_bad_files_get_one_line_each_and_do_not_stop_the_others(bear_files, tmp_path: Path, config_for) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(bear_files[0].read_bytes()[:2000])
    good = [str(bear_files[0]), str(bear_files[-1])]
    done = run_monitor("classify", good[0], str(text), str(truncated), good[1], "-c", str(config_for()))
    assert done.returncode == 1
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == good
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "notes.jpg: not an image" in errors[0] and "cut.jpg: corrupt image" in errors[1]
    assert "Traceback" not in done.stderr


BAD_CLASSIFY = {
    # case: (arguments after the image, exit code, message pattern)
    "missing image": (["--model", MODEL_REF], 2, r"nowhere.jpg: no such file"),
    "unknown model": (["--model", "builtin:bigfoot"], 1, r"unknown built-in model 'builtin:bigfoot'"),
    "not a bundle": (["--model", "{tmp}"], 1, r"is not a model bundle"),
    "unknown runtime": (["--runtime", "tpu"], 2, r"Invalid value for '--runtime'"),
}


@pytest.mark.parametrize("case", BAD_CLASSIFY, ids=list(BAD_CLASSIFY))
def test_bad_classify_arguments(case: str, bear_files, tmp_path: Path, config_for) -> None:
    import re

    args, code, pattern = BAD_CLASSIFY[case]
    image = str(tmp_path / "nowhere.jpg") if case == "missing image" else str(bear_files[0])
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = run_monitor("classify", image, *args, "-c", str(config_for()))
    assert done.returncode == code, done.stderr
    assert re.search(pattern, done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_corrupt_bundle_is_one_line_and_exit_1(bundle_copy: Path, bear_files) -> None:
    (bundle_copy / "model.onnx").write_bytes(b"truncated")
    done = run_monitor("classify", str(bear_files[0]), "--model", str(bundle_copy))
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "does not match the sha256" in done.stderr


def test_bundle_that_cannot_alert_on_the_configs_labels_exits_2(trained, bear_files, config_for) -> None:
    config = config_for(model=str(trained.bundle.directory), alert_labels=["wolf", "lynx"])
    done = run_monitor("classify", str(bear_files[0]), "-c", str(config))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "none of the config's alert_labels (wolf, lynx)" in done.stderr


def test_classify_files_reads_paths_bytes_and_keeps_order(builtin_cache: Path, bear_files, tmp_path: Path) -> None:
    model = load_model(MODEL_REF, cache_dir=builtin_cache)
    png = make_image(tmp_path / "flat.png", (90, 140, 60), seed=3)
    paths = [bear_files[0], tmp_path / "missing.jpg", png, bear_files[1]]
    results = classify_files(paths, model, batch_size=2)
    assert [r.path for r in results] == [str(p) for p in paths]
    assert results[1] == FileResult(str(paths[1]), error=f"{paths[1]}: no such file")
    assert all(r.prediction is not None for i, r in enumerate(results) if i != 1)
    from_bytes = read_image(bear_files[0].read_bytes())
    np.testing.assert_array_equal(from_bytes, read_image(bear_files[0]))
    assert expand_paths([bear_files[0].parent])[:1] == sorted(bear_files[0].parent.glob("*.jpg"))[:1]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "portrait.jpg"
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(path, exif=exif)
    assert read_image(path).shape == (40, 20, 3)
