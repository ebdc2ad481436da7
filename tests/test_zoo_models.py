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
