"""FaceNet CASIA-WebFace (frozen GraphDef): fills its architecture, matches OpenCV DNN, tells people apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecloak.core.align import FaceAligner
from facecloak.core.image import load_image, tensor_to_uint8
from facecloak.core.zoo import facenet_graphdef
from facecloak.core.zoo.cache import cache_root
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import ReferenceUnavailable, build_cache, load_model
from facecloak.core.zoo.sources import downloads_dir

NAME = "facenet_casia"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def constants(sources):
    return facenet_graphdef.read_constants(sources[0])


@pytest.fixture(scope="module")
def network(sources):
    net = facenet_graphdef.build_network()
    net.load_state_dict(facenet_graphdef.convert(sources), strict=True)
    return net.eval()


def test_splat_tensor_is_expanded():
    # TensorFlow stores a constant whose values are all equal as one value; it must fill the shape.
    tensor = facenet_graphdef._graph_message_class()().node.add().attr.add().value.tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=3)
    tensor.float_val.append(0.5)
    assert facenet_graphdef._tensor_array(tensor).tolist() == [0.5, 0.5, 0.5]


def test_graph_constants_are_read(constants):
    first = constants["InceptionResnetV1/Conv2d_1a_3x3/weights"]
    assert first.shape == (3, 3, 3, 32) and first.dtype == np.float32
    assert constants["InceptionResnetV1/Conv2d_1a_3x3/Conv2D_bn_offset"].shape == (32,)
    assert constants["InceptionResnetV1/Bottleneck/weights"].shape == (1792, 512)
    # the bottleneck batch norm's gamma is fixed to 1 (scale=False at training)
    assert np.all(constants["InceptionResnetV1/Bottleneck/BatchNorm/Const"] == 1.0)
    assert float(constants["InceptionResnetV1/Repeat_1/block17_3/mul/x"]) == pytest.approx(0.1)


def test_build_cache_then_load_model(sources, tmp_path, monkeypatch):
    # The packages already fetched stay findable offline; the conversion goes to a fresh cache.
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(downloads_dir()))
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    build_cache(load_manifest()[NAME], allow_download=False)
    model = load_model(NAME)
    assert model.input_size == (160, 160)
    out = model(torch.rand(2, 3, 160, 160))
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_parity_with_opencv_dnn(sources, network, astronaut_photo, astronaut_faces):
    assert astronaut_faces, "MTCNN should find the astronaut"
    crops = FaceAligner(facenet_graphdef.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    crops_uint8 = np.stack([tensor_to_uint8(c) for c in crops])
    try:
        reference = facenet_graphdef.reference_embed(sources, crops_uint8)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    with torch.no_grad():
        ours = network(torch.from_numpy(crops_uint8).permute(0, 3, 1, 2).float() / 255.0).numpy()
    assert ours.shape == reference.shape == (1, 512)
    # raw (pre-L2) embeddings, norm ~10: the comparison covers the bottleneck batch norm too
    assert np.linalg.norm(reference) > 2.0
    assert np.abs(ours - reference).max() <= 1e-3


def test_network_is_differentiable_and_stays_in_eval(network):
    network.train()
    assert not network.training and not network.net.last_bn.training
    crops = torch.rand(1, 3, 160, 160, requires_grad=True)
    network(crops).sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0


def _lfw_embeddings(network, detector, shared_data, names):
    aligner = FaceAligner(facenet_graphdef.ALIGNMENT)
    out = {}
    for name in names:
        for index in (1, 2):
            photo = load_image(shared_data / "lfw" / name / f"{name}_{index:04d}.jpg")
            faces = detector.detect(photo)
            # LFW photos are centred on their subject: take the face nearest the centre.
            centre = np.array(photo.shape[-1:-3:-1]) / 2
            face = min(faces, key=lambda f: np.linalg.norm(np.mean(np.reshape(f.box, (2, 2)), 0) - centre))
            with torch.no_grad():
                out[name, index] = F.normalize(network(aligner(photo, [face])), dim=-1)[0]
    return out


def test_same_person_closer_than_different(network, detector, shared_data):
    names = ["Aaron_Peirsol", "Abdoulaye_Wade", "Abdullah"]
    emb = _lfw_embeddings(network, detector, shared_data, names)
    for a in names:
        same = float(emb[a, 1] @ emb[a, 2])
        for b in names:
            if b != a:
                different = float(emb[a, 1] @ emb[b, 2])
                assert same > different + 0.2, (a, b, same, different)
