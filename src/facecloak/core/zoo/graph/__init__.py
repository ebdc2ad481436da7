"""The graph interpreter: face models that run from a listing of their graph, whatever format they ship in.

- :mod:`.listing`: the listing (a graph's topology as text) and the checks on it;
- :mod:`.network`: :class:`GraphNetwork`, the torch module that runs a listing;
- :mod:`.from_tfjs`, :mod:`.from_onnx`, :mod:`.from_tflite`: listings written from TensorFlow.js, ONNX and
  float TFLite files, and each format's own runtime as the parity reference;
- :mod:`.model`: :class:`GraphModel`, the converter of one such model (listing, format, input mapping).

The zoo's listings ship as package data in ``core/zoo/listings/``.
"""

from .model import GraphModel
from .network import GraphNetwork

__all__ = ["GraphModel", "GraphNetwork"]
