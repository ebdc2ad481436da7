"""Shared fixtures: real face photos, detected faces, and model sources."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("KERAS_BACKEND", "torch")  # keras is only a reference runtime for parity tests
torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("FACECLOAK_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face photos not found at {SHARED_DATA} (set FACECLOAK_DATA)")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage.data import astronaut as load

    return load()


@pytest.fixture(scope="session")
def astronaut_photo(astronaut):
    from facecloak.core.image import uint8_to_tensor

    return uint8_to_tensor(astronaut)


@pytest.fixture(scope="session")
def detector():
    from facecloak.core.detect import FaceDetector

    return FaceDetector()


@pytest.fixture(scope="session")
def astronaut_faces(detector, astronaut_photo):
    return detector.detect(astronaut_photo)


@pytest.fixture(scope="session")
def model_sources():
    """``model_sources(name)``: verified source files for a model, or a skip when they cannot be had."""
    from facecloak.core.zoo.manifest import load_manifest
    from facecloak.core.zoo.registry import source_paths
    from facecloak.core.zoo.sources import SourceError

    manifest = load_manifest()

    def get(name: str) -> list[Path]:
        try:
            return source_paths(manifest[name])
        except SourceError as err:
            pytest.skip(f"source package for {name} unavailable: {err}")

    return get


@pytest.fixture(scope="session")
def batch_and_gradient_check():
    """``check(network, batch, size, dim, atol)``: ``network`` maps ``batch`` random ``size`` x ``size`` crops to
    ``dim``-d outputs, passes finite non-zero gradients back to the crops, and treats each face of a batch on its
    own (the last face alone gives the same output within ``atol``). Returns the crops' gradient."""

    def check(network, batch: int, size: int, dim: int, atol: float) -> torch.Tensor:
        crops = torch.rand(batch, 3, size, size, requires_grad=True)
        out = network(crops)
        assert out.shape == (batch, dim)
        out.square().sum().backward()
        assert torch.isfinite(crops.grad).all() and crops.grad.abs().sum() > 0
        with torch.no_grad():
            alone = network(crops[-1:].detach())
        assert torch.allclose(out[-1:].detach(), alone, atol=atol)
        return crops.grad

    return check


# -- the app's fast fake engine (tests/app_fakes.py) ---------------------------------------------------------------


@pytest.fixture
def engine(monkeypatch):
    from app_fakes import FakeEngine, install_fakes

    engine = FakeEngine()
    install_fakes(engine, monkeypatch.setattr)
    return engine


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    from app_fakes import make_photos

    return make_photos(tmp_path / "photos")


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder
