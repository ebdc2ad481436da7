"""ONNX face-recognition graphs as listings for the graph interpreter of :mod:`.tfjs_graph`.

A plain ONNX export of a convolutional network (Conv, PRelu, Add, then Flatten or a Reshape to
``(batch, -1)``, Gemm and a 1-D BatchNormalization) is written in the same listing grammar as the
TensorFlow.js graphs, so one interpreter runs both and each converter embeds its topology the same way.
ONNX's conventions differ from TF's in three places, settled here, at conversion: padding is explicit
and symmetric (``p=1,1``), convolutions may be grouped (``g=64``), and Flatten works in NCHW order, so
the rows of the following Gemm's matrix are reordered to the interpreter's NHWC flattening. A PRelu
that is its convolution's only consumer is fused into it; the final batch norm is folded into the Gemm
(exact at inference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .tfjs_graph import TfjsGraph, checked_state


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def derive_onnx_listing(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(listing, state)`` of the ONNX graph in ``path``; refuses ops outside the supported set."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = {k: v.astype(np.float32) for k, v in arrays.items() if v.dtype.kind == "f"}
    inputs = [i for i in graph.input if i.name not in arrays]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError("only graphs with one input and one output are supported")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]  # N, C, H, W
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, np.ndarray] = {}
    alias = {inputs[0].name: "%0"}
    lines: list[str] = []
    fused: set[int] = set()  # nodes already written as part of another line
    flat_shape: tuple[int, int, int] | None = None  # C, H, W of the flattened tensor

    def const(value: np.ndarray) -> str:
        token = f"w{len(state)}"
        state[token] = np.ascontiguousarray(value, dtype=np.float32)
        return token

    def emit(text: str, *outputs: str) -> None:
        lines.append(f"%{len(lines) + 1} = {text}")
        for name in outputs:
            alias[name] = f"%{len(lines)}"

    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        if index in fused:
            continue
        op, attrs = node.op_type, _attrs(node)
        if op == "Conv":
            weight = weights[node.input[1]]
            bias = weights[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise ValueError(f"{node.name}: asymmetric padding is not supported")
            tokens = [alias[node.input[0]], const(weight), const(bias)]
            activation = "BiasAdd"
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "PRelu":
                prelu = users[0]
                tokens.append(const(weights[prelu.input[1]].reshape(-1)))
                activation, output = "BiasAdd,Prelu", prelu.output[0]
                fused.add(nodes.index(prelu))
            else:
                output = node.output[0]
            s, d = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
            group = attrs.get("group", 1)
            extra = f" g={group}" if group != 1 else ""
            emit(
                f"conv {' '.join(tokens)} s={s[0]},{s[1]} d={d[0]},{d[1]} p={pads[0]},{pads[1]}{extra} f={activation}",
                output,
            )
        elif op == "Add":
            a, b = (alias[name] for name in node.input)
            emit(f"Add {a} {b}", node.output[0])
        elif op in ("Flatten", "Reshape"):
            target = arrays.get(node.input[1]) if op == "Reshape" else None
            if op == "Flatten" and attrs.get("axis", 1) != 1:
                raise ValueError(f"{node.name}: only Flatten(axis=1) is supported")
            flattens = target is not None and target.shape == (2,) and target[1] == -1 and target[0] in (0, 1)
            if op == "Reshape" and not flattens:
                raise ValueError(f"{node.name}: only Reshape to (batch, -1) is supported")
            flat_shape = _shape_before_flatten(graph, node, dims)
            emit(f"Reshape {alias[node.input[0]]} shape=-1,{int(np.prod(flat_shape))}", node.output[0])
        elif op == "Gemm":
            if flat_shape is None or attrs.get("transB") != 1 or attrs.get("transA", 0):
                raise ValueError(f"{node.name}: only Gemm(transB=1) after Flatten is supported")
            matrix, bias = weights[node.input[1]], weights[node.input[2]]
            c, h, w = flat_shape
            # ONNX flattens C,H,W; the interpreter flattens H,W,C: reorder the matrix's columns to match
            matrix = matrix.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(matrix.shape[0], -1)
            output = node.output[0]
            users = consumers.get(output, [])
            if len(users) == 1 and users[0].op_type == "BatchNormalization":
                bn = users[0]
                gamma, beta, mean, var = (weights[name] for name in bn.input[1:5])
                scale = gamma / np.sqrt(var + _attrs(bn).get("epsilon", 1e-5))
                matrix, bias = matrix * scale[:, None], (bias - mean) * scale + beta
                output = bn.output[0]
                fused.add(nodes.index(bn))
            emit(f"matmul {alias[node.input[0]]} {const(matrix.T)} {const(bias)} f=BiasAdd", output)
        else:
            raise ValueError(f"op {op} ({node.name}) is not supported")
    if alias.get(graph.output[0].name) != f"%{len(lines)}":
        raise ValueError("the graph's output is not its last op")
    consts = [f"const {k} {'x'.join(map(str, v.shape))}" for k, v in state.items()]
    return "\n".join([f"input {dims[2]},{dims[3]},{dims[1]}", *consts, *lines]), state


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


def state_from_onnx(path: Path, embedded: str) -> dict[str, torch.Tensor]:
    """State dict of ``TfjsGraph(embedded)`` from an ONNX file, refusing a file of another topology."""
    return checked_state(embedded, derive_onnx_listing(path), path.name)


def run_onnxruntime(path: Path, blobs: np.ndarray) -> np.ndarray:
    """The graph's output on ``N,C,H,W`` float32 inputs, from onnxruntime (the parity reference), one at a time:
    the zoo's exports declare a batch of 1."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        from .registry import ReferenceUnavailable

        raise ReferenceUnavailable("onnxruntime is not installed") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # MXNet exports list their initializers as inputs: warning spam
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    blobs = np.asarray(blobs, dtype=np.float32)
    return np.concatenate([session.run(None, {name: blob[None]})[0] for blob in blobs], axis=0)


class OnnxGraphModel:
    """One ONNX face model: its embedded listing and its ``(x - mean) / std`` input on RGB 0-255 pixels."""

    def __init__(self, listing: str, mean: float, std: float) -> None:
        self.listing, self.mean, self.std = listing, mean, std

    def build_network(self) -> TfjsGraph:
        return TfjsGraph(self.listing, scale=255 / self.std, offset=-self.mean / self.std)

    def convert(self, sources: list[Path]) -> dict[str, torch.Tensor]:
        return state_from_onnx(sources[0], self.listing)

    def reference_embed(self, sources: list[Path], crops: np.ndarray) -> np.ndarray:
        """Raw embeddings from onnxruntime on ``N,h,w,3`` uint8 RGB crops, preprocessed as the model's package does."""
        blobs = ((np.asarray(crops, dtype=np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2)
        return run_onnxruntime(sources[0], blobs)
