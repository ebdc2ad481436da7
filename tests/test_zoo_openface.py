"""OpenFace converter: fills its architecture, matches Keras, tells people apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecloak.core.align import FaceAligner
from facecloak.core.image import load_image, tensor_to_uint8
from facecloak.core.zoo import openface
from facecloak.core.zoo.cache import cache_root
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import ReferenceUnavailable, build_cache, load_model

NAME = "openface"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def network(sources):
    net = openface.build_network()
    net.load_state_dict(openface.convert(sources), strict=True)
    return net.eval()


def test_build_cache_then_load_model(sources, tmp_path, monkeypatch):
    # A fresh cache holding only the verified source files (linked): conversion runs offline.
    for path in sources:
        link = tmp_path / "sources" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    build_cache(load_manifest()[NAME], allow_download=False)
    model = load_model(NAME)
    assert model.input_size == (96, 96)
    out = model(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 128)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_parity_with_keras(sources, network, astronaut_photo, astronaut_faces):
    assert astronaut_faces, "MTCNN should find the astronaut"
    crops = FaceAligner(openface.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    crops_uint8 = np.stack([tensor_to_uint8(c) for c in crops])
    # A mirrored copy makes a batch of two different real faces.
    crops_uint8 = np.ascontiguousarray(np.concatenate([crops_uint8, crops_uint8[:, :, ::-1]]))
    try:
        reference = openface.reference_embed(sources, crops_uint8)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    with torch.no_grad():
        ours = network(torch.from_numpy(crops_uint8).permute(0, 3, 1, 2).float() / 255.0).numpy()
    assert ours.shape == reference.shape == (2, 128)
    assert np.abs(ours - reference).max() <= 1e-3


def test_convert_checks_the_keras_architecture(sources):
    # The hand-written network is checked against the Siamese package's Keras config.
    layers = openface.architecture_config(sources[1])
    openface.check_architecture(layers)
    conv3 = next(layer for layer in layers if layer["name"] == "conv3")
    conv3["config"]["filters"] = 128
    with pytest.raises(ValueError, match="does not match"):
        openface.check_architecture(layers)


def test_network_is_differentiable(network):
    crops = torch.rand(1, 3, 96, 96, requires_grad=True)
    network(crops).sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0


def _lfw_embeddings(network, detector, shared_data, names):
    aligner = FaceAligner(openface.ALIGNMENT)
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
                assert same > different + 0.3, (a, b, same, different)
