"""FaceNet CASIA-WebFace (frozen GraphDef): fills its architecture, matches OpenCV DNN, tells people apart."""

from __future__ import annotations

import numpy as np
import pytest

from facecloak.core.zoo.converters import facenet_casia

NAME = "facenet_casia"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def constants(sources):
    return facenet_casia.read_constants(sources[0])


def test_splat_tensor_is_expanded():
    # TensorFlow stores a constant whose values are all equal as one value; it must fill the shape.
    tensor = facenet_casia._graph_message_class()().node.add().attr.add().value.tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=3)
    tensor.float_val.append(0.5)
    assert facenet_casia._tensor_array(tensor).tolist() == [0.5, 0.5, 0.5]


def test_graph_constants_are_read(constants):
    first = constants["InceptionResnetV1/Conv2d_1a_3x3/weights"]
    assert first.shape == (3, 3, 3, 32) and first.dtype == np.float32
    assert constants["InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset"].shape == (32,)
    assert constants["InceptionResnetV1/Bottleneck/weights"].shape == (1792, 512)
    # the bottleneck batch norm's gamma is fixed to 1 (scale=False at training)
    assert np.all(constants["InceptionResnetV1/Bottleneck/BatchNorm/Const"] == 1.0)
    assert float(constants["InceptionResnetV1/Repeat_1/block17_3/mul/x"]) == pytest.approx(0.1)
