"""Float TFLite graphs to listings, and LiteRT as their parity reference.

A float32 ``.tflite`` file of a plain convolutional network (CONV_2D, DEPTHWISE_CONV_2D, element-wise
RELU/ABS/ADD/SUB/MUL, PRELU, spatial PAD, MEAN, a RESHAPE that flattens, FULLY_CONNECTED) is written as a
listing (:mod:`.listing`). TFLite is NHWC like TF.js; weights are stored OHWI (convolutions) and ``1,H,W,C*M``
(depthwise) and are transposed here to torch's layouts. Two things are settled at conversion:

- a TFLite file declares a fixed batch size (often 1 or 2); the listing drops it, and the final reshape
  becomes ``shape=-1,N``, so the torch module takes any batch;
- a PReLU exported as ``relu(x) + c * (x - |x|)`` (TF-slim models written without a PReLU layer, e.g.
  sirius-ai's MobileFaceNet_TF) or as a native PRELU op is fused into the convolution that produces ``x``
  (``alpha = 2c``; exact), which keeps the module small and its gradient free of ``|x|`` kinks.

Quantised graphs are refused: their integer arithmetic is a different function from the float network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import ReferenceUnavailable
from .listing import ListingWriter, ints

_FUSED_ACTIVATIONS = {0: [], 1: ["Relu"], 3: ["Relu6"]}  # tflite.ActivationFunctionType: NONE, RELU, RELU6
_ELEMENTWISE = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul"}
_UNARY = {"RELU": "Relu", "RELU6": "Relu6", "ABS": "Abs"}


@dataclass(frozen=True)
class _Op:
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict


class _Graph:
    """The first subgraph of a ``.tflite`` file: ops in execution order, tensor shapes and float constants."""

    def __init__(self, path: Path) -> None:
        import tflite

        model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        if model.SubgraphsLength() != 1:
            raise ValueError("only single-subgraph TFLite files are supported")
        graph = model.Subgraphs(0)
        self.shapes: list[tuple[int, ...]] = []
        self.constants: dict[int, np.ndarray] = {}
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            self.shapes.append(tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ())
            value = _constant(model, tensor)
            if value is not None:
                self.constants[i] = value
            elif tensor.Type() != tflite.TensorType.FLOAT32:
                raise ValueError(f"tensor {tensor.Name().decode()} is not float32: quantised graphs are not supported")
        self.ops = [_read_op(model, graph.Operators(k)) for k in range(graph.OperatorsLength())]
        inputs, outputs = graph.InputsAsNumpy(), graph.OutputsAsNumpy()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError("only graphs with one input and one output are supported")
        self.input, self.output = int(inputs[0]), int(outputs[0])
        self.consumers: dict[int, list[int]] = {}
        for index, op in enumerate(self.ops):
            for tensor_index in op.inputs:
                self.consumers.setdefault(tensor_index, []).append(index)


def _constant(model, tensor) -> np.ndarray | None:
    """A stored tensor's value (float32, or int32 for shapes), ``None`` for activations."""
    import tflite

    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(data, int) or data is None or data.size == 0:
        return None
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32}
    if tensor.Type() not in dtypes:
        raise ValueError(f"constant {tensor.Name().decode()} has TFLite type {tensor.Type()}: not supported")
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    return np.frombuffer(data.tobytes(), dtype=dtypes[tensor.Type()]).reshape(shape).copy()


