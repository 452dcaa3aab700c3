"""Pick the runtime for a model bundle, and run a bundle's ONNX graph with PyTorch (GPU path).

Runtimes (``runtime=`` of :func:`open_runtime`, ``--runtime`` on the CLI, or the
``MONITOR_RUNTIME`` environment variable when neither is given):

* ``auto`` (default): ``torch-cuda`` when an NVIDIA GPU is present and
  ``torch.cuda.is_available()``, else ``onnx-cpu``. The GPU probe looks at the NVIDIA driver
  files first, so on a machine without a GPU torch is never imported (loading stays ~0.3 s);
* ``onnx-cpu``: ONNX Runtime on the CPU (:class:`~monitor.model.runtime_onnx.OnnxClassifier`),
  the fastest CPU path;
* ``torch-cuda``: :class:`TorchClassifier` in float16 on the GPU;
* ``torch-cpu``: :class:`TorchClassifier` in float32 on the CPU - slower than ONNX Runtime,
  but it runs the very code of the GPU path, so machines without a GPU test it.

The GPU path runs *the same bundle*: :func:`build_torch_module` turns the ONNX graph into a
``torch.nn.Module`` that executes its nodes with torch operators (the operator set CNN
classifiers export to: convolutions, pooling, BatchNorm, Gemm/MatMul, activations,
element-wise arithmetic, reshapes, softmax). No pickle and no Python code come from the
bundle; a graph with an operator outside that set is refused when it is loaded (and
``auto`` then falls back to ONNX Runtime on the CPU). Softmax runs in float32 even in
float16 mode, so probabilities keep full precision.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.model.base import Classifier, ModelError, ProbabilityClassifier
from monitor.model.bundle import Bundle, ModelUsageError
from monitor.model.preprocess import PreprocessSpec, resize_centre_crop

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx-cpu", "torch-cpu", "torch-cuda")
RUNTIME_ENV = "MONITOR_RUNTIME"


def cuda_device_present() -> bool:
    """Whether an NVIDIA GPU driver is loaded, judged from files only (no torch import)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
    except OSError:
        pass
    return Path("/dev/nvidia0").exists()


