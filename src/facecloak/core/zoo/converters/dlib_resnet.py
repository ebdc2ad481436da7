"""dlib's face-recognition ResNet-29 (``dlib_face_recognition_resnet_model_v1.dat``) in torch.

The ``.dat`` file is dlib's own binary serialisation of ``anet_type`` from dlib's
``dnn_face_recognition_ex.cpp`` (the network the ``face_recognition`` library uses)::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

with residual blocks ``relu(add_prev(affine(con(relu(affine(con(x))))), x))`` and, in the
down-sampling blocks, a stride-2 first convolution and a 2x2/2 average-pooled shortcut.

The file is parsed here with numpy only (no dlib needed). dlib serialises a network from the
loss layer inwards: every wrapper writes a version number and then its sub-network, and an
``add_layer`` writes its layer's details *after* the sub-network. So the stream is: the loss
layer, the versions of all wrappers (outermost first), the input layer, then each computational
layer's details from the input up. Tag and skip layers write only a version, so the topology
comes from the known architecture and the parsed layers are checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...align import TemplateAlignment
from ..registry import ReferenceUnavailable

INPUT_SIZE = 150
CHIP_PADDING = 0.25  # face_recognition / dlib's compute_face_descriptor: get_face_chip(img, shape, 150, 0.25)
EMBEDDING_DIM = 128

# dlib's mean 68-point face shape for landmarks 17..67 (dlib/image_transforms/interpolation.h,
# get_face_chip_details), in units of the unpadded chip.
_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
_FIRST_MEAN_LANDMARK = 17  # dlib's arrays start at landmark 17 (the jaw line is left out)


def _chip_point(landmarks: range | tuple[int, ...]) -> tuple[float, float]:
    """Mean position of 68-point landmarks in 150x150 chip pixels, with dlib's chip padding."""
    idx = [i - _FIRST_MEAN_LANDMARK for i in landmarks]
    x = float(np.mean([_MEAN_FACE_X[i] for i in idx]))
    y = float(np.mean([_MEAN_FACE_Y[i] for i in idx]))
    scale = INPUT_SIZE / (2 * CHIP_PADDING + 1)
    return ((CHIP_PADDING + x) * scale, (CHIP_PADDING + y) * scale)


# MTCNN's five points (image-left eye, image-right eye, nose tip, left/right mouth corner) in the
# chip: eye centres are the means of the 68-point eye contours 36-41 and 42-47, nose tip 30,
# mouth corners 48 and 54. dlib's chip coordinates, like ours, put pixel centres on integers.
_MTCNN_POINTS_68 = (range(36, 42), range(42, 48), (30,), (48,), (54,))
ALIGNMENT = TemplateAlignment((INPUT_SIZE, INPUT_SIZE), tuple(_chip_point(p) for p in _MTCNN_POINTS_68))

# (channels, residual blocks, whether the first block down-samples), input to output:
# alevel4 .. alevel0 of dnn_face_recognition_ex.cpp.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
_STEM_CHANNELS = 32


# ---------------------------------------------------------------------------------------------
# dlib's serialisation format (dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h)


class DlibFormatError(ValueError):
    """The file is not the dlib network this converter knows."""


