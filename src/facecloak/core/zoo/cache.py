"""Where converted weights live: the user's cache directory, as safetensors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import replace_atomically


def cache_root() -> Path:
    """``FACECLOAK_CACHE`` if set, else the platform's user cache directory for facecloak."""
    override = os.environ.get("FACECLOAK_CACHE")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("facecloak", appauthor=False))


def weights_path(name: str) -> Path:
    return cache_root() / "models" / f"{name}.safetensors"


def save_weights(name: str, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write atomically, so an interrupted conversion never leaves a half file that looks complete."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return replace_atomically(weights_path(name), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(weights_path(name)))


def read_metadata(name: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(weights_path(name)), framework="pt") as handle:
        return dict(handle.metadata() or {})
