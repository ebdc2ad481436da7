"""A small interpreter that runs a TensorFlow.js *graph model* as a differentiable torch module.

A tfjs graph model is ``model.json`` (a GraphDef as JSON plus a ``weightsManifest``) and one or
more ``.bin`` shards holding the weights back to back. Conversion happens in two steps:

1. :func:`derive_listing` walks the graph from the chosen output back to the input and writes a
   compact, human-readable *listing*: the float constants with their (torch-layout) shapes, then
   one line per op. Integer constants (paddings, reduction axes, reshape targets) live in the
   ``.bin`` file but are structure, not weights, so they are written into the listing as op
   attributes. The float constants become the state dict (``w0``, ``w1``, ... in order of use).
   An op line reads ``%7 = depthwise %6 w3 w4 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu``: value 7 is a
   depthwise convolution of value 6 with constants w3 (filter) and w4 (bias); ``%0`` is the input.
2. :class:`TfjsGraph` builds a module from a listing alone. Each converter module embeds its
   model's listing, so ``build_network()`` needs no file, and ``convert()`` re-derives the listing
   from the verified files and refuses them unless it is identical: the embedded topology is
   exactly the file's.

Inside, 4-D tensors are NCHW (torch's layout); ops whose meaning depends on the axis order
(padding, reductions, reshape, squeeze) map TF's NHWC axes. Convolutions reproduce TF's
``SAME`` padding, which puts the odd extra pixel after (bottom/right), not before.

Supported ops: exactly those the zoo's graphs use (see ``_UNARY``, ``_BINARY`` and
:meth:`TfjsGraph._compile`); anything else is refused when the listing is derived.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import prelu

_CONVS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
_MATMULS = {"MatMul", "_FusedMatMul"}
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu,
    "Relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "Abs": torch.abs,
    "Sigmoid": torch.sigmoid,
    "Square": torch.square,
    "Rsqrt": torch.rsqrt,
    "Neg": torch.neg,
}
_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "AddV2": torch.add,
    "BiasAdd": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "RealDiv": torch.div,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
}
_FUSABLE = {"BiasAdd", "Relu", "Relu6", "Prelu"}
_PASSTHROUGH = {"Identity", "StopGradient"}
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
_NP_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


# ---------------------------------------------------------------- reading model.json + .bin


def read_weights(model: dict[str, Any], folder: Path, shards: dict[str, Path] | None = None) -> dict[str, np.ndarray]:
    """Every weight of the manifest as a numpy array (float16/uint8/uint16 quantisation undone).

    ``shards`` maps a manifest path (e.g. ``mobilefacenet.bin``) to a file; default: ``folder/path``.
    """
    weights = {}
    for group in model["weightsManifest"]:
        data = b"".join((shards or {}).get(p, folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            quant = spec.get("quantization")
            stored = np.dtype(_NP_DTYPES[quant["dtype"] if quant else spec["dtype"]])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            raw = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(spec["shape"])
            offset += count * stored.itemsize
            if quant and quant["dtype"] in ("uint8", "uint16"):
                raw = raw.astype(np.float32) * quant["scale"] + quant["min"]
            weights[spec["name"]] = raw.astype(_NP_DTYPES[spec["dtype"]])
        if offset != len(data):
            raise ValueError(f"weight shards {group['paths']} hold {len(data)} bytes, the manifest {offset}")
    return weights


def _attr_str(attr: dict[str, Any]) -> str:
    return base64.b64decode(attr["s"]).decode()


def _attr_ints(attr: dict[str, Any]) -> list[int]:
    return [int(v) for v in attr.get("list", {}).get("i", [])]


def _source(name: str) -> str:
    """``node:0`` -> ``node``; other outputs of multi-output nodes are not supported."""
    if name.startswith("^"):
        raise ValueError(f"control dependency {name} is not supported")
    node, _, index = name.partition(":")
    if index not in ("", "0"):
        raise ValueError(f"output {name} of a multi-output node is not supported")
    return node


def _needed(nodes: dict[str, dict[str, Any]], output: str) -> list[str]:
    """Names of the nodes ``output`` depends on, in an order where inputs come first."""
    order: list[str] = []
    state: dict[str, int] = {}
    stack = [(output, False)]
    while stack:
        name, done = stack.pop()
        if done:
            state[name] = 2
            order.append(name)
            continue
        if state.get(name):
            if state[name] == 1:
                raise ValueError(f"the graph has a cycle through {name}")
            continue
        state[name] = 1
        stack.append((name, True))
        for parent in reversed(nodes[name].get("input", [])):
            if not state.get(_source(parent)):
                stack.append((_source(parent), False))
    return order


def _conv_attrs(node: dict[str, Any]) -> list[str]:
    attr = node["attr"]
    fmt = _attr_str(attr["data_format"]) if "data_format" in attr else "NHWC"
    if fmt != "NHWC":
        raise ValueError(f"{node['name']}: data_format {fmt} is not supported (tfjs graphs are NHWC)")
    strides = _attr_ints(attr["strides"])[1:3]
    dilations = _attr_ints(attr["dilations"])[1:3] if "dilations" in attr else [1, 1]
    padding = _attr_str(attr["padding"])
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"{node['name']}: padding {padding} is not supported")
    return [f"s={strides[0]},{strides[1]}", f"d={dilations[0]},{dilations[1]}", f"p={padding}"]


def _fused_attrs(node: dict[str, Any]) -> list[str]:
    fused = [base64.b64decode(s).decode() for s in node["attr"].get("fused_ops", {}).get("list", {}).get("s", [])]
    if not fused or fused[0] != "BiasAdd" or not set(fused) <= _FUSABLE:
        raise ValueError(f"{node['name']}: fused ops {fused} are not supported")
    return [f"f={','.join(fused)}"]


def _ints(values: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in np.asarray(values).reshape(-1))


def derive_listing(
    model: dict[str, Any], weights: dict[str, np.ndarray], output: str
) -> tuple[str, dict[str, np.ndarray]]:
    """The listing of the subgraph computing ``output`` and its float constants (torch layout).

    Returns ``(listing, state)`` where ``state`` maps ``w0``, ``w1``... to float32 arrays.
    """
    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    alias: dict[str, str] = {}  # TF node -> listing token ("%3" or "w5")
    const_names: dict[str, str] = {}  # TF const -> w-name
    state: dict[str, np.ndarray] = {}
    lines: list[str] = []

    def const(name: str, layout: str) -> str:
        """Token of a float constant; ``layout`` says how an op uses it, fixing its torch layout."""
        if nodes[name]["op"] != "Const" or name not in weights:
            raise ValueError(f"{name} is expected to be a stored constant")
        value = weights[name].astype(np.float32)
        if layout == "conv":  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        elif layout == "depthwise":  # H,W,C,M -> C*M,1,H,W (torch groups: output channel c*M+m)
            h, w, c, m = value.shape
            value = value.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)
        elif layout == "elementwise" and value.ndim == 4:  # NHWC-shaped operand of an op on NCHW data
            value = value.transpose(0, 3, 1, 2)
        key = f"{name}|{layout}"
        if key not in const_names:
            if any(k.startswith(f"{name}|") for k in const_names):
                raise ValueError(f"constant {name} is used in two layouts")
            const_names[key] = f"w{len(state)}"
            state[const_names[key]] = np.ascontiguousarray(value)
        return const_names[key]

    def int_const(name: str) -> np.ndarray:
        if nodes[name]["op"] != "Const" or weights.get(name) is None or weights[name].dtype.kind not in "iu":
            raise ValueError(f"{name} is expected to be an integer constant")
        return weights[name]

    def value(name: str) -> str:
        if name in alias:
            return alias[name]
        return const(name, "elementwise")

    for name in _needed(nodes, output):
        node = nodes[name]
        op, inputs = node["op"], [_source(i) for i in node.get("input", [])]
        if op == "Const":
            continue
        if op == "Placeholder":
            if lines or any(v == "%0" for v in alias.values()):
                raise ValueError("only graphs with one input are supported")
            dims = [int(d.get("size", -1)) for d in node["attr"]["shape"]["shape"]["dim"]]
            lines.append(f"input {_ints(np.array(dims[1:]))}")
            alias[name] = "%0"
            continue
        if op in _PASSTHROUGH:
            alias[name] = value(inputs[0])
            continue
        if op in _CONVS:
            layout = "depthwise" if "Depthwise" in op else "conv"
            tokens = [alias[inputs[0]], const(inputs[1], layout)]
            attrs = _conv_attrs(node)
            if op.startswith(("_Fused", "Fused")):
                tokens += [const(i, "vector") for i in inputs[2:]]
                attrs += _fused_attrs(node)
            line = [layout, *tokens, *attrs]
        elif op in _MATMULS:
            attr = node["attr"]
            if attr.get("transpose_a", {}).get("b") or attr.get("transpose_b", {}).get("b"):
                raise ValueError(f"{name}: transposed MatMul is not supported")
            line = ["matmul", alias[inputs[0]], const(inputs[1], "matrix")]
            if op == "_FusedMatMul":
                line[3:3] = [const(i, "vector") for i in inputs[2:]]
                line += _fused_attrs(node)
        elif op in _UNARY:
            line = [op, value(inputs[0])]
        elif op in _BINARY:
            line = [op, value(inputs[0]), value(inputs[1])]
        elif op == "Pad":
            pads = int_const(inputs[1])
            if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
                raise ValueError(f"{name}: only spatial padding of 4-D tensors is supported")
            line = ["Pad", alias[inputs[0]], f"pads={_ints(pads[1:3])}"]
        elif op in ("Mean", "Sum"):
            keep = int(bool(node["attr"].get("keep_dims", {}).get("b", False)))
            line = [op, alias[inputs[0]], f"axes={_ints(int_const(inputs[1]))}", f"keep={keep}"]
        elif op == "Reshape":
            line = ["Reshape", alias[inputs[0]], f"shape={_ints(int_const(inputs[1]))}"]
        elif op == "Squeeze":
            line = ["Squeeze", alias[inputs[0]], f"axes={_ints(np.array(_attr_ints(node['attr']['squeeze_dims'])))}"]
        else:
            raise ValueError(f"op {op} ({name}) is not supported")
        lines.append(f"%{len(lines)} = {' '.join(line)}")
        alias[name] = f"%{len(lines) - 1}"
    consts = [f"const {k} {'x'.join(map(str, v.shape)) or '-'}" for k, v in state.items()]
    return "\n".join([lines[0], *consts, *lines[1:]]), state


def load_graph_model(model_json: Path, weights_bin: Path, output: str) -> tuple[str, dict[str, np.ndarray]]:
    """:func:`derive_listing` from a one-shard graph model's two files."""
    model = json.loads(Path(model_json).read_text(encoding="utf-8"))
    shards = {p: Path(weights_bin) for g in model["weightsManifest"] for p in g["paths"]}
    if len(shards) != 1:
        raise ValueError(f"expected a one-shard model, got {sorted(shards)}")
    return derive_listing(model, read_weights(model, Path(weights_bin).parent, shards), output)


