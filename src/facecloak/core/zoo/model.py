"""``FaceModel``: a frozen, differentiable face-recognition network with its provenance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..align import Alignment, FaceAligner
from .manifest import ModelSpec


class FaceModel(nn.Module):
    """Aligned RGB crops ``B,3,h,w`` in [0, 1] to L2-normalised embeddings ``B,D``.

    The wrapped ``network`` does the model's own preprocessing (scaling, channel order,
    standardisation) inside, differentiably. Parameters are frozen; gradients reach the input only.
    """

    def __init__(
        self,
        spec: ModelSpec,
        network: nn.Module,
        alignment: Alignment,
        channels_last: bool = True,
        bfloat16: bool = False,
    ) -> None:
        """``channels_last``: NHWC convolutions, 10-40% faster on the CPU for most of the zoo (oneDNN).

        ``bfloat16``: whether the attack should run this network under bfloat16 autocast. Measured on an
        AVX512-BF16 CPU: the dense Inception-ResNets run 1.75x faster, the depthwise MobileFaceNets no faster
        or slower (their depthwise convolutions have no bf16 fast path), so only the former ask for it.
        """
        super().__init__()
        self.spec = spec
        self.channels_last = channels_last
        self.bfloat16 = bfloat16
        self.network = network.to(memory_format=torch.channels_last) if channels_last else network
        self.alignment = alignment
        self.aligner = FaceAligner(alignment)
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> tuple[int, int]:
        return self.alignment.size

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    def train(self, mode: bool = True) -> FaceModel:
        # Always inference behaviour (batch norm statistics, dropout): this is a fixed recogniser.
        return super().train(False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.shape[-2:] != self.input_size:
            raise ValueError(f"{self.name} expects {self.input_size} crops, got {tuple(crops.shape[-2:])}")
        if self.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last)
        return F.normalize(self.network(crops), dim=-1)


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """``network`` (traced with ``torch.fx``) with every batch norm that follows a convolution folded into
    it: the same function for a frozen recogniser, with one layer fewer to run forward and backward (a
    third of a MobileFaceNet's time on the CPU)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(network.eval(), inplace=False)
