"""ONNX graphs to listings, and onnxruntime as their parity reference.

A plain ONNX export of a convolutional network (Conv, PRelu, Add, then Flatten or a Reshape to
``(batch, -1)``, Gemm and a 1-D BatchNormalization) is written as a listing (:mod:`.listing`).
ONNX's conventions differ from TF's in three places, settled here, at conversion: padding is explicit
and symmetric (``p=1,1``), convolutions may be grouped (``g=64``), and Flatten works in NCHW order, so
the rows of the following Gemm's matrix are reordered to the interpreter's NHWC flattening. A PRelu
that is its convolution's only consumer is fused into it; the final batch norm is folded into the Gemm
(exact at inference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import ReferenceUnavailable
from .listing import ListingWriter


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _OnnxWriter(ListingWriter):
    """A listing writer that knows the ONNX graph: its initializers, and which nodes read each tensor."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        super().__init__()
        self.graph = graph
        self.arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.weights = {k: v.astype(np.float32) for k, v in self.arrays.items() if v.dtype.kind == "f"}
        inputs = [i for i in graph.input if i.name not in self.arrays]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ValueError("only graphs with one input and one output are supported")
        self.alias[inputs[0].name] = "%0"
        self.dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]  # N, C, H, W
        self.nodes = list(graph.node)
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.fused: set[int] = set()  # nodes already written as part of another line
        self.flat_shape: tuple[int, int, int] | None = None  # C, H, W of the flattened tensor

    def only_user(self, tensor: str, op_type: str):
        """The single node reading ``tensor`` if it is an ``op_type`` node (then written with its producer)."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type:
            return None
        self.fused.add(self.nodes.index(users[0]))
        return users[0]

    def conv(self, node, attrs: dict) -> None:
        weight = self.weights[node.input[1]]
        bias = self.weights[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise ValueError(f"{node.name}: asymmetric padding is not supported")
        tokens = [self.alias[node.input[0]], self.const(weight), self.const(bias)]
        activation, output = "BiasAdd", node.output[0]
        prelu = self.only_user(output, "PRelu")
        if prelu is not None:
            tokens.append(self.const(self.weights[prelu.input[1]].reshape(-1)))
            activation, output = "BiasAdd,Prelu", prelu.output[0]
        s, d = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
        group = attrs.get("group", 1)
        extra = f" g={group}" if group != 1 else ""
        attributes = f"s={s[0]},{s[1]} d={d[0]},{d[1]} p={pads[0]},{pads[1]}{extra} f={activation}"
        self.emit(f"conv {' '.join(tokens)} {attributes}", output)

    def flatten(self, node, attrs: dict) -> None:
        if node.op_type == "Flatten" and attrs.get("axis", 1) != 1:
            raise ValueError(f"{node.name}: only Flatten(axis=1) is supported")
        if node.op_type == "Reshape":
            target = self.arrays.get(node.input[1])
            if target is None or target.shape != (2,) or target[1] != -1 or target[0] not in (0, 1):
                raise ValueError(f"{node.name}: only Reshape to (batch, -1) is supported")
        self.flat_shape = _shape_before_flatten(self.graph, node, self.dims)
        self.emit(f"Reshape {self.alias[node.input[0]]} shape=-1,{int(np.prod(self.flat_shape))}", node.output[0])

    def gemm(self, node, attrs: dict) -> None:
        if self.flat_shape is None or attrs.get("transB") != 1 or attrs.get("transA", 0):
            raise ValueError(f"{node.name}: only Gemm(transB=1) after Flatten is supported")
        matrix, bias = self.weights[node.input[1]], self.weights[node.input[2]]
        c, h, w = self.flat_shape
        # ONNX flattens C,H,W; the interpreter flattens H,W,C: reorder the matrix's columns to match
        matrix = matrix.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(matrix.shape[0], -1)
        output = node.output[0]
        bn = self.only_user(output, "BatchNormalization")
        if bn is not None:
            gamma, beta, mean, var = (self.weights[name] for name in bn.input[1:5])
            scale = gamma / np.sqrt(var + _attrs(bn).get("epsilon", 1e-5))
            matrix, bias = matrix * scale[:, None], (bias - mean) * scale + beta
            output = bn.output[0]
        self.emit(f"matmul {self.alias[node.input[0]]} {self.const(matrix.T)} {self.const(bias)} f=BiasAdd", output)


def derive_onnx_listing(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(listing, state)`` of the ONNX graph in ``path``; refuses ops outside the supported set."""
    import onnx

    graph = onnx.load(str(path)).graph
    writer = _OnnxWriter(graph)
    for index, node in enumerate(writer.nodes):
        if index in writer.fused:
            continue
        op, attrs = node.op_type, _attrs(node)
        if op == "Conv":
            writer.conv(node, attrs)
        elif op == "Add":
            a, b = (writer.alias[name] for name in node.input)
            writer.emit(f"Add {a} {b}", node.output[0])
        elif op in ("Flatten", "Reshape"):
            writer.flatten(node, attrs)
        elif op == "Gemm":
            writer.gemm(node, attrs)
        else:
            raise ValueError(f"op {op} ({node.name}) is not supported")
    if writer.alias.get(graph.output[0].name) != writer.last:
        raise ValueError("the graph's output is not its last op")
    dims = writer.dims
    return writer.listing((dims[2], dims[3], dims[1])), writer.state


def _shape_before_flatten(graph, flatten, dims: list[int]) -> tuple[int, int, int]:
    """C, H, W of the tensor a Flatten receives, by running shape inference on the graph."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.helper.make_model(graph))
    for info in model.graph.value_info:
        if info.name == flatten.input[0]:
            shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
            if len(shape) == 4 and all(shape[1:]):
                return shape[1], shape[2], shape[3]
    raise ValueError(f"cannot infer the shape flattened by {flatten.name} (input {dims})")


def run_onnxruntime(path: Path, blobs: np.ndarray) -> np.ndarray:
    """The graph's output on ``N,C,H,W`` float32 inputs, from onnxruntime (the parity reference), one at a time:
    the zoo's exports declare a batch of 1."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ReferenceUnavailable("onnxruntime is not installed") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # MXNet exports list their initializers as inputs: warning spam
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    blobs = np.asarray(blobs, dtype=np.float32)
    return np.concatenate([session.run(None, {name: blob[None]})[0] for blob in blobs], axis=0)
