"""Model bundles: loading checks everything and never unpickles; damage is one clear line.

Uses the session's trained bundle (copied before it is damaged) and the built-in model's
cache folder, which is a bundle too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from monitor.model import ModelError, load_model
from monitor.model.bundle import (
    BUNDLE_FILE,
    ONNX_FILE,
    LabelMismatchError,
    ModelUsageError,
    check_alert_labels,
    read_bundle,
    write_bundle,
)
from monitor.model.classify import read_image
from monitor.model.runtime_onnx import OnnxClassifier


def _edit(**changes):
    def edit(directory: Path) -> None:
        meta = json.loads((directory / BUNDLE_FILE).read_text())
        for key, value in changes.items():
            if value is _DROP:
                meta.pop(key)
            else:
                meta[key] = value
        (directory / BUNDLE_FILE).write_text(json.dumps(meta))

    return edit


_DROP = object()


def _flip_onnx(directory: Path) -> None:
    data = bytearray((directory / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / ONNX_FILE).write_bytes(bytes(data))


def _swap_graph(directory: Path) -> None:
    """Replace the graph by another valid one whose output has 3 columns, fixing the sha256."""
    import onnx
    from onnx import TensorProto, helper

    from monitor.model.bundle import sha256_file

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Softmax", ["flat"], ["probabilities"], axis=1)],
        "three", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), directory / ONNX_FILE)
    _edit(onnx_sha256=sha256_file(directory / ONNX_FILE))(directory)


CORRUPT_BUNDLES = {
    # case: (damage, pattern in the one-line error)
    "bundle.json missing": (lambda d: (d / BUNDLE_FILE).unlink(), r"is not a model bundle \(no bundle.json\)"),
    "bundle.json garbage": (lambda d: (d / BUNDLE_FILE).write_bytes(b'{"labels": [\x00'), r"unreadable .*corrupt"),
    "bundle.json a list": (lambda d: (d / BUNDLE_FILE).write_text("[1, 2]"), r"not a JSON object"),
    "labels missing": (_edit(labels=_DROP), r"no valid 'labels'"),
    "one label": (_edit(labels=["bear"]), r"labels must be 2 or more distinct"),
    "repeated label": (_edit(labels=["a", "a", "b", "c", "d", "e", "f"]), r"labels must be 2 or more distinct"),
    "newer format": (_edit(bundle_format=99), r"newer than this version reads"),
    "unknown resize policy": (_edit(preprocess={"size": 128, "crop_pct": 1.0, "interpolation": "bilinear",
                                                "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "stretch"}),
                              r"invalid 'preprocess'"),
    "input_size disagrees": (_edit(input_size=224), r"input_size 224 but preprocess size 128"),
    "graph outside the bundle": (_edit(onnx_file="../../etc/model.onnx"), r"not a plain file name"),
    "onnx missing": (lambda d: (d / ONNX_FILE).unlink(), r"unreadable"),
    "onnx bytes flipped": (_flip_onnx, r"does not match the sha256"),
    "labels disagree with the graph": (_swap_graph, r"does not match"),
}


@pytest.mark.parametrize("case", CORRUPT_BUNDLES, ids=list(CORRUPT_BUNDLES))
def test_corrupt_bundle_is_a_one_line_model_error(case: str, bundle_copy: Path, tmp_path: Path) -> None:
    import re

    damage, pattern = CORRUPT_BUNDLES[case]
    damage(bundle_copy)
    with pytest.raises(ModelError) as info:
        load_model(str(bundle_copy), cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_bundle_loads_from_its_folder_json_or_graph_path(trained, tmp_path: Path, bear_files) -> None:
    directory = trained.bundle.directory
    image = read_image(bear_files[0])
    expected = None
    for ref in (directory, directory / BUNDLE_FILE, directory / ONNX_FILE):
        model = load_model(str(ref), cache_dir=tmp_path, runtime="onnx-cpu")
        assert isinstance(model, OnnxClassifier) and model.model_id == trained.bundle.model_id
        probabilities = model.predict_proba([image])
        expected = probabilities if expected is None else expected
        np.testing.assert_array_equal(probabilities, expected)


def test_a_path_that_is_not_a_bundle_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ModelError, match=r"not a model bundle .*monitor train"):
        load_model(str(tmp_path / "stuff"), cache_dir=tmp_path)
    with pytest.raises(ModelError, match=r"unknown model .*builtin:imagenet-bears"):
        load_model(str(tmp_path / "nowhere"), cache_dir=tmp_path)


def test_loading_a_bundle_never_unpickles_nor_imports_torch(trained, bear_files) -> None:
    """A fresh process with pickle disabled loads and runs the bundle."""
    script = textwrap.dedent(f"""
        import json, pickle, sys
        def refuse(*args, **kwargs):
            raise AssertionError("a bundle load tried to unpickle")
        pickle.load = pickle.loads = refuse
        pickle.Unpickler = refuse
        from pathlib import Path
        from monitor.model import load_model
        from monitor.model.classify import classify_files
        model = load_model({str(trained.bundle.directory)!r}, cache_dir=Path("."))
        [result] = classify_files([{str(bear_files[0])!r}], model)
        print(json.dumps({{"label": result.prediction.label, "type": type(model).__name__,
                          "torch": "torch" in sys.modules, "fastai": "fastai" in sys.modules}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["type"] == "OnnxClassifier"  # no GPU here: see test_runtime_torch for the GPU choice
    assert result["torch"] is False and result["fastai"] is False
    assert result["label"] in trained.bundle.labels


def test_alert_labels_the_model_cannot_predict(trained, tmp_path: Path, caplog) -> None:
    labels = trained.bundle.labels
    with pytest.raises(LabelMismatchError, match=r"none of the config's alert_labels \(wolf, lynx\)"):
        load_model(str(trained.bundle.directory), cache_dir=tmp_path, alert_labels=["wolf", "lynx"])
    assert check_alert_labels(labels, ["grizzly", "wolf"]) == ["wolf"]
    assert "wolf" in caplog.text
    assert check_alert_labels(labels, ["grizzly", "black"]) == []


def test_write_bundle_replaces_a_bundle_but_nothing_else(trained, tmp_path: Path) -> None:
    source = trained.bundle
    out = tmp_path / "models" / "bears"

    def write(**extra):
        return write_bundle(out, onnx_source=source.onnx_path, labels=source.labels, architecture="efficientnet_lite0",
                            preprocess=source.preprocess, **extra)

    first = write(note="first")
    (out / "stale.txt").write_text("left by the first bundle")
    second = write(note="second")
    assert second.meta["note"] == "second" and not (out / "stale.txt").exists()
    assert first.model_id == second.model_id  # same graph bytes, same id
    assert [p.name for p in out.parent.iterdir()] == ["bears"]  # no staging or old folders left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    with pytest.raises(ModelUsageError, match="not a model bundle"):
        write_bundle(other, onnx_source=source.onnx_path, labels=source.labels, architecture="x",
                     preprocess=source.preprocess)
    assert (other / "a.txt").read_text() == "mine"


def test_builtin_cache_is_a_bundle(builtin_cache: Path, tmp_path: Path, bear_files) -> None:
    from monitor.model.builtin import CACHE_SUBDIR, LABELS, MODEL_REF

    bundle = read_bundle(builtin_cache / CACHE_SUBDIR)
    assert bundle.labels == LABELS and bundle.meta["source"] == "builtin"
    by_path = load_model(str(builtin_cache / CACHE_SUBDIR), cache_dir=tmp_path)
    by_ref = load_model(MODEL_REF, cache_dir=builtin_cache)
    assert by_path.model_id == by_ref.model_id
    images = [read_image(p) for p in bear_files[:3]]
    np.testing.assert_array_equal(by_path.predict_proba(images), by_ref.predict_proba(images))
