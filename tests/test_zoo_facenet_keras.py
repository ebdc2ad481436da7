"""FaceNet MS-Celeb-1M 128-d (Keras port): fills its architecture, matches Keras, tells people apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecloak.core.zoo.converters import facenet_msceleb128

NAME = "facenet_msceleb128"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


def test_prewhiten_matches_facenet():
    crops = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3)).astype(np.uint8)
    crops[1] = 77  # a flat image: std is 0, so FaceNet divides by 1/sqrt(N) instead
    ours = facenet_msceleb128.prewhiten(torch.from_numpy(crops).permute(0, 3, 1, 2).double() / 255.0)
    expected = facenet_msceleb128._prewhiten_np(crops)
    assert np.abs(ours.permute(0, 2, 3, 1).numpy() - expected).max() < 1e-4
    assert abs(float(ours[0].mean())) < 1e-9 and abs(float(ours[0].std(unbiased=False)) - 1) < 1e-9
    assert float(ours[1].abs().max()) == 0.0


def test_keras_names_map_to_facenet_pytorch_modules():
    assert facenet_msceleb128.torch_prefix("Block35_1_Branch_2_Conv2d_0c_3x3") == "repeat_1.0.branch2.2"
    assert facenet_msceleb128.torch_prefix("Block17_10_Branch_1_Conv2d_0c_7x1") == "repeat_2.9.branch1.2"
    assert facenet_msceleb128.torch_prefix("Block8_5_Conv2d_1x1") == "repeat_3.4.conv2d"
    assert facenet_msceleb128.torch_prefix("Block8_6_Conv2d_1x1") == "block8.conv2d"  # the ReLU-free block
    assert facenet_msceleb128.torch_prefix("Mixed_7a_Branch_2_Conv2d_1a_3x3") == "mixed_7a.branch2.2"
    with pytest.raises(KeyError):
        facenet_msceleb128.torch_prefix("Logits")
