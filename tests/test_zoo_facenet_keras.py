"""FaceNet MS-Celeb-1M 128-d (Keras port): fills its architecture, matches Keras, tells people apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecloak.core.align import FaceAligner
from facecloak.core.image import load_image, tensor_to_uint8
from facecloak.core.zoo import facenet_keras
from facecloak.core.zoo.cache import cache_root
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import ReferenceUnavailable, build_cache, load_model
from facecloak.core.zoo.sources import downloads_dir

NAME = "facenet_msceleb128"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def network(sources):
    net = facenet_keras.build_network()
    net.load_state_dict(facenet_keras.convert(sources), strict=True)
    return net.eval()


def test_prewhiten_matches_facenet():
    crops = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3)).astype(np.uint8)
    crops[1] = 77  # a flat image: std is 0, so FaceNet divides by 1/sqrt(N) instead
    ours = facenet_keras.prewhiten(torch.from_numpy(crops).permute(0, 3, 1, 2).double() / 255.0)
    expected = facenet_keras._prewhiten_np(crops)
    assert np.abs(ours.permute(0, 2, 3, 1).numpy() - expected).max() < 1e-4
    assert abs(float(ours[0].mean())) < 1e-9 and abs(float(ours[0].std(unbiased=False)) - 1) < 1e-9
    assert float(ours[1].abs().max()) == 0.0


def test_keras_names_map_to_facenet_pytorch_modules():
    assert facenet_keras.torch_prefix("Block35_1_Branch_2_Conv2d_0c_3x3") == "repeat_1.0.branch2.2"
    assert facenet_keras.torch_prefix("Block17_10_Branch_1_Conv2d_0c_7x1") == "repeat_2.9.branch1.2"
    assert facenet_keras.torch_prefix("Block8_5_Conv2d_1x1") == "repeat_3.4.conv2d"
    assert facenet_keras.torch_prefix("Block8_6_Conv2d_1x1") == "block8.conv2d"  # the ReLU-free block
    assert facenet_keras.torch_prefix("Mixed_7a_Branch_2_Conv2d_1a_3x3") == "mixed_7a.branch2.2"
    with pytest.raises(KeyError):
        facenet_keras.torch_prefix("Logits")


def test_build_cache_then_load_model(sources, tmp_path, monkeypatch):
    # The packages already fetched stay findable offline; the conversion goes to a fresh cache.
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(downloads_dir()))
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    build_cache(load_manifest()[NAME], allow_download=False)
    model = load_model(NAME)
    assert model.input_size == (160, 160)
    out = model(torch.rand(2, 3, 160, 160))
    assert out.shape == (2, 128)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_parity_with_keras(sources, network, astronaut_photo, astronaut_faces):
    assert astronaut_faces, "MTCNN should find the astronaut"
    crops = FaceAligner(facenet_keras.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    crops_uint8 = np.stack([tensor_to_uint8(c) for c in crops])
    try:
        reference = facenet_keras.reference_embed(sources, crops_uint8)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    with torch.no_grad():
        ours = network(torch.from_numpy(crops_uint8).permute(0, 3, 1, 2).float() / 255.0).numpy()
    assert ours.shape == reference.shape == (1, 128)
    # A raw embedding has norm ~10, so 1e-3 is a tight bound.
    assert np.linalg.norm(reference) > 1.0
    assert np.abs(ours - reference).max() <= 1e-3


def test_network_is_differentiable(network):
    crops = torch.rand(1, 3, 160, 160, requires_grad=True)
    network(crops).sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0


def _lfw_embeddings(network, detector, shared_data, names):
    aligner = FaceAligner(facenet_keras.ALIGNMENT)
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
