"""Faceplugin's face-feature network (512-d, MobileFaceNet-style), from npm ``faceplugin-face-recognition-js``.

The package (MIT) runs ``model/fr_feature.onnx`` in the browser with onnxruntime-web: faces aligned to
InsightFace's 112x112 template, RGB pixels mapped to ``(x - 127) / 128``. Convolutions with PReLU and residual
adds (batch norms folded), a 7x7 global depthwise convolution and a 1x1 convolution to 512. The training data
is not stated. Runs through the graph interpreter from ``listings/faceplugin_mbf.txt`` (derived from
fr_feature.onnx by :mod:`..graph.from_onnx`).
"""

from __future__ import annotations

from ...align import ARCFACE_112, TemplateAlignment
from ..graph import GraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
GRAPH = GraphModel("faceplugin_mbf", "onnx", mean=127.0, std=128.0)
# the converter contract (see registry): architecture, weights from the verified files, the format's runtime
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
