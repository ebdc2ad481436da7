"""facelib's MobileNet-V1: the TFLite listing (padding, mean, dense layer) and the graph's own normalisation.

Loading, gradients, parity with LiteRT and real faces are checked for every model in test_zoo_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from facecloak.core.zoo.converters import facelib_mobilenet
from facecloak.core.zoo.graph.from_tflite import derive_tflite_listing
from facecloak.core.zoo.graph.listing import checked_state

NAME = "facelib_mobilenet"


def test_the_file_is_the_shipped_listing(model_sources):
    listing, state = derive_tflite_listing(model_sources(NAME)[0])
    assert listing.strip() == facelib_mobilenet.GRAPH.listing.strip()
    ops = [line.split()[2] for line in listing.splitlines() if line.startswith("%")]
    # Keras' ZeroPadding2D before each strided convolution pads one pixel after, never before
    assert ops.count("Pad") == 5
    assert all(line.endswith("pads=0,1,0,1") for line in listing.splitlines() if " Pad " in line)
    assert ops.count("conv") == 14 and ops.count("depthwise") == 13
    assert ops[-4:] == ["Mean", "Mul", "Add", "matmul"]  # pooling, batch norm, dense layer
    assert sum(v.size for v in state.values()) == sum(p.numel() for p in facelib_mobilenet.build_network().parameters())


def test_the_graph_normalises_0_to_255_pixels_itself(model_sources):
    # the package normalises once more before the graph; fed that way LFW accuracy falls to 62% (manifest notes)
    listing, state = derive_tflite_listing(model_sources(NAME)[0])
    first, second = [line.split() for line in listing.splitlines() if line.startswith("%")][:2]
    assert first[2:4] == ["Sub", "%0"] and second[2:4] == ["Mul", "%1"]
    assert float(state[first[4]][0]) == 127.5 and float(state[second[4]][0]) == pytest.approx(1 / 128)
    assert facelib_mobilenet.build_network().scale == 255.0


def test_a_listing_of_another_topology_is_refused(model_sources):
    other = facelib_mobilenet.GRAPH.listing.replace("pads=0,1,0,1", "pads=1,0,1,0", 1)
    with pytest.raises(ValueError, match="not the graph this converter was written for"):
        checked_state(other, derive_tflite_listing(model_sources(NAME)[0]), "mobilenet_fp32.tflite")


def test_reference_feeds_pixels_unnormalised(model_sources):
    from facecloak.core.zoo.registry import ReferenceUnavailable

    crops = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    try:
        reference = facelib_mobilenet.reference_embed(model_sources(NAME), crops)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    assert reference.shape == (2, 128)
    # normalised twice (as the package does), any two crops become nearly the same grey input: cosine 0.9999 for
    # these two; fed once, 0.94
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert float(unit[0] @ unit[1]) < 0.99
