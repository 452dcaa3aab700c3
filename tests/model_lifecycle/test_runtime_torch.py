"""The GPU runtime (a bundle's ONNX graph run by PyTorch) and the runtime choice.

No GPU here, so the GPU code path runs on the CPU: the same graph conversion, device
transfer and on-device normalisation, in float32 (``torch-cpu``) and in float16 (what
CUDA uses). Both must match ONNX Runtime on the same bundles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from monitor.model import load_model
from monitor.model.base import ModelError
from monitor.model.builtin import MODEL_REF
from monitor.model.bundle import ModelUsageError, read_bundle, write_bundle
from monitor.model.classify import read_image
from monitor.model.preprocess import PreprocessSpec
from monitor.model.runtime_onnx import OnnxClassifier
from monitor.model.runtime_torch import (
    TorchClassifier,
    UnsupportedGraph,
    build_torch_module,
    choose_runtime,
    cuda_device_present,
    open_runtime,
)

no_gpu = pytest.mark.skipif(cuda_device_present(), reason="this machine has a GPU; the test is about machines without")


@pytest.fixture(scope="module")
def photos(bear_files) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [read_image(p) for p in bear_files[::15]] + [rng.integers(0, 256, (333, 500, 3), dtype=np.uint8),
                                                         np.zeros((1, 1, 3), dtype=np.uint8)]


@pytest.fixture(params=["trained", "builtin"])
def bundle_dir(request, trained, builtin_cache: Path) -> Path:
    from monitor.model.builtin import CACHE_SUBDIR

    return trained.bundle.directory if request.param == "trained" else builtin_cache / CACHE_SUBDIR


def test_torch_runtime_matches_onnx_runtime_in_float32(bundle_dir: Path, photos, tmp_path: Path) -> None:
    onnx_model = load_model(str(bundle_dir), cache_dir=tmp_path, runtime="onnx-cpu")
    torch_model = load_model(str(bundle_dir), cache_dir=tmp_path, runtime="torch-cpu")
    assert isinstance(torch_model, TorchClassifier) and not torch_model.half
    assert torch_model.model_id == onnx_model.model_id and torch_model.labels == onnx_model.labels
    np.testing.assert_allclose(torch_model.predict_proba(photos), onnx_model.predict_proba(photos), atol=1e-4, rtol=0)


def test_float16_path_agrees_with_onnx_runtime(bundle_dir: Path, photos) -> None:
    """What CUDA runs (float16 weights and activations, float32 softmax), run on the CPU."""
    bundle = read_bundle(bundle_dir)
    kwargs = {"labels": bundle.labels, "preprocess": bundle.preprocess, "model_id": bundle.model_id}
    half = TorchClassifier(bundle.onnx_path, device="cpu", half=True, **kwargs)
    reference = OnnxClassifier(bundle.onnx_path, **kwargs).predict_proba(photos)
    ours = half.predict_proba(photos)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-3)
    assert np.abs(ours - reference).max() <= 0.02
    assert np.mean(ours.argmax(axis=1) == reference.argmax(axis=1)) >= 0.9
    predictions = half.predict_batch(photos)
    assert [p.label for p in predictions] == [bundle.labels[i] for i in ours.argmax(axis=1)]


def test_converter_runs_common_cnn_operators_like_onnx_runtime(tmp_path: Path) -> None:
    """Convolutions with odd padding and groups, pooling, BatchNorm, activations, both exporters."""
    import torch
    from torch import nn

    class Zoo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8),
                                      nn.Hardswish())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                                       nn.SiLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(8, 16, 1),
                                       nn.ReLU6(), nn.AvgPool2d(2), nn.Sigmoid())
            self.head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(32), nn.Dropout(0.5), nn.Linear(32, 5))

        def forward(self, x):
            x = self.block(self.stem(x))
            pooled = torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)
            return torch.softmax(self.head(pooled), dim=1)

    torch.manual_seed(0)
    net = Zoo().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (net.stem[2], net.block[1], net.head[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    batch = torch.rand(3, 3, 32, 32) * 2 - 1
    for dynamo in (True, False):
        path = tmp_path / f"zoo-{dynamo}.onnx"
        kwargs = {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)} if dynamo else \
            {"dynamo": False, "dynamic_axes": {"input": {0: "batch"}}}
        torch.onnx.export(net, (torch.zeros(2, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["probabilities"], **kwargs)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (expected,) = session.run(None, {"input": batch.numpy()})
        with torch.no_grad():
            actual = build_torch_module(path)(batch).numpy()
        np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=f"dynamo={dynamo}")


def _hardmax_bundle(tmp_path: Path) -> Path:
    """A valid bundle whose graph uses an operator the torch converter does not implement."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Hardmax", ["flat"], ["probabilities"], axis=1)],
        "hardmax", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    source = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), source)
    write_bundle(tmp_path / "hardmax", onnx_source=source, labels=["r", "g", "b"], architecture="toy",
                 preprocess=PreprocessSpec(size=16, crop_pct=1.0))
    return tmp_path / "hardmax"


