"""ONNX graphs through the listing interpreter: a small synthetic graph, and the real w600k_mbf file's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facecloak.core.zoo.graph import GraphNetwork  # noqa: E402
from facecloak.core.zoo.graph.from_onnx import derive_onnx_listing  # noqa: E402
from facecloak.core.zoo.graph.listing import checked_state  # noqa: E402


def _tiny_graph(path, stride: int = 2, flatten: str = "Flatten") -> None:
    """Conv (grouped, padded) + PRelu, a residual Add, Flatten, Gemm and BatchNormalization, random weights."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [
        init("c1w", 4, 3, 3, 3), init("c1b", 4), init("a1", 4, 1, 1),
        init("c2w", 4, 2, 3, 3), init("c2b", 4), init("a2", 4, 1, 1),
        init("fcw", 5, 4 * 4 * 4), init("fcb", 5),
        init("g", 5), init("b", 5), init("m", 5),
        numpy_helper.from_array(rng.uniform(0.5, 2, 5).astype(np.float32), "v"),
        numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1], strides=[stride, stride]),
        helper.make_node("PRelu", ["c1", "a1"], ["p1"]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("PRelu", ["c2", "a2"], ["p2"]),
        helper.make_node("Add", ["p1", "p2"], ["s"]),
        helper.make_node("Flatten", ["s"], ["f"], axis=1)
        if flatten == "Flatten"
        else helper.make_node("Reshape", ["s", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fcw", "fcb"], ["e"], transB=1),
        helper.make_node("BatchNormalization", ["e", "g", "b", "m", "v"], ["y"], epsilon=1e-5),
    ]
    size = 4 * stride
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_tiny_onnx_graph_runs_like_onnxruntime(tmp_path, flatten):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    _tiny_graph(path, flatten=flatten)
    listing, _ = derive_onnx_listing(path)
    assert "g=2" in listing and "p=1,1" in listing and "Prelu" in listing  # grouped, padded, PReLU fused
    net = GraphNetwork(listing)
    net.load_state_dict(checked_state(listing, derive_onnx_listing(path), path.name), strict=True)
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_a_file_of_another_topology_is_refused(tmp_path):
    listing, _ = derive_onnx_listing(_saved(tmp_path / "a.onnx", stride=2))
    with pytest.raises(ValueError, match="not the graph this converter was written for"):
        checked_state(listing, derive_onnx_listing(_saved(tmp_path / "b.onnx", stride=1)), "b.onnx")


def test_unsupported_ops_are_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="Sigmoid"):
        derive_onnx_listing(path)


def _saved(path, stride: int):
    _tiny_graph(path, stride)
    return path
