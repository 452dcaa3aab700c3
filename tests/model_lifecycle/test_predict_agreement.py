"""The bundle predicts what fastai's learn.predict predicts, on every real bear photo.

This is what makes a bundle trustworthy: its stored preprocessing reproduces fastai's
validation transforms (RandomResizedCrop's squash + centre crop, Normalize) and its graph
is the learner's model plus softmax. Also covers the fastai pickle import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from running_monitor import run_monitor

from monitor.model import load_model
from monitor.model.bundle import read_bundle
from monitor.model.classify import classify_files, read_image
from monitor.model.preprocess import PreprocessSpec, resize_centre_crop
from monitor.model.train import import_learner

MIN_TOP1_AGREEMENT = 0.99
MAX_PROBABILITY_DIFF = 0.02


def _learn_predict(learn, paths: list[Path]) -> np.ndarray:
    rows = []
    with learn.no_bar():
        for path in paths:
            _, _, probabilities = learn.predict(path)
            rows.append(probabilities.numpy())
    return np.stack(rows)


def _bundle_predict(model, paths: list[Path]) -> np.ndarray:
    results = classify_files(paths, model)
    assert all(r.error is None for r in results)
    return np.array([[r.prediction.probabilities[label] for label in model.labels] for r in results])


@pytest.fixture(scope="module")
def fastai_probabilities(trained, bear_files) -> np.ndarray:
    return _learn_predict(trained.learner, bear_files)


def test_bundle_agrees_with_learn_predict_on_all_bear_photos(trained, bear_files, fastai_probabilities, tmp_path) -> None:
    model = load_model(str(trained.bundle.directory), cache_dir=tmp_path, runtime="onnx-cpu")
    assert list(model.labels) == [str(v) for v in trained.learner.dls.vocab]
    ours = _bundle_predict(model, bear_files)
    top1 = float(np.mean(ours.argmax(axis=1) == fastai_probabilities.argmax(axis=1)))
    worst = float(np.abs(ours - fastai_probabilities).max())
    print(f"\n{len(bear_files)} photos: top-1 agreement {top1:.4f}, max probability difference {worst:.2e}")
    assert len(bear_files) == 211
    assert top1 >= MIN_TOP1_AGREEMENT
    assert worst <= MAX_PROBABILITY_DIFF


def test_bundle_preprocessing_gives_fastais_exact_validation_pixels(trained, bear_files) -> None:
    """The stored spec reproduces the learner's validation item transforms pixel for pixel."""
    from fastai.vision.all import PILImage

    spec = read_bundle(trained.bundle.directory).preprocess
    pipeline = trained.learner.dls.valid.after_item
    for path in bear_files[::10]:
        fastai_pixels = np.asarray(pipeline(PILImage.create(path))).transpose(1, 2, 0)  # CHW tensor -> HWC
        np.testing.assert_array_equal(resize_centre_crop(read_image(path), spec), fastai_pixels, err_msg=path.name)


@pytest.mark.parametrize("transform, expected", [
    ("RandomResizedCrop(224, min_scale=0.5)", dict(size=224, crop_pct=224 / 256, resize="squash-then-centre-crop")),
    ("Resize(192)", dict(size=192, crop_pct=1.0, resize="centre-square-then-resize")),
    ("Resize(160, method='squish')", dict(size=160, crop_pct=1.0, resize="squash-then-centre-crop")),
])
def test_preprocessing_is_derived_from_the_learners_transforms(transform: str, expected: dict, colour_data: Path) -> None:
    from fastai.vision.all import (  # noqa: F401  (used by eval)
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Normalize,
        RandomResizedCrop,
        RandomSplitter,
        Resize,
        aug_transforms,
        get_image_files,
        imagenet_stats,
        parent_label,
    )

    from monitor.model.train import preprocess_from_dls

    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      splitter=RandomSplitter(seed=1), item_tfms=eval(transform),
                      batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])
    spec = preprocess_from_dls(block.dataloaders(colour_data, bs=4, num_workers=0))
    assert spec == PreprocessSpec(interpolation="bilinear", mean=tuple(imagenet_stats[0]), std=tuple(imagenet_stats[1]),
                                  **expected)


def test_unsupported_validation_transform_is_refused(colour_data: Path) -> None:
    from fastai.vision.all import CategoryBlock, DataBlock, ImageBlock, Resize, aug_transforms, get_image_files, parent_label

    from monitor.model.bundle import ModelUsageError
    from monitor.model.train import preprocess_from_dls

    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      item_tfms=Resize(128), batch_tfms=aug_transforms(size=96))  # resizes validation batches too
    with pytest.raises(ModelUsageError, match="batch transform .* not supported"):
        preprocess_from_dls(block.dataloaders(colour_data, bs=4, num_workers=0))


def test_imported_learner_pickle_agrees_with_learn_predict(learner_pkl, trained, bear_files, fastai_probabilities,
                                                           tmp_path) -> None:
    bundle = import_learner(learner_pkl, tmp_path / "imported", trust=True)
    assert bundle.labels == trained.bundle.labels
    assert bundle.preprocess == trained.bundle.preprocess
    assert bundle.meta["source"] == "fastai learner import" and bundle.architecture == "tf_efficientnet_lite0"
    model = load_model(str(bundle.directory), cache_dir=tmp_path, runtime="onnx-cpu")
    ours = _bundle_predict(model, bear_files)
    assert float(np.mean(ours.argmax(axis=1) == fastai_probabilities.argmax(axis=1))) >= MIN_TOP1_AGREEMENT
    assert float(np.abs(ours - fastai_probabilities).max()) <= MAX_PROBABILITY_DIFF


def test_import_without_trust_refuses_and_explains(learner_pkl, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    done = run_monitor("model", "import", str(learner_pkl), "--out", str(out))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: refusing to load")
    assert "pickle" in done.stderr and "runs any code" in done.stderr and "--trust" in done.stderr
    assert not out.exists()


def test_import_cli_with_trust_writes_a_bundle(learner_pkl, tmp_path: Path) -> None:
    out = tmp_path / "models" / "seed"
    done = run_monitor("model", "import", str(learner_pkl), "--trust", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert read_bundle(out).model_id.startswith("seed@") and "seed@" in done.stdout
    info = run_monitor("model", "info", str(out))
    assert info.returncode == 0 and "fastai learner import" in info.stdout


def test_import_of_a_file_that_is_not_a_learner(tmp_path: Path) -> None:
    fake = tmp_path / "model.pkl"
    fake.write_bytes(b"not a pickle at all")
    done = run_monitor("model", "import", str(fake), "--trust", "--out", str(tmp_path / "m"))
    assert done.returncode == 1 and done.stderr.startswith("error: cannot load the learner")
    assert done.stderr.count("\n") == 1