_FLOAT_SPECIAL = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError("unexpected end of file")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        # control byte: low nibble = byte count, 0x80 = negative; then little-endian magnitude
        control = self._take(1)[0]
        value = int.from_bytes(self._take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        # float_details: value = mantissa * 2**exponent, both written as ints
        mantissa, exponent = self.int(), self.int()
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return float(np.ldexp(np.float64(mantissa), exponent))

    def string(self) -> str:
        return self._take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        char = self._take(1)
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {char!r} at {self.pos - 1}")
        return char == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        shape = tuple(self.int() for _ in range(4))  # num_samples, k, nr, nc
        count = int(np.prod(shape))
        if version == 2:  # raw little-endian float32
            values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        elif version == 1:  # dlib's portable float encoding, one number at a time
            values = np.array([self.float() for _ in range(count)], dtype=np.float32)
        else:
            raise DlibFormatError(f"unknown tensor version {version}")
        return values.reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise DlibFormatError("unknown alias_tensor version")
        return tuple(self.int() for _ in range(4))

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclass
class DlibLayer:
    """One computational layer of the file; ``kind`` is dlib's layer name without its version."""

    kind: str
    weight: np.ndarray | None = None  # con: N,C,kh,kw; affine: gamma; fc: in,out
    bias: np.ndarray | None = None  # con: biases; affine: beta
    config: dict[str, int] = field(default_factory=dict)


@dataclass
class DlibNet:
    mean_rgb: tuple[float, float, float]
    size: tuple[int, int]
    layers: list[DlibLayer]  # input to output


def _read_con(r: _Reader) -> DlibLayer:
    params = r.tensor().ravel()
    names = ("filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    config = {name: r.int() for name in names}
    filter_shape, bias_shape = r.alias(), r.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    n_filter = int(np.prod(filter_shape))
    weight = params[:n_filter].reshape(filter_shape)
    bias = params[n_filter : n_filter + int(np.prod(bias_shape))]
    if bias.size != config["filters"] or params.size != n_filter + bias.size:
        raise DlibFormatError("con_ parameter sizes do not match its filters")
    return DlibLayer("con", weight, bias, config)


def _read_affine(r: _Reader) -> DlibLayer:
    params = r.tensor().ravel()
    gamma_shape, beta_shape = r.alias(), r.alias()
    mode = r.int()
    if mode != 0:  # CONV_MODE: one scale and shift per channel
        raise DlibFormatError(f"affine_ in mode {mode}, expected CONV_MODE")
    n = int(np.prod(gamma_shape))
    if int(np.prod(beta_shape)) != n or params.size != 2 * n:
        raise DlibFormatError("affine_ parameter sizes do not match")
    return DlibLayer("affine", params[:n].copy(), params[n:].copy())


def _read_pool(r: _Reader, kind: str) -> DlibLayer:
    names = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return DlibLayer(kind, config={name: r.int() for name in names})


def _read_fc(r: _Reader) -> DlibLayer:
    outputs, inputs = r.int(), r.int()
    params = r.tensor().ravel()
    weight_shape, _bias_shape = r.alias(), r.alias()
    bias_mode = r.int()
    for _ in range(4):
        r.float()
    if bias_mode != 1 or params.size != inputs * outputs:  # FC_NO_BIAS
        raise DlibFormatError("expected fc_no_bias")
    # dlib's fc_ computes x @ W with W of shape (num_inputs, num_outputs)
    weight = params.reshape(weight_shape[0], weight_shape[1])
    return DlibLayer("fc", weight, None, {"inputs": inputs, "outputs": outputs})


_LAYER_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "relu_": lambda r: DlibLayer("relu"),
    "add_prev_": lambda r: DlibLayer("add_prev"),
    "max_pool_2": lambda r: _read_pool(r, "max_pool"),
    "avg_pool_2": lambda r: _read_pool(r, "avg_pool"),
    "fc_2": _read_fc,
}


def _read_add_layer_trailer(r: _Reader, version: int) -> None:
    # add_layer v2/v3 writes three flags and three (empty) work tensors after the details;
    # v3 is the add_layer sitting directly on the input layer and adds its sample expansion factor.
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()
    if version == 3 and r.int() != 1:
        raise DlibFormatError("unexpected sample expansion factor")


def parse_dat(path: Path) -> DlibNet:
    """Parse a dlib DNN file for a ``loss_metric`` network on ``input_rgb_image_sized``."""
    r = _Reader(Path(path).read_bytes())
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise DlibFormatError("not a dlib loss_metric network")
    for _ in range(2):  # margin and distance threshold: training-only
        r.float()
    wrapper_versions = []
    while True:  # the versions of every wrapper, outermost first, then the input layer's name
        version = r.int()
        if version not in (1, 2, 3):
            raise DlibFormatError(f"unexpected layer version {version}")
        wrapper_versions.append(version)
        if version == 3:  # the add_layer on the input layer is the innermost one
            break
    if r.string() != "input_rgb_image_sized":
        raise DlibFormatError("expected input_rgb_image_sized")
    mean_rgb = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers = []
    for version in reversed(wrapper_versions):
        if version == 1:  # add_tag_layer / add_skip_layer: nothing after the sub-network
            continue
        name = r.string()
        if name not in _LAYER_READERS:
            raise DlibFormatError(f"unsupported dlib layer {name!r}")
        layers.append(_LAYER_READERS[name](r))
        _read_add_layer_trailer(r, version)
    if not r.at_end():
        raise DlibFormatError(f"{len(r.data) - r.pos} unread bytes at the end")
    return DlibNet(mean_rgb, size, layers)


# ---------------------------------------------------------------------------------------------
# the torch network


class Affine(nn.Module):
    """dlib's ``affine_`` layer (a frozen batch norm): per-channel ``x * scale + shift``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: tensors of different shapes are added where they overlap.

    The output has the larger size in every dimension and each input counts as zero outside
    itself (aligned at channel 0 and the top-left corner). This network relies on it: the
    down-sampling shortcuts have fewer channels than their blocks, and on an 8x8 input the
    strided block gives 3x3 while the pooled shortcut gives 4x4.
    """
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1]))

    return grow(a) + grow(b)