def choose_runtime(runtime: str | None = None) -> str:
    """Resolve ``auto`` (or nothing) to a concrete runtime name.

    Args:
        runtime: one of ``RUNTIMES``; None reads ``$MONITOR_RUNTIME``, default ``auto``.

    Returns:
        ``onnx-cpu``, ``torch-cpu`` or ``torch-cuda``.

    Raises:
        ModelUsageError: an unknown runtime name.
    """
    name = (runtime or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if name not in RUNTIMES:
        raise ModelUsageError(f"unknown runtime {name!r}; use one of: {', '.join(RUNTIMES)}")
    if name != "auto":
        return name
    if cuda_device_present():
        try:
            import torch
        except ImportError:
            return "onnx-cpu"
        if torch.cuda.is_available():
            return "torch-cuda"
    return "onnx-cpu"


def open_runtime(bundle: Bundle, *, runtime: str | None = None) -> Classifier:
    """Open a checked bundle on the chosen runtime.

    Args:
        bundle: from :func:`monitor.model.bundle.read_bundle`.
        runtime: see :func:`choose_runtime`.

    Returns:
        An :class:`~monitor.model.runtime_onnx.OnnxClassifier` or a :class:`TorchClassifier`.

    Raises:
        ModelUsageError: an unknown runtime name.
        ModelError: the runtime cannot open the graph (for ``torch-cuda``: no usable GPU).
    """
    requested = (runtime or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    chosen = choose_runtime(requested)
    if chosen == "onnx-cpu":
        from monitor.model.runtime_onnx import OnnxClassifier

        return OnnxClassifier(bundle.onnx_path, labels=bundle.labels, preprocess=bundle.preprocess, model_id=bundle.model_id)
    try:
        return TorchClassifier(
            bundle.onnx_path,
            labels=bundle.labels,
            preprocess=bundle.preprocess,
            model_id=bundle.model_id,
            device="cuda" if chosen == "torch-cuda" else "cpu",
        )
    except ModelError as exc:
        if requested != "auto":
            raise
        log.warning("the GPU runtime cannot run %s (%s); using ONNX Runtime on the CPU", bundle.model_id, exc)
        return open_runtime(bundle, runtime="onnx-cpu")


# --- ONNX graph -> torch module --------------------------------------------------------------


class UnsupportedGraph(ModelError):
    """The graph uses an operator or a form of one that :func:`build_torch_module` does not run."""


def _torch_pads(onnx_pads: Sequence[int]) -> list[int]:
    """ONNX pads (all begins, then all ends) -> torch F.pad order (last dim first), trimmed."""
    half = len(onnx_pads) // 2
    pads: list[int] = []
    for dim in reversed(range(half)):
        pads += [int(onnx_pads[dim]), int(onnx_pads[dim + half])]
    while len(pads) > 2 and pads[-1] == 0 and pads[-2] == 0:
        pads = pads[:-2]  # torch's reflect/replicate pad only handle the trailing dims
    return pads


def _same_float(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands in the wider float type: after the float32 softmax, a float16 weight
    may meet a float32 activation, and matmul does not promote types by itself."""
    if a.dtype != b.dtype and a.is_floating_point() and b.is_floating_point():
        wide = a.dtype if a.element_size() >= b.element_size() else b.dtype
        return a.to(wide), b.to(wide)
    return a, b


def _same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def build_torch_module(onnx_path: Path) -> torch.nn.Module:
    """Turn an ONNX graph into an equivalent ``torch.nn.Module``.

    Args:
        onnx_path: the graph; one tensor input, one output.

    Returns:
        A module in eval mode whose float parameters are buffers (so ``.half()`` and
        ``.to(device)`` convert them) and whose forward runs the nodes in graph order.

    Raises:
        ModelError: the file is not a readable ONNX graph.
        UnsupportedGraph: an operator (or attribute) the converter does not implement;
            the message lists them.
    """
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import helper, numpy_helper

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {onnx_path} ({exc.__class__.__name__}); re-export the bundle") from exc
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    static: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in static]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedGraph(f"{onnx_path} has {len(inputs)} inputs and {len(graph.output)} outputs; expected 1 and 1")

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[Callable[..., Any], list[str], list[str]]] = []
            self.constants: dict[str, str] = {}  # onnx name -> buffer name
            self.input_name = inputs[0]
            self.output_name = graph.output[0].name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            env: dict[str, torch.Tensor] = {name: getattr(self, buf) for name, buf in self.constants.items()}
            env[self.input_name] = x
            for fn, ins, outs in self.steps:
                result = fn(*[env[n] if n else None for n in ins])
                if len(outs) == 1:
                    env[outs[0]] = result
                else:
                    for name, value in zip(outs, result, strict=False):
                        env[name] = value
            return env[self.output_name]

    module = Graph()
    unsupported: list[str] = []

    def runtime_input(name: str) -> str:
        # A constant consumed as a tensor becomes a buffer (float ones follow .half()/.to()).
        if name and name in static and name not in module.constants:
            buffer = f"c{len(module.constants)}"
            value = torch.from_numpy(np.ascontiguousarray(static[name]).copy())
            module.register_buffer(buffer, value)
            module.constants[name] = buffer
        return name

    def const(node: onnx.NodeProto, index: int, default: Any = None) -> Any:
        if index >= len(node.input) or not node.input[index]:
            return default
        name = node.input[index]
        if name not in static:
            raise UnsupportedGraph(f"{node.op_type} input {index} is computed at run time")
        return static[name]

    def ints(value: Any) -> list[int]:
        return [int(v) for v in np.asarray(value).reshape(-1)]

    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        data_inputs = [node.input[0]] if node.input else []
        fn: Callable[..., Any] | None = None
        try:
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedGraph(f"{node.domain}.{op}")
            if op == "Constant":
                if "value" not in attrs:
                    raise UnsupportedGraph("Constant without a tensor value")
                static[node.output[0]] = numpy_helper.to_array(attrs["value"])
                continue
            if node.input and all(not name or name in static for name in node.input):
                # Constant folding: exporters (TorchScript's above all) compute pads and
                # shapes from constants at run time; evaluate such nodes once, here.
                _fold(node, static)
                continue
            if op in ("Conv", "MaxPool", "AveragePool"):
                fn, data_inputs = _pool_or_conv(op, node, attrs, F, torch)
            elif op in ("Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Sqrt", "Neg", "Reciprocal", "Abs"):
                fn = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
                      "Exp": torch.exp, "Sqrt": torch.sqrt, "Neg": torch.neg, "Reciprocal": torch.reciprocal,
                      "Abs": torch.abs}[op]
            elif op in ("Identity", "Dropout"):
                fn = lambda x: x  # noqa: E731 - inference: dropout is the identity
            elif op == "HardSigmoid":
                alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
                fn = lambda x, a=alpha, b=beta: torch.clamp(x * a + b, 0.0, 1.0)  # noqa: E731
            elif op == "HardSwish":
                fn = F.hardswish
            elif op == "LeakyRelu":
                fn = lambda x, a=float(attrs.get("alpha", 0.01)): F.leaky_relu(x, a)  # noqa: E731
            elif op == "Gelu":
                fn = lambda x, a=attrs.get("approximate", b"none"): F.gelu(  # noqa: E731
                    x, approximate=a.decode() if isinstance(a, bytes) else a)
            elif op == "Clip":
                if opset < 11:
                    low, high = attrs.get("min"), attrs.get("max")
                else:
                    low, high = const(node, 1), const(node, 2)
                low = None if low is None else float(np.asarray(low))
                high = None if high is None else float(np.asarray(high))
                fn = lambda x, lo=low, hi=high: torch.clamp(x, lo, hi)  # noqa: E731
            elif op in ("Add", "Sub", "Mul", "Div", "Pow"):
                fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}[op]
                data_inputs = [runtime_input(node.input[0]), runtime_input(node.input[1])]
            elif op == "MatMul":
                fn = lambda a, b: torch.matmul(*_same_float(a, b))  # noqa: E731
                data_inputs = [runtime_input(node.input[0]), runtime_input(node.input[1])]
            elif op in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin"):
                axes = attrs.get("axes") if "axes" in attrs else const(node, 1)
                axes = None if axes is None or len(ints(axes)) == 0 else tuple(ints(axes))
                if axes is None and attrs.get("noop_with_empty_axes", 0):
                    fn = lambda x: x  # noqa: E731
                else:
                    keep = bool(attrs.get("keepdims", 1))
                    reduce = {"ReduceMean": torch.mean, "ReduceMax": torch.amax, "ReduceSum": torch.sum,
                              "ReduceMin": torch.amin}[op]
                    dims = axes if axes is not None else None

                    def fn(x, reduce=reduce, dims=dims, keep=keep):
                        return reduce(x, dim=dims if dims is not None else tuple(range(x.dim())), keepdim=keep)
            elif op in ("GlobalAveragePool", "GlobalMaxPool"):
                fn = ((lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)) if op == "GlobalAveragePool"
                      else (lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)))
            elif op == "Reshape":
                shape = ints(const(node, 1))
                if attrs.get("allowzero", 0) and 0 in shape:
                    raise UnsupportedGraph("Reshape with allowzero")

                def fn(x, shape=tuple(shape)):
                    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
            elif op == "Flatten":
                axis = int(attrs.get("axis", 1))

                def fn(x, axis=axis):
                    axis_ = axis % x.dim() if axis < 0 else axis
                    lead = int(np.prod(x.shape[:axis_])) if axis_ else 1
                    return x.reshape(lead, -1)
            elif op == "Gemm":
                alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
                trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
                data_inputs = [runtime_input(n) for n in node.input]

                def fn(a, b, c=None, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b):
                    a, b = _same_float(a, b)
                    if c is not None:
                        c = c.to(a.dtype)
                    if trans_a:
                        a = a.t()
                    if alpha == 1.0 and beta == 1.0 and trans_b:
                        return F.linear(a, b, c)
                    y = alpha * (a @ (b.t() if trans_b else b))
                    return y if c is None else y + beta * c
            elif op in ("Softmax", "LogSoftmax"):
                axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
                soft = torch.softmax if op == "Softmax" else torch.log_softmax
                # float32 even in float16 mode: probabilities are what everything downstream reads.
                fn = lambda x, axis=axis, soft=soft: soft(x.float(), dim=axis)  # noqa: E731
            elif op == "Concat":
                axis = int(attrs["axis"])
                data_inputs = [runtime_input(n) for n in node.input]
                fn = lambda *xs, axis=axis: torch.cat(xs, dim=axis)  # noqa: E731
            elif op == "BatchNormalization":
                if len(node.output) > 1 or attrs.get("training_mode", 0):
                    raise UnsupportedGraph("BatchNormalization in training mode")
                eps = float(attrs.get("epsilon", 1e-5))
                data_inputs = [runtime_input(n) for n in node.input]
                fn = lambda x, s, b, m, v, eps=eps: F.batch_norm(x, m, v, s, b, False, 0.0, eps)  # noqa: E731
            elif op == "Transpose":
                perm = attrs.get("perm")
                fn = lambda x, perm=perm: x.permute(*(perm if perm is not None else reversed(range(x.dim()))))  # noqa: E731
            elif op in ("Squeeze", "Unsqueeze"):
                axes = attrs.get("axes") if "axes" in attrs else const(node, 1)
                axes = ints(axes) if axes is not None else None
                if op == "Unsqueeze":
                    def fn(x, axes=axes):
                        for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
                            x = x.unsqueeze(axis)
                        return x
                else:
                    fn = lambda x, axes=axes: x.squeeze() if axes is None else x.squeeze(tuple(axes))  # noqa: E731
            elif op == "Cast":
                # Float casts keep the compute dtype (float16 on the GPU); others are refused.
                if int(attrs["to"]) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
                    raise UnsupportedGraph("Cast to a non-float type")
                fn = lambda x: x if x.is_floating_point() else x.float()  # noqa: E731
            elif op == "Pad":
                mode = attrs.get("mode", b"constant")
                mode = mode.decode() if isinstance(mode, bytes) else mode
                if len(node.input) > 3 and node.input[3]:
                    raise UnsupportedGraph("Pad with axes")
                pads = _torch_pads(ints(const(node, 1) if opset >= 11 else attrs["pads"]))
                value = const(node, 2)
                value = 0.0 if value is None else float(np.asarray(value))
                torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
                fn = (lambda x, p=pads, v=value: F.pad(x, p, mode="constant", value=v)) if torch_mode == "constant" \
                    else (lambda x, p=pads, m=torch_mode: F.pad(x, p, mode=m))
            else:
                raise UnsupportedGraph(op)
        except UnsupportedGraph as exc:
            unsupported.append(str(exc))
            continue
        except KeyError as exc:
            unsupported.append(f"{op} (attribute {exc})")
            continue
        module.steps.append((fn, [runtime_input(n) for n in data_inputs], list(node.output)))
    if unsupported:
        raise UnsupportedGraph(
            f"the GPU runtime cannot run {onnx_path.name}: unsupported {', '.join(sorted(set(unsupported)))}; "
            "use --runtime onnx-cpu"
        )
    return module.eval()


def _fold(node: Any, static: dict[str, np.ndarray]) -> None:
    """Evaluate a node whose inputs are all constants with ONNX's reference runtime."""
    from onnx.reference import ReferenceEvaluator

    try:
        outputs = ReferenceEvaluator(node).run(None, {n: static[n] for n in node.input if n})
    except Exception as exc:
        raise UnsupportedGraph(f"{node.op_type} on constants ({exc.__class__.__name__})") from exc
    for name, value in zip(node.output, outputs, strict=False):
        static[name] = np.asarray(value)


def _pool_or_conv(op: str, node: Any, attrs: dict[str, Any], F: Any, torch: Any) -> tuple[Callable[..., Any], list[str]]:
    """Conv / MaxPool / AveragePool over 2-D maps, with explicit, SAME or VALID padding."""
    kernel = [int(k) for k in attrs.get("kernel_shape", [])]
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in attrs.get("dilations", [1, 1])]
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if op != "Conv" and len(node.output) > 1:
        raise UnsupportedGraph(f"{op} with indices")
    if (kernel and len(kernel) != 2) or len(pads) != 4 or len(strides) != 2:
        raise UnsupportedGraph(f"{op} that is not 2-D")

    def padding(x: Any, k: list[int], fill: float) -> tuple[Any, tuple[int, int]]:
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = auto_pad == "SAME_UPPER"
            top, bottom = _same_pads(x.shape[2], k[0], strides[0], dilations[0], upper)
            left, right = _same_pads(x.shape[3], k[1], strides[1], dilations[1], upper)
        elif auto_pad == "VALID":
            top = bottom = left = right = 0
        else:
            top, left, bottom, right = pads
        if top == bottom and left == right:
            return x, (top, left)
        return F.pad(x, (left, right, top, bottom), value=fill), (0, 0)

    if op == "Conv":
        group = int(attrs.get("group", 1))

        def conv(x, w, b=None):
            x, pad = padding(x, kernel or list(w.shape[2:]), 0.0)
            return F.conv2d(x, w, b, stride=strides, padding=pad, dilation=dilations, groups=group)

        return conv, list(node.input)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if op == "MaxPool":
        def max_pool(x):
            x, pad = padding(x, kernel, float("-inf"))
            return F.max_pool2d(x, kernel, strides, pad, dilations, ceil_mode)

        return max_pool, [node.input[0]]
    include_pad = bool(attrs.get("count_include_pad", 0))

    def avg_pool(x):
        x, pad = padding(x, kernel, 0.0)
        return F.avg_pool2d(x, kernel, strides, pad, ceil_mode, include_pad)

    return avg_pool, [node.input[0]]


# --- the classifier ----------------------------------------------------------------------


class TorchClassifier(ProbabilityClassifier):
    """A bundle's ONNX graph run by PyTorch: float16 on a CUDA GPU, float32 on the CPU.

    Images are cropped and resized on the CPU (the same :func:`resize_centre_crop` as the
    ONNX runtime), sent to the device as uint8 (4x less to copy than float32) and
    normalised there. Runs are serialised by a lock, like the ONNX runtime's.

    Attributes:
        model_id: stable id of the model and its version, stored with every prediction.
        labels: the labels, in the order of the graph's output columns.
        preprocess: how images are turned into the graph's input.
        device: ``cpu`` or ``cuda``.
        half: whether the graph runs in float16.
    """

    def __init__(
        self,
        onnx_path: Path,
        *,
        labels: Sequence[str],
        preprocess: PreprocessSpec,
        model_id: str,
        device: str = "cuda",
        half: bool | None = None,
    ) -> None:
        """Convert the graph and move it to the device.

        Args:
            onnx_path: the bundle's graph.
            labels: label names in output order.
            preprocess: the preprocessing the graph was validated with.
            model_id: id stored with each prediction.
            device: ``cuda`` (or ``cuda:N``) or ``cpu``.
            half: run in float16; default: on CUDA only (float16 convolutions on a CPU are slow).

        Raises:
            ModelError: no usable CUDA device for ``cuda``, the graph cannot be converted,
                or its output does not have one column per label.
        """
        import torch

        self.labels = tuple(labels)
        self.preprocess = preprocess
        self.model_id = model_id
        self.model_path = Path(onnx_path)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError("runtime torch-cuda needs a CUDA GPU but torch sees none; use --runtime onnx-cpu or auto")
        self.device = torch.device(device)
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        self._dtype = torch.float16 if self.half else torch.float32
        module = build_torch_module(self.model_path)
        self._module = module.to(self.device, dtype=self._dtype)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        self._mean = torch.tensor(preprocess.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(preprocess.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._lock = threading.Lock()
        probe = self._run(np.zeros((1, preprocess.size, preprocess.size, 3), dtype=np.uint8))
        if probe.shape != (1, len(self.labels)):
            raise ModelError(
                f"ONNX model {self.model_path} outputs shape {list(probe.shape)} for one image but there are "
                f"{len(self.labels)} labels; the model and its metadata disagree, re-export it"
            )

    def _run(self, crops: np.ndarray) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            pixels = torch.from_numpy(crops)
            if self.device.type == "cuda":
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            batch = pixels.permute(0, 3, 1, 2).float()
            batch = ((batch - self._mean) / self._std).to(self._dtype).contiguous()
            try:
                probabilities = self._module(batch)
            except RuntimeError as exc:
                raise ModelError(
                    f"PyTorch failed on a batch of shape {tuple(batch.shape)} with {self.model_path.name} "
                    f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})"
                ) from exc
            return probabilities.float().cpu().numpy()

    def run_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Run on a float32 NCHW batch already normalised by :func:`preprocess_batch`.

        Args:
            batch: float32 array of shape (N, 3, size, size).

        Returns:
            float32 array of shape (N, len(labels)), clipped to [0, 1].

        Raises:
            ModelError: the run failed.
        """
        import torch

        with self._lock, torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, dtype=self._dtype)
            try:
                out = self._module(tensor).float().cpu().numpy()
            except RuntimeError as exc:
                raise ModelError(f"PyTorch failed on a batch of shape {tuple(tensor.shape)}: {str(exc).splitlines()[0]}") from exc
        return np.clip(out, 0.0, 1.0)

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Per-label probabilities for each image.

        Args:
            images: RGB uint8 arrays (height, width, 3), any sizes; may be empty.

        Returns:
            float32 array of shape (len(images), len(labels)); rows sum to about 1.

        Raises:
            ValueError: an image is not an HxWx3 uint8 array.
            ModelError: the run failed.
        """
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        size = self.preprocess.size
        crops = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            crops[i] = resize_centre_crop(image, self.preprocess)
        # float16 rounding can put a probability a hair outside [0, 1]; Prediction rejects that.
        return np.clip(self._run(crops), 0.0, 1.0)

    def __repr__(self) -> str:
        return f"TorchClassifier({self.model_id!r}, {self.model_path}, device={self.device}, half={self.half})"
