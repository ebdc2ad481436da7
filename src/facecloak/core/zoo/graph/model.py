"""``GraphModel``: the converter of a face model that runs as a listing, whatever file format it ships in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import from_onnx, from_tfjs, from_tflite
from .listing import checked_state, load_listing
from .network import GraphNetwork

FORMATS = ("tfjs", "onnx", "tflite")


@dataclass(frozen=True)
class GraphModel:
    """One graph: its shipped listing, the format of its source files and the model's own input mapping.

    ``name``: the listing is ``listings/NAME.txt``. ``format``: ``"tfjs"`` (sources ``[model.json, weights.bin]``;
    ``output`` names the node computing the embedding), ``"onnx"`` or ``"tflite"`` (one file). The model feeds its
    graph ``(x - mean) / std`` of 0-255 pixels, after an RGB->BGR swap when ``bgr``.

    Provides the converter contract of :mod:`facecloak.core.zoo.registry`: ``build_network``, ``convert`` and
    ``reference_embed``.
    """

    name: str
    format: str
    mean: float = 0.0
    std: float = 1.0
    bgr: bool = False
    output: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: unknown graph format {self.format!r}; known: {', '.join(FORMATS)}")
        if (self.output is not None) != (self.format == "tfjs"):
            raise ValueError(f"{self.name}: a tfjs graph, and only a tfjs graph, names its output node")

    @property
    def listing(self) -> str:
        return load_listing(self.name)

    def build_network(self) -> GraphNetwork:
        """The network on ``B,3,h,w`` RGB crops in [0, 1] (uninitialised weights)."""
        return GraphNetwork(self.listing, scale=255 / self.std, offset=-self.mean / self.std, bgr=self.bgr)

    def derive(self, sources: list[Path]) -> tuple[str, dict[str, np.ndarray]]:
        """The listing and float constants written from the source files."""
        if self.format == "tfjs":
            return from_tfjs.derive_tfjs_listing(sources[0], sources[1], str(self.output))
        if self.format == "onnx":
            return from_onnx.derive_onnx_listing(sources[0])
        return from_tflite.derive_tflite_listing(sources[0])

    def convert(self, sources: list[Path]) -> dict[str, torch.Tensor]:
        """The network's state dict from the verified source files, refusing files of another topology."""
        return checked_state(self.listing, self.derive(sources), Path(sources[0]).name)

    def graph_input(self, crops: np.ndarray) -> np.ndarray:
        """``N,h,w,3`` uint8 RGB crops as the model's package feeds them to the graph (float32 NHWC)."""
        pixels = np.asarray(crops, dtype=np.float32)
        if self.bgr:
            pixels = pixels[..., ::-1]
        return np.ascontiguousarray((pixels - self.mean) / self.std, dtype=np.float32)

    def reference_embed(self, sources: list[Path], crops: np.ndarray) -> np.ndarray:
        """Raw embeddings of ``N,h,w,3`` uint8 RGB crops from the format's own runtime (the parity reference)."""
        inputs = self.graph_input(crops)
        if self.format == "tfjs":
            return from_tfjs.run_tfjs(sources[0], sources[1], inputs, str(self.output))
        if self.format == "onnx":
            return from_onnx.run_onnxruntime(sources[0], inputs.transpose(0, 3, 1, 2))
        return from_tflite.run_litert(sources[0], inputs)