# ---------------------------------------------------------------- the torch module


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's ``SAME`` padding (before, after) along one axis: the extra pixel, if any, goes after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _nchw_axes(axes: list[int], rank: int) -> list[int]:
    axes = [a % rank for a in axes]
    return [_NHWC_TO_NCHW[a] for a in axes] if rank == 4 else axes


def _broadcastable(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-channel vector (TF: last axis) against NCHW data needs to broadcast over H and W."""
    if x.dim() == 4 and y.dim() == 1 and y.numel() > 1:
        y = y.view(-1, 1, 1)
    elif y.dim() == 4 and x.dim() == 1 and x.numel() > 1:
        x = x.view(-1, 1, 1)
    return x, y


def _parse_attrs(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    args = [t for t in tokens if "=" not in t]
    attrs = dict(t.split("=", 1) for t in tokens if "=" in t)
    return args, attrs


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


class TfjsGraph(nn.Module):
    """A tfjs graph model from its listing: ``B,3,h,w`` RGB crops in [0, 1] to the listed output.

    The crops are mapped to the graph's input as ``x * scale + offset`` (after an RGB->BGR swap
    when ``bgr``), which is each model's own preprocessing.
    """

    def __init__(self, listing: str, scale: float = 1.0, offset: float = 0.0, bgr: bool = False) -> None:
        super().__init__()
        self.scale, self.offset, self.bgr = scale, offset, bgr
        rows = [line.split() for line in listing.strip().splitlines()]
        if rows[0][0] != "input":
            raise ValueError("a listing starts with its input shape")
        self.input_hwc = tuple(_int_list(rows[0][1]))
        for row in rows[1:]:
            if row[0] == "const":
                shape = [] if row[2] == "-" else [int(v) for v in row[2].split("x")]
                # parameters (frozen by FaceModel), not buffers: callers find the device from them
                self.register_parameter(row[1], nn.Parameter(torch.zeros(shape), requires_grad=False))
        ops = [row for row in rows[1:] if row[0] != "const"]
        for i, row in enumerate(ops, start=1):
            if row[:2] != [f"%{i}", "="]:
                raise ValueError(f"listing op {i} is numbered {row[0]!r}")
        self._steps = [self._compile(row[2:]) for row in ops]

    def _const(self, token: str) -> torch.Tensor:
        return getattr(self, token)

    def _compile(self, row: list[str]) -> Callable[[list[torch.Tensor]], torch.Tensor]:
        """One op as a function of the values computed so far (tokens resolved at run time)."""
        kind, (args, attrs) = row[0], _parse_attrs(row[1:])

        def get(values: list[torch.Tensor], token: str) -> torch.Tensor:
            return values[int(token[1:])] if token.startswith("%") else self._const(token)

        if kind in ("conv", "depthwise"):
            return self._compile_conv(kind, args, attrs, get)
        if kind == "matmul":
            fused = attrs["f"].split(",") if "f" in attrs else []

            def matmul(values: list[torch.Tensor]) -> torch.Tensor:
                out = get(values, args[0]) @ get(values, args[1])
                extras = [get(values, a) for a in args[2:]]
                if fused:
                    out = out + extras[0]
                return self._fused(out, fused[1:], extras[1:])

            return matmul
        if kind in _UNARY:
            fn = _UNARY[kind]
            return lambda values: fn(get(values, args[0]))
        if kind in _BINARY:
            fn2 = _BINARY[kind]
            return lambda values: fn2(*_broadcastable(get(values, args[0]), get(values, args[1])))
        if kind == "Pad":
            top, bottom, left, right = _int_list(attrs["pads"])
            return lambda values: F.pad(get(values, args[0]), (left, right, top, bottom))
        if kind in ("Mean", "Sum"):
            axes, keep = _int_list(attrs["axes"]), attrs["keep"] == "1"
            reduce = torch.mean if kind == "Mean" else torch.sum

            def reduction(values: list[torch.Tensor]) -> torch.Tensor:
                x = get(values, args[0])
                return reduce(x, dim=_nchw_axes(axes, x.dim()), keepdim=keep)

            return reduction
        if kind == "Reshape":
            shape = _int_list(attrs["shape"])
            if len(shape) == 4:
                raise ValueError("reshaping to 4-D is not supported")

            def reshape(values: list[torch.Tensor]) -> torch.Tensor:
                x = get(values, args[0])
                if x.dim() == 4:  # TF flattens in NHWC order
                    x = x.permute(0, 2, 3, 1)
                return x.reshape(shape)

            return reshape
        if kind == "Squeeze":
            axes = _int_list(attrs["axes"])

            def squeeze(values: list[torch.Tensor]) -> torch.Tensor:
                x = get(values, args[0])
                dims = sorted(_nchw_axes(axes, x.dim()), reverse=True)
                if any(x.shape[d] != 1 for d in dims):
                    raise ValueError(f"cannot squeeze axes {axes} of {tuple(x.shape)}")
                for d in dims:
                    x = x.squeeze(d)
                return x

            return squeeze
        raise ValueError(f"unknown listing op {kind}")

    def _compile_conv(self, kind: str, args: list[str], attrs: dict[str, str], get: Callable) -> Callable:
        stride, dilation, padding = tuple(_int_list(attrs["s"])), tuple(_int_list(attrs["d"])), attrs["p"]
        fused = attrs["f"].split(",") if "f" in attrs else []
        conv_groups = int(attrs.get("g", 1))  # grouped convolutions (ONNX graphs)

        def conv(values: list[torch.Tensor]) -> torch.Tensor:
            x, weight = get(values, args[0]), get(values, args[1])
            extras = [get(values, a) for a in args[2:]]
            groups = x.shape[1] if kind == "depthwise" else conv_groups
            kh, kw = weight.shape[-2:]
            pad: tuple[int, int] | int = 0
            if padding not in ("SAME", "VALID"):  # explicit symmetric padding "h,w" (ONNX graphs)
                pad = tuple(_int_list(padding))
            elif padding == "SAME":
                top, bottom = same_padding(x.shape[2], kh, stride[0], dilation[0])
                left, right = same_padding(x.shape[3], kw, stride[1], dilation[1])
                if (top, left) == (bottom, right):
                    pad = (top, left)
                else:  # TF pads the odd pixel after: torch's symmetric padding cannot express it
                    x = F.pad(x, (left, right, top, bottom))
            bias = extras[0] if fused else None
            out = F.conv2d(x, weight, bias, stride, pad, dilation, groups)
            return self._fused(out, fused[1:], extras[1:])

        return conv

    @staticmethod
    def _fused(x: torch.Tensor, ops: list[str], args: list[torch.Tensor]) -> torch.Tensor:
        """Activations fused into a conv or matmul, after its BiasAdd (applied by the caller)."""
        for op in ops:
            if op == "Relu":
                x = torch.relu(x)
            elif op == "Relu6":
                x = torch.clamp(x, 0.0, 6.0)
            elif op == "Prelu":
                x = prelu(x, args[0].reshape(-1))
        return x

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.flip(1) if self.bgr else crops
        values = [x * self.scale + self.offset]
        for step in self._steps:
            values.append(step(values))
        return values[-1]


def listing_mismatch(embedded: str, derived: str) -> str | None:
    """``None`` when the two listings agree, else the first differing line (for the error)."""
    a, b = embedded.strip().splitlines(), derived.strip().splitlines()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x.strip() != y.strip():
            return f"line {i + 1}: expected {x.strip()!r}, the file gives {y.strip()!r}"
    if len(a) != len(b):
        return f"expected {len(a)} lines, the file gives {len(b)}"
    return None


def checked_state(
    embedded: str, derived: tuple[str, dict[str, np.ndarray]], source_name: str
) -> dict[str, torch.Tensor]:
    """State dict of ``TfjsGraph(embedded)`` from a ``(listing, constants)`` pair derived from a model file,
    refusing a file whose topology is not the embedded one."""
    listing, state = derived
    problem = listing_mismatch(embedded, listing)
    if problem:
        raise ValueError(f"{source_name} is not the graph this converter was written for ({problem})")
    return {k: torch.from_numpy(v) for k, v in state.items()}


def state_from_files(sources: list[Path], output: str, embedded: str) -> dict[str, torch.Tensor]:
    """State dict of ``TfjsGraph(embedded)`` from ``[model.json, weights.bin]``, checking the topology."""
    return checked_state(embedded, load_graph_model(sources[0], sources[1], output), sources[0].name)
