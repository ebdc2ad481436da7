"""SFace (OpenCV model zoo, 2021dec): a MobileFaceNet-style network, converted from its ONNX file.

The ONNX graph (an MXNet export) is a plain chain: 27 conv + batch-norm + PReLU units (depthwise
3x3 and pointwise 1x1 alternating, as in MobileNet-v1), then batch norm, a 50176->128 fully
connected layer and a final batch norm. It normalises its own input, ``(x - 127.5) / 128`` on RGB
0-255 pixels (OpenCV's ``FaceRecognizerSF`` feeds ``blobFromImage(crop, 1, (112, 112), 0,
swapRB=True)``). The architecture is written out here and the ONNX initializers mapped into it,
so the network is built without the source file and runs as ordinary torch layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...align import ARCFACE_112, TemplateAlignment
from ..graph.from_onnx import run_onnxruntime
from ..layers import PReLU

# OpenCV's FaceRecognizerSF.alignCrop warps the five landmarks onto InsightFace's 112x112 template.
ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
FOLD_BATCH_NORMS = True

# (ONNX layer prefix, input channels, output channels, kernel, stride, depthwise)
_UNITS: list[tuple[str, int, int, int, int, bool]] = [("conv_1", 3, 32, 3, 1, False)]
for _i, (_cin, _cout, _stride) in enumerate(
    [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
    + [(512, 512, 1)] * 5
    + [(512, 1024, 2), (1024, 1024, 1)],
    start=2,
):
    _UNITS.append((f"conv_{_i}_dw", _cin, _cin, 3, _stride, True))
    _UNITS.append((f"conv_{_i}", _cin, _cout, 1, 1, False))

_BN_EPS_UNITS = 1e-3  # the ONNX graph's epsilon for the units' batch norms
_BN_EPS_HEAD = 2e-5  # ... and for bn1 / fc1


class ConvUnit(nn.Module):
    """Conv (no bias) + batch norm + PReLU, the graph's repeating unit."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, depthwise: bool) -> None:
        super().__init__()
        groups = cin if depthwise else 1
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS_UNITS)
        self.prelu = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFace(nn.Module):
    """RGB crops ``B,3,112,112`` in [0, 1] to raw 128-d SFace embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Sequential(*(ConvUnit(ci, co, k, s, dw) for _, ci, co, k, s, dw in _UNITS))
        self.bn1 = nn.BatchNorm2d(1024, eps=_BN_EPS_HEAD)
        self.pre_fc1 = nn.Linear(1024 * 7 * 7, 128)
        self.fc1 = nn.BatchNorm1d(128, eps=_BN_EPS_HEAD)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        # The graph's own Sub/Mul on 0-255 pixels: (255x - 127.5) * 0.0078125.
        x = (crops * 255.0 - 127.5) * 0.0078125
        x = self.bn1(self.units(x))  # dropout5 is the identity at inference
        return self.fc1(self.pre_fc1(torch.flatten(x, 1)))


def build_network() -> nn.Module:
    return SFace()


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _batch_norm(init: dict[str, np.ndarray], prefix: str, target: str) -> dict[str, np.ndarray]:
    return {
        f"{target}.weight": init[f"{prefix}_gamma"],
        f"{target}.bias": init[f"{prefix}_beta"],
        f"{target}.running_mean": init[f"{prefix}_moving_mean"],
        f"{target}.running_var": init[f"{prefix}_moving_var"],
    }


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """State dict of :class:`SFace` from the ONNX file's initializers."""
    init = _initializers(sources[0])
    state: dict[str, np.ndarray] = {}
    for i, (prefix, *_rest) in enumerate(_UNITS):
        state[f"units.{i}.conv.weight"] = init[f"{prefix}_conv2d_weight"]
        state.update(_batch_norm(init, f"{prefix}_batchnorm", f"units.{i}.bn"))
        state[f"units.{i}.prelu.weight"] = init[f"{prefix}_relu_gamma"].reshape(-1)
    state.update(_batch_norm(init, "bn1", "bn1"))
    state["pre_fc1.weight"] = init["pre_fc1_weight"]
    state["pre_fc1.bias"] = init["pre_fc1_bias"]
    state.update(_batch_norm(init, "fc1", "fc1"))
    # The graph's input scaling is fixed in forward(); fail loudly if a different export changes it.
    if not (np.allclose(init["scalar_op1"], 127.5) and np.allclose(init["scalar_op2"], 0.0078125)):
        raise ValueError("unexpected SFace input normalisation constants")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    # BatchNorm's step counter is a buffer too; it plays no part at inference.
    for name in [f"units.{i}.bn" for i in range(len(_UNITS))] + ["bn1", "fc1"]:
        tensors[f"{name}.num_batches_tracked"] = torch.tensor(0)
    return tensors


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings from onnxruntime on ``N,112,112,3`` uint8 RGB crops (as FaceRecognizerSF feeds)."""
    return run_onnxruntime(sources[0], np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2))
