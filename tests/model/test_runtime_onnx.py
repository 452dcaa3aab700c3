"""The ONNX Runtime classifier and the shared preprocessing, on the real built-in graph."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from monitor.model import ModelError
from monitor.model.builtin import CACHE_SUBDIR, LABELS, ONNX_FILE, PREPROCESS
from monitor.model.preprocess import PreprocessSpec, normalise, preprocess_batch, resize_centre_crop
from monitor.model.runtime_onnx import OnnxClassifier
from monitor.types import Prediction

# --- preprocessing ------------------------------------------------------------------


def test_preprocess_makes_a_normalised_float32_nchw_batch(synthetic_images) -> None:
    batch = preprocess_batch(synthetic_images, PREPROCESS)
    assert batch.shape == (len(synthetic_images), 3, 224, 224)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch.min() >= -1.0 and batch.max() <= 1.0


def test_preprocess_of_an_empty_batch() -> None:
    assert preprocess_batch([], PREPROCESS).shape == (0, 3, 224, 224)


def test_normalisation_is_per_channel_mean_and_std() -> None:
    spec = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    crops = np.empty((1, 224, 224, 3), dtype=np.uint8)
    crops[...] = (10, 128, 250)
    out = normalise(crops, spec)
    expected = (np.array([10, 128, 250]) / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(out[0, :, 100, 100], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[0].reshape(3, -1).std(axis=1), 0.0, atol=1e-6)


def test_centre_crop_keeps_the_middle_of_the_short_side() -> None:
    # 100 x 400: the crop is the centred 87.5 x 87.5 square; the red block is 100 wide
    # and centred, the rest is green, so a correct crop is all red, an off-centre one is not.
    image = np.zeros((100, 400, 3), dtype=np.uint8)
    image[...] = (0, 255, 0)
    image[:, 150:250] = (255, 0, 0)
    crop = resize_centre_crop(image, PREPROCESS)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    red = (crop[..., 0] > 200) & (crop[..., 1] < 50)
    assert red.mean() > 0.99


def test_crop_pct_one_keeps_the_whole_short_side() -> None:
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    image[:3] = 255  # a white band at the top: cut by crop_pct 0.875 (kept rows 6.25..93.75), kept by 1.0
    assert resize_centre_crop(image, PREPROCESS)[0].max() == 0
    assert resize_centre_crop(image, PreprocessSpec(crop_pct=1.0))[0].min() > 200


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), dtype=np.uint8),  # grey
        np.zeros((32, 32, 4), dtype=np.uint8),  # RGBA
        np.zeros((32, 32, 3), dtype=np.float32),  # not uint8
        np.zeros((0, 32, 3), dtype=np.uint8),  # empty
        [[1, 2, 3]],  # not an array
    ],
    ids=["grey", "rgba", "float", "empty", "list"],
)
def test_preprocess_rejects_what_is_not_an_rgb_uint8_image(bad) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess_batch([bad], PREPROCESS)


def test_spec_round_trips_through_its_dict() -> None:
    assert PreprocessSpec.from_dict(PREPROCESS.to_dict()) == PREPROCESS
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({**PREPROCESS.to_dict(), "resize": "squash"})


# --- the classifier -----------------------------------------------------------------


def test_empty_batch_gives_no_predictions(classifier) -> None:
    assert classifier.predict_batch([]) == []
    assert classifier.predict_proba([]).shape == (0, len(LABELS))


def test_predictions_are_valid(classifier, mixed_images) -> None:
    predictions = classifier.predict_batch(mixed_images)
    assert len(predictions) == len(mixed_images)
    for prediction in predictions:
        assert isinstance(prediction, Prediction)
        assert tuple(prediction.probabilities) == LABELS
        assert prediction.model_id == classifier.model_id
        assert prediction.confidence == max(prediction.probabilities.values())


def test_batch_results_equal_one_by_one_results(classifier, mixed_images) -> None:
    batched = classifier.predict_batch(mixed_images)
    single = [classifier.predict(image) for image in mixed_images]
    assert [p.label for p in batched] == [p.label for p in single]
    np.testing.assert_allclose(
        [list(p.probabilities.values()) for p in batched],
        [list(p.probabilities.values()) for p in single],
        rtol=0,
        atol=1e-5,
    )


def test_concurrent_callers_get_the_same_answers(classifier, mixed_images) -> None:
    expected = classifier.predict_proba(mixed_images)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(2):
                results.append(classifier.predict_proba(mixed_images))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 6
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


def test_wrong_image_is_a_value_error_not_a_crash(classifier) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        classifier.predict_batch([np.zeros((8, 8), dtype=np.uint8)])


@pytest.mark.parametrize(
    "labels, spec",
    [(("bear", "none"), PREPROCESS), (LABELS, PreprocessSpec(size=160))],
    ids=["label-count", "input-size"],
)
def test_graph_that_disagrees_with_its_description_is_refused(model_cache: Path, labels, spec) -> None:
    with pytest.raises(ModelError, match="does not match"):
        OnnxClassifier(model_cache / CACHE_SUBDIR / ONNX_FILE, labels=labels, preprocess=spec, model_id="x@1")


def test_unreadable_graph_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf graph")
    with pytest.raises(ModelError, match="cannot open ONNX model"):
        OnnxClassifier(path, labels=LABELS, preprocess=PREPROCESS, model_id="x@1")


def test_wrongly_shaped_batch_is_a_model_error(classifier) -> None:
    with pytest.raises(ModelError, match="ONNX Runtime failed"):
        classifier.run_preprocessed(np.zeros((1, 3, 100, 100), dtype=np.float32))
