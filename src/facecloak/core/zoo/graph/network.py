"""The graph interpreter: a listing (see :mod:`.listing`) as a differentiable torch module.

Inside, 4-D tensors are NCHW (torch's layout); ops whose meaning depends on the axis order (padding,
reductions, reshape) map the listing's NHWC axes. Convolutions reproduce TF's ``SAME`` padding, which puts
the odd extra pixel after (bottom/right), not before; ONNX graphs give explicit symmetric padding (``p=1,1``)
and may group convolutions (``g=64``).

Supported ops: those the zoo's graphs need (``UNARY``, ``BINARY`` and :meth:`GraphNetwork._compile`); the writers
refuse anything else when a listing is derived.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import prelu

UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu,
    "Relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "Abs": torch.abs,
}
BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "AddV2": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
}
FUSABLE = {"BiasAdd", "Relu", "Relu6", "Prelu"}  # activations a conv or matmul line may carry after ``f=``
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


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


class GraphNetwork(nn.Module):
    """A graph from its listing: ``B,3,h,w`` RGB crops in [0, 1] to the listing's last value.

    The crops are mapped to the graph's input as ``x * scale + offset`` (after an RGB->BGR swap
    when ``bgr``), which is each model's own preprocessing.
    """

    def __init__(self, listing: str, scale: float = 1.0, offset: float = 0.0, bgr: bool = False) -> None:
        super().__init__()
        self.scale, self.offset, self.bgr = scale, offset, bgr
        rows = [line.split() for line in listing.strip().splitlines()]
        if rows[0][0] != "input":
            raise ValueError("a listing starts with its input shape")
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
        if kind in UNARY:
            fn = UNARY[kind]
            return lambda values: fn(get(values, args[0]))
        if kind in BINARY:
            fn2 = BINARY[kind]
            return lambda values: fn2(*_broadcastable(get(values, args[0]), get(values, args[1])))
        if kind == "Pad":
            top, bottom, left, right = _int_list(attrs["pads"])
            return lambda values: F.pad(get(values, args[0]), (left, right, top, bottom))
        if kind == "Mean":
            axes, keep = _int_list(attrs["axes"]), attrs["keep"] == "1"

            def mean(values: list[torch.Tensor]) -> torch.Tensor:
                x = get(values, args[0])
                return torch.mean(x, dim=_nchw_axes(axes, x.dim()), keepdim=keep)

            return mean
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

    def graph_input(self, crops: torch.Tensor) -> torch.Tensor:
        """``B,3,h,w`` RGB crops in [0, 1] as the graph's input (NCHW): the model's own preprocessing."""
        x = crops.flip(1) if self.bgr else crops
        return x * self.scale + self.offset

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        values = [self.graph_input(crops)]
        for step in self._steps:
            values.append(step(values))
        return values[-1]