def test_unsupported_operator_is_named_and_auto_falls_back_to_onnx(tmp_path: Path, monkeypatch, caplog) -> None:
    directory = _hardmax_bundle(tmp_path)
    with pytest.raises(UnsupportedGraph, match=r"unsupported Hardmax; use --runtime onnx-cpu"):
        load_model(str(directory), cache_dir=tmp_path, runtime="torch-cpu")
    # Pretend auto picked the GPU path: a graph it cannot run must still load, on ONNX Runtime.
    from monitor.model import runtime_torch

    monkeypatch.setattr(runtime_torch, "choose_runtime", lambda name=None: "torch-cpu" if name == "auto" else name)
    model = open_runtime(read_bundle(directory), runtime="auto")
    assert isinstance(model, OnnxClassifier)
    assert "using ONNX Runtime on the CPU" in caplog.text
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert model.predict(red).label == "r"


@no_gpu
def test_auto_picks_onnx_runtime_without_importing_torch(builtin_cache: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from monitor.model import load_model
        from monitor.model.runtime_torch import choose_runtime
        model = load_model({MODEL_REF!r}, cache_dir=Path({str(builtin_cache)!r}))
        print(json.dumps({{"type": type(model).__name__, "choice": choose_runtime(), "torch": "torch" in sys.modules}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "MONITOR_RUNTIME": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"type": "OnnxClassifier", "choice": "onnx-cpu", "torch": False}


def test_environment_variable_overrides_the_choice(builtin_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("MONITOR_RUNTIME", "torch-cpu")
    assert isinstance(load_model(MODEL_REF, cache_dir=builtin_cache), TorchClassifier)
    monkeypatch.setenv("MONITOR_RUNTIME", "onnx-cpu")
    assert isinstance(load_model(MODEL_REF, cache_dir=builtin_cache), OnnxClassifier)
    # an explicit argument wins over the environment
    assert isinstance(load_model(MODEL_REF, cache_dir=builtin_cache, runtime="torch-cpu"), TorchClassifier)


def test_unknown_runtime_is_a_usage_error() -> None:
    with pytest.raises(ModelUsageError, match=r"unknown runtime 'tpu'; use one of: auto, onnx-cpu"):
        choose_runtime("tpu")


@no_gpu
def test_asking_for_cuda_without_a_gpu_names_the_fix(builtin_cache: Path) -> None:
    with pytest.raises(ModelError, match=r"torch-cuda needs a CUDA GPU .*--runtime onnx-cpu"):
        load_model(MODEL_REF, cache_dir=builtin_cache, runtime="torch-cuda")


@pytest.mark.skipif(not cuda_device_present(), reason="needs an NVIDIA GPU")
def test_auto_picks_the_gpu_in_float16_when_there_is_one(builtin_cache: Path, photos) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("an NVIDIA driver is loaded but torch cannot use CUDA")
    model = load_model(MODEL_REF, cache_dir=builtin_cache)
    assert isinstance(model, TorchClassifier) and model.device.type == "cuda" and model.half
    reference = load_model(MODEL_REF, cache_dir=builtin_cache, runtime="onnx-cpu").predict_proba(photos)
    assert np.abs(model.predict_proba(photos) - reference).max() <= 0.02