class Residual(nn.Module):
    """``ares`` / ``ares_down`` of dnn_face_recognition_ex.cpp."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        # dlib's con_ pads by half the filter at stride 1 and not at all otherwise
        stride, padding = (2, 0) if down else (1, 1)
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, shortcut))


class DlibResNet(nn.Module):
    """RGB crops ``B,3,150,150`` in [0, 1] to dlib's raw 128-d descriptors."""

    def __init__(self) -> None:
        super().__init__()
        # input_rgb_image_sized: (pixel - mean) / 256 on 0..255 RGB values; the mean is in the file
        self.register_buffer("mean_rgb", torch.zeros(3))
        self.conv = nn.Conv2d(3, _STEM_CHANNELS, 7, 2, 0)
        self.affine = Affine(_STEM_CHANNELS)
        blocks, in_channels = [], _STEM_CHANNELS
        for channels, count, down in STAGES:
            for i in range(count):
                blocks.append(Residual(in_channels, channels, down and i == 0))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, EMBEDDING_DIM, bias=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = (crops * 255.0 - self.mean_rgb.view(1, 3, 1, 1)) / 256.0
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))  # avg_pool_everything, fc_no_bias


def build_network() -> nn.Module:
    return DlibResNet()


def _expected_layers(net: DlibResNet) -> list[tuple[str, object]]:
    """The torch counterpart of every dlib layer, in the file's (input to output) order."""
    plan: list[tuple[str, object]] = [("con", net.conv), ("affine", net.affine), ("relu", None)]
    plan.append(("max_pool", (3, 2, 0)))
    for block in net.blocks:
        plan += [("con", block.conv1), ("affine", block.affine1), ("relu", None)]
        plan += [("con", block.conv2), ("affine", block.affine2)]
        if block.down:
            plan.append(("avg_pool", (2, 2, 0)))
        plan += [("add_prev", None), ("relu", None)]
    plan += [("avg_pool", (0, 1, 0)), ("fc", net.fc)]  # window 0 = avg_pool_everything
    return plan


def _check_conv(layer: DlibLayer, conv: nn.Conv2d) -> None:
    c = layer.config
    found = (layer.weight.shape, (c["stride_y"], c["stride_x"]), (c["padding_y"], c["padding_x"]))
    wanted = (tuple(conv.weight.shape), conv.stride, conv.padding)
    if found != wanted:
        raise DlibFormatError(f"con_ {found} does not match the architecture {wanted}")


def _check_pool(layer: DlibLayer, window_stride_pad: tuple[int, int, int]) -> None:
    c = layer.config
    window, stride, pad = window_stride_pad
    if (c["nr"], c["nc"], c["stride_y"], c["stride_x"], c["padding_y"], c["padding_x"]) != (
        window, window, stride, stride, pad, pad,
    ):  # fmt: skip
        raise DlibFormatError(f"{layer.kind} {c} does not match the architecture")


def _state_dict_from(parsed: DlibNet, net: DlibResNet) -> dict[str, torch.Tensor]:
    plan = _expected_layers(net)
    kinds = [layer.kind for layer in parsed.layers]
    if kinds != [kind for kind, _ in plan]:
        raise DlibFormatError("the file's layer sequence is not dlib's face-recognition ResNet")
    names = {id(module): name for name, module in net.named_modules()}
    state = {"mean_rgb": torch.tensor(parsed.mean_rgb, dtype=torch.float32)}
    for layer, (kind, target) in zip(parsed.layers, plan, strict=True):
        if kind == "con":
            _check_conv(layer, target)
            state[f"{names[id(target)]}.weight"] = torch.from_numpy(layer.weight.copy())
            state[f"{names[id(target)]}.bias"] = torch.from_numpy(layer.bias.copy())
        elif kind == "affine":
            if layer.weight.size != target.scale.numel():
                raise DlibFormatError("affine_ size does not match the architecture")
            state[f"{names[id(target)]}.scale"] = torch.from_numpy(layer.weight)
            state[f"{names[id(target)]}.shift"] = torch.from_numpy(layer.bias)
        elif kind in ("max_pool", "avg_pool"):
            _check_pool(layer, target)
        elif kind == "fc":
            if layer.weight.shape != tuple(target.weight.shape[::-1]):
                raise DlibFormatError("fc_ size does not match the architecture")
            state[f"{names[id(target)]}.weight"] = torch.from_numpy(layer.weight.T.copy())
    return state


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    parsed = parse_dat(sources[0])
    if parsed.size != (INPUT_SIZE, INPUT_SIZE):
        raise DlibFormatError(f"expected {INPUT_SIZE}x{INPUT_SIZE} input, the file says {parsed.size}")
    return _state_dict_from(parsed, DlibResNet())


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """dlib's own descriptors of aligned ``N,150,150,3`` uint8 RGB chips (needs ``dlib`` or ``dlib-bin``)."""
    try:
        import dlib
    except ImportError as err:
        raise ReferenceUnavailable("dlib is not installed (pip install dlib-bin)") from err
    model = dlib.face_recognition_model_v1(str(sources[0]))
    chips = [np.ascontiguousarray(crop, dtype=np.uint8) for crop in crops]
    return np.stack([np.asarray(model.compute_face_descriptor(chip), dtype=np.float32) for chip in chips])