def _read_op(model, op) -> _Op:
    import tflite

    codes = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    code = model.OperatorCodes(op.OpcodeIndex())
    kind = codes[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
    inputs = tuple(int(i) for i in op.InputsAsNumpy())
    outputs = tuple(int(i) for i in op.OutputsAsNumpy())
    table, options = op.BuiltinOptions(), {}
    readers = {
        "CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
        "ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions,
        "FULLY_CONNECTED": tflite.FullyConnectedOptions, "MEAN": tflite.ReducerOptions,
    }  # fmt: skip
    if kind in readers and table is not None:
        reader = readers[kind]()
        reader.Init(table.Bytes, table.Pos)
        if kind == "MEAN":
            options["keep"] = int(bool(reader.KeepDims()))
        else:
            options["activation"] = reader.FusedActivationFunction()
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            options["stride"] = (reader.StrideH(), reader.StrideW())
            options["dilation"] = (reader.DilationHFactor(), reader.DilationWFactor())
            options["padding"] = "SAME" if reader.Padding() == tflite.Padding.SAME else "VALID"
        if kind == "DEPTHWISE_CONV_2D":
            options["multiplier"] = reader.DepthMultiplier()
    elif kind not in ("RELU", "RELU6", "ABS", "PRELU", "RESHAPE", "PAD", "MEAN"):
        raise ValueError(f"TFLite op {kind} is not supported")
    return _Op(kind, inputs, outputs, options)


def _activation(op: _Op) -> list[str]:
    code = op.options.get("activation", 0)
    if code not in _FUSED_ACTIVATIONS:
        raise ValueError(f"{op.kind}: fused activation {code} is not supported")
    return _FUSED_ACTIVATIONS[code]


class _Writer(ListingWriter):
    """A listing writer that knows the TFLite graph: its input is ``%0``, its stored tensors constants."""

    def __init__(self, graph: _Graph) -> None:
        super().__init__()
        self.graph = graph
        self.alias[graph.input] = "%0"

    def value(self, tensor: int) -> str:
        """An op's operand: a computed value, or a stored constant (4-D constants would need NHWC->NCHW)."""
        if tensor in self.alias:
            return self.alias[tensor]
        constant = self.graph.constants[tensor]
        if constant.ndim == 4:
            constant = constant.transpose(0, 3, 1, 2)
        return self.const(constant)


def _only_user(graph: _Graph, tensor: int, kind: str) -> int | None:
    """Index of the single op reading ``tensor``, if it is a ``kind`` op without a fused activation."""
    users = graph.consumers.get(tensor, [])
    if len(users) != 1 or graph.ops[users[0]].kind != kind or graph.ops[users[0]].options.get("activation"):
        return None
    return users[0]


def _prelu_after(graph: _Graph, tensor: int) -> tuple[np.ndarray, int, set[int]] | None:
    """``(alpha, output, ops)`` when ``tensor`` feeds only a PReLU (native, or ``relu(x) + c * (x - |x|)``)."""
    native = _only_user(graph, tensor, "PRELU")
    if native is not None and graph.ops[native].inputs[1] in graph.constants:
        op = graph.ops[native]
        return graph.constants[op.inputs[1]].reshape(-1), op.outputs[0], {native}
    users = graph.consumers.get(tensor, [])
    by_kind = {graph.ops[i].kind: graph.ops[i] for i in users}
    if len(users) != 3 or set(by_kind) != {"RELU", "ABS", "SUB"}:
        return None
    relu, absolute, sub = by_kind["RELU"], by_kind["ABS"], by_kind["SUB"]
    if sub.inputs != (tensor, absolute.outputs[0]) or sub.options.get("activation"):
        return None
    mul_index = _only_user(graph, sub.outputs[0], "MUL")
    if mul_index is None:
        return None
    mul = graph.ops[mul_index]
    scale = mul.inputs[0] if mul.inputs[1] == sub.outputs[0] else mul.inputs[1]
    add_index = _only_user(graph, mul.outputs[0], "ADD")
    if scale not in graph.constants or add_index is None:
        return None
    add = graph.ops[add_index]
    if set(add.inputs) != {relu.outputs[0], mul.outputs[0]} or graph.consumers.get(relu.outputs[0]) != [add_index]:
        return None
    alpha = 2.0 * graph.constants[scale].reshape(-1)  # c * (x - |x|) = 2c * x for x < 0, 0 otherwise
    return alpha, add.outputs[0], {*users, mul_index, add_index}


def _conv(writer: _Writer, op: _Op, fused: set[int]) -> None:
    graph = writer.graph
    weight = graph.constants[op.inputs[1]]
    if op.kind == "CONV_2D":
        layout, weight = "conv", weight.transpose(0, 3, 1, 2)  # OHWI -> OIHW
    else:
        if op.options["multiplier"] != 1 and weight.shape[3] != graph.shapes[op.inputs[0]][3]:
            raise ValueError("depthwise convolutions with a depth multiplier are not supported")
        layout, weight = "depthwise", weight.transpose(3, 0, 1, 2)  # 1,H,W,C -> C,1,H,W
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = graph.constants[op.inputs[2]] if has_bias else np.zeros(weight.shape[0], np.float32)
    tokens = [writer.alias[op.inputs[0]], writer.const(weight), writer.const(bias)]
    activations, output = ["BiasAdd", *_activation(op)], op.outputs[0]
    prelu = None if len(activations) > 1 else _prelu_after(graph, output)
    if prelu is not None:
        alpha, output, ops = prelu
        tokens.append(writer.const(alpha))
        activations.append("Prelu")
        fused.update(ops)
    s, d = op.options["stride"], op.options["dilation"]
    attrs = f"s={s[0]},{s[1]} d={d[0]},{d[1]} p={op.options['padding']} f={','.join(activations)}"
    writer.emit(f"{layout} {' '.join(tokens)} {attrs}", output)


def _fully_connected(writer: _Writer, op: _Op) -> None:
    graph = writer.graph
    if len(graph.shapes[op.inputs[0]]) != 2:
        raise ValueError("FULLY_CONNECTED on a tensor that is not (batch, features) is not supported")
    weight = graph.constants[op.inputs[1]].T  # TFLite stores (out, in); the listing multiplies x @ W
    tokens = [writer.alias[op.inputs[0]], writer.const(weight)]
    activations = _activation(op)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        tokens.append(writer.const(graph.constants[op.inputs[2]]))
        activations = ["BiasAdd", *activations]
    elif activations:
        raise ValueError("FULLY_CONNECTED with an activation but no bias is not supported")
    fused = f" f={','.join(activations)}" if activations else ""
    writer.emit(f"matmul {' '.join(tokens)}{fused}", op.outputs[0])


def derive_tflite_listing(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(listing, state)`` of the float TFLite graph in ``path``; refuses ops outside the supported set."""
    graph = _Graph(path)
    writer = _Writer(graph)
    batch, *hwc = graph.shapes[graph.input]
    fused: set[int] = set()
    for index, op in enumerate(graph.ops):
        if index in fused:
            continue
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            _conv(writer, op, fused)
        elif op.kind in _UNARY:
            writer.emit(f"{_UNARY[op.kind]} {writer.value(op.inputs[0])}", op.outputs[0])
        elif op.kind in _ELEMENTWISE:
            if _activation(op):
                raise ValueError(f"{op.kind} with a fused activation is not supported")
            a, b = (writer.value(i) for i in op.inputs)
            writer.emit(f"{_ELEMENTWISE[op.kind]} {a} {b}", op.outputs[0])
        elif op.kind == "PRELU":
            raise ValueError("a PRELU that does not follow a convolution is not supported")
        elif op.kind == "PAD":
            pads = graph.constants[op.inputs[1]]
            if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
                raise ValueError("only spatial padding of NHWC tensors is supported")
            writer.emit(f"Pad {writer.alias[op.inputs[0]]} pads={ints(pads[1:3])}", op.outputs[0])
        elif op.kind == "MEAN":
            axes, keep = ints(graph.constants[op.inputs[1]]), op.options.get("keep", 0)
            writer.emit(f"Mean {writer.alias[op.inputs[0]]} axes={axes} keep={keep}", op.outputs[0])
        elif op.kind == "FULLY_CONNECTED":
            _fully_connected(writer, op)
        elif op.kind == "RESHAPE":
            out_shape = graph.shapes[op.outputs[0]]
            if len(out_shape) != 2 or out_shape[0] != batch:
                raise ValueError(f"only a reshape to (batch, -1) is supported, not {out_shape}")
            writer.emit(f"Reshape {writer.alias[op.inputs[0]]} shape=-1,{out_shape[1]}", op.outputs[0])
    if writer.alias.get(graph.output) != writer.last:
        raise ValueError("the graph's output is not its last op")
    return writer.listing(hwc), writer.state


def run_litert(path: Path, blobs: np.ndarray) -> np.ndarray:
    """The graph's output on ``N,H,W,C`` float32 inputs from LiteRT (the parity reference).

    The file's batch size is fixed, so the inputs go in chunks of that size, the last one padded by repeating
    its final input (as apps that embed one face in a batch-of-2 graph do); the padding rows are dropped.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as err:
            raise ReferenceUnavailable("neither ai-edge-litert nor tflite-runtime is installed") from err
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    batch = int(source["shape"][0])
    blobs = np.asarray(blobs, dtype=np.float32)
    outputs = []
    for start in range(0, len(blobs), batch):
        chunk = blobs[start : start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        interpreter.set_tensor(source["index"], padded)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[: len(chunk)].copy())
    return np.concatenate(outputs, axis=0)
