"""LPIPS is measured when its AlexNet backbone is in the torch cache, and reported as not measured otherwise."""

from __future__ import annotations

import socket

import pytest
import torch

from facecloak.core import perceptual


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def fake_backbone(path) -> dict[str, torch.Tensor]:
    """A randomly initialised AlexNet saved where torchvision keeps the real one (no download here)."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    state = alexnet(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_without_the_backbone_lpips_is_not_measured(torch_cache):
    assert not perceptual.lpips_available()
    assert perceptual.lpips_or_none(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)) is None
    with pytest.raises(FileNotFoundError, match="--fetch-lpips"):
        perceptual.LPIPSMeasure()


def test_the_cached_backbone_is_loaded_offline_into_lpips(torch_cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    state = fake_backbone(perceptual.alexnet_checkpoint())
    measure = perceptual.LPIPSMeasure()
    loaded = measure.model.net.state_dict()
    assert torch.equal(loaded["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(loaded["slice5.10.bias"], state["features.10.bias"])
    a = torch.rand(1, 3, 64, 64)
    assert float(measure(a, a)[0]) == pytest.approx(0.0, abs=1e-6)
    slightly, very = (a + 0.02 * torch.randn_like(a)).clamp(0, 1), torch.rand(1, 3, 64, 64)
    assert 0 < float(measure(slightly, a)[0]) < float(measure(very, a)[0])


def test_fetch_puts_the_backbone_where_it_is_looked_for(torch_cache):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        fake_backbone(type(perceptual.alexnet_checkpoint())(dst))

    path = perceptual.fetch_alexnet(download=fake_download)
    assert path == perceptual.alexnet_checkpoint() and perceptual.lpips_available()
    assert calls == [(perceptual.ALEXNET_URL, perceptual.ALEXNET_HASH_PREFIX)]
    perceptual.fetch_alexnet(download=fake_download)  # already there: no second download
    assert len(calls) == 1


def test_fetch_without_network_fails_with_one_line(torch_cache, monkeypatch, capsys):
    from facecloak.cli import main

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["models", "--fetch-lpips"]) == 1
    assert "could not fetch LPIPS's AlexNet backbone: network is unreachable" in capsys.readouterr().err
    assert not perceptual.lpips_available()
