"""Every model of the zoo, loaded offline from the converted cache: shape, norm and gradients."""

from __future__ import annotations

import pytest
import torch

from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import cache_status, load_model

MANIFEST = load_manifest()


def ready_model(name: str):
    status = cache_status(MANIFEST[name])
    if not status.ready:
        pytest.skip(f"{name} is not converted yet ({status.message})")
    return load_model(name)


@pytest.mark.parametrize("name", list(MANIFEST))
def test_model_loads_offline_and_embeds_a_real_face(name, astronaut_photo, astronaut_faces, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = ready_model(name)
    assert all(not p.requires_grad for p in model.parameters())
    crops = model.aligner(astronaut_photo, astronaut_faces)
    with torch.no_grad():
        embedding = model(crops)
    assert embedding.shape == (1, MANIFEST[name].embedding_dim)
    assert torch.isfinite(embedding).all()
    assert embedding.norm(dim=-1).item() == pytest.approx(1.0, abs=1e-5)
    # a horizontally flipped crop is the same person: it matches (at the model's own LFW threshold),
    # and is more similar than an unrelated texture (how much more depends on the model's cosine scale)
    with torch.no_grad():
        flipped = (embedding @ model(crops.flip(-1)).T).item()
        noise = (embedding @ model(torch.rand_like(crops)).T).item()
    assert flipped > noise
    verification = MANIFEST[name].verification
    if verification is not None:
        assert flipped >= verification.threshold_far_1e2
        assert noise < verification.threshold_far_1e3


@pytest.mark.parametrize("name", list(MANIFEST))
def test_embedding_gradient_reaches_the_photo_only_near_the_face(name, astronaut_photo, astronaut_faces):
    model = ready_model(name)
    photo = astronaut_photo.clone().requires_grad_(True)
    with torch.no_grad():
        clean = model(model.aligner(astronaut_photo, astronaut_faces))
    shifted = model(model.aligner(photo, astronaut_faces))
    # the LowKey direction: how far the embedding moves from the clean one
    loss = -(shifted * (clean + 0.01 * torch.randn_like(clean))).sum()
    loss.backward()
    grad = photo.grad.abs().sum(1)[0]
    assert grad.sum() > 0
    x0, y0, x1, y1 = astronaut_faces[0].box
    pad = 0.6 * (x1 - x0)
    outside = grad.clone()
    outside[max(0, int(y0 - pad)) : int(y1 + pad), max(0, int(x0 - pad)) : int(x1 + pad)] = 0
    assert outside.sum() == 0
    # and the gradient covers the face, not a handful of pixels
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    assert (grad[cy - 15 : cy + 15, cx - 15 : cx + 15] > 0).float().mean() > 0.9


@pytest.mark.parametrize("name", list(MANIFEST))
def test_build_cache_offline_then_load_model(name, model_sources, tmp_path, monkeypatch):
    from facecloak.core.zoo.cache import cache_root
    from facecloak.core.zoo.registry import build_cache

    sources = model_sources(name)
    # a fresh cache holding only the verified source files (linked): conversion runs offline
    for path in sources:
        link = tmp_path / "sources" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    build_cache(MANIFEST[name], allow_download=False)
    model = load_model(name)
    h, w = MANIFEST[name].input_size
    out = model(torch.rand(2, 3, h, w))
    assert out.shape == (2, MANIFEST[name].embedding_dim)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", list(MANIFEST))
def test_parity_with_the_reference_runtime(name, model_sources, astronaut_photo, astronaut_faces):
    """The converted network computes what the model's own runtime computes, on a real aligned face."""
    import numpy as np

    from facecloak.core.image import tensor_to_uint8
    from facecloak.core.zoo.registry import ReferenceUnavailable, converter

    model = ready_model(name)
    crops = model.aligner(astronaut_photo, astronaut_faces[:1])
    face = tensor_to_uint8(crops[0])
    batch = np.ascontiguousarray(np.stack([face, face[:, ::-1]]))  # the face and its mirror image
    try:
        reference = converter(name).reference_embed(model_sources(name), batch)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    with torch.no_grad():
        ours = model.network(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255).numpy()
    assert ours.shape == reference.shape == (2, MANIFEST[name].embedding_dim)
    assert np.abs(ours - reference).max() <= 1e-3


@pytest.mark.parametrize("name", list(MANIFEST))
def test_same_person_closer_than_different_people(name, shared_data, detector):
    from facecloak.bench.verification import central_face
    from facecloak.core.image import load_image

    model = ready_model(name)
    people = ["Aaron_Peirsol", "Abdoulaye_Wade", "Abdullah", "Adrien_Brody"]
    embeddings = {}
    for person in people:
        for index in (1, 2):
            photo = load_image(shared_data / "lfw" / person / f"{person}_{index:04d}.jpg")
            face = central_face(detector.detect(photo), *photo.shape[-2:])
            with torch.no_grad():
                embeddings[person, index] = model(model.aligner(photo, [face]))[0]
    verification = MANIFEST[name].verification
    for a in people:
        same = float(embeddings[a, 1] @ embeddings[a, 2])
        different = max(float(embeddings[a, 1] @ embeddings[b, 2]) for b in people if b != a)
        assert same > different, (a, same, different)
        if verification is not None:
            assert same >= verification.threshold_far_1e2, (a, same)


def test_an_opencv_without_the_tensorflow_importer_means_no_reference(monkeypatch, tmp_path):
    """OpenCV 5 has no cv2.dnn.readNetFromTensorflow: the parity test must skip, not fail."""
    import sys
    import types

    import numpy as np

    from facecloak.core.zoo.converters import facenet_casia
    from facecloak.core.zoo.registry import ReferenceUnavailable

    opencv5 = types.ModuleType("cv2")
    opencv5.__version__ = "5.1.0"
    opencv5.dnn = types.SimpleNamespace(readNet=lambda *args: None)
    monkeypatch.setitem(sys.modules, "cv2", opencv5)
    with pytest.raises(ReferenceUnavailable, match=r"5\.1\.0 has no cv2\.dnn\.readNetFromTensorflow"):
        facenet_casia.reference_embed([tmp_path / "graph.pb"], np.zeros((1, 160, 160, 3), np.uint8))
