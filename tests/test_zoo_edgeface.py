"""EdgeFace-S (gamma 0.5): the hand-written EdgeNeXt against its ONNX file, parity with onnxruntime, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecloak.core.zoo.converters import edgeface_s
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import ReferenceUnavailable, cache_status, load_model

NAME = "edgeface_s"


@pytest.fixture(scope="module")
def network(model_sources):
    pytest.importorskip("onnx", reason="onnx is needed to convert the EdgeFace file (build time only)")
    net = edgeface_s.build_network()
    net.load_state_dict(edgeface_s.convert(model_sources(NAME)), strict=True)
    return net.eval()


def _ours(network, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255).numpy()


def _reference(model_sources, crops: np.ndarray) -> np.ndarray:
    try:
        return edgeface_s.reference_embed(model_sources(NAME), np.ascontiguousarray(crops))
    except ReferenceUnavailable as err:
        pytest.skip(str(err))


def test_the_file_fills_the_network_exactly(model_sources):
    pytest.importorskip("onnx", reason="onnx is needed to convert the EdgeFace file (build time only)")
    state = edgeface_s.convert(model_sources(NAME))
    net = edgeface_s.build_network()
    assert set(state) == set(net.state_dict())
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in net.parameters()) == 3_665_096
    # the three SDTA blocks (channel chunks 2/3/4) and the one positional encoding, at 14x14 tokens
    assert state["stages.3.blocks.2.convs.2.weight"].shape == (76, 1, 3, 3)
    assert state["stages.1.blocks.2.pos_embd"].shape == (1, 196, 96)
    assert not any(k.startswith("stages.2.blocks.8.pos_embd") for k in state)


def test_another_graph_is_refused(model_sources, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is needed to convert the EdgeFace file (build time only)")

    model = onnx.load(str(model_sources(NAME)[0]))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.op_type = "LogSoftmax"
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="not the EdgeFace-S graph"):
        edgeface_s.convert([path])


def test_parity_with_onnxruntime_on_the_aligned_astronaut(network, model_sources, astronaut_photo, astronaut_faces):
    from facecloak.core.align import FaceAligner
    from facecloak.core.image import tensor_to_uint8

    face = tensor_to_uint8(FaceAligner(edgeface_s.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])[0])
    batch = np.stack([face, face[:, ::-1]])
    reference = _reference(model_sources, batch)
    ours = _ours(network, batch)
    assert ours.shape == reference.shape == (2, 512)
    scale = np.abs(reference).max()
    assert np.linalg.norm(reference, axis=1).min() > 1.0  # a real embedding (norm ~2.9), not zeros
    # measured: max |difference| 3.1e-6 on a largest component of 0.36 (8.8e-6 relative)
    assert np.abs(ours - reference).max() <= 1e-4 * scale
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 1 - 1e-6


def test_parity_with_onnxruntime_on_random_crops(network, model_sources):
    batch = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    reference = _reference(model_sources, batch)
    ours = _ours(network, batch)
    # measured: max |difference| 6.4e-6 on a largest component of 1.98 (3.2e-6 relative)
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_and_gradients_reach_the_input(network, batch, batch_and_gradient_check):
    # the ONNX export bakes a batch of 1 into its SDTA reshapes; the torch network takes any batch
    grad = batch_and_gradient_check(network, batch, 112, 512, atol=1e-5)
    assert (grad != 0).float().mean() > 0.9  # the whole crop, not a few pixels


def test_the_built_model_loads_offline_normalised_with_gradients():
    spec = load_manifest()[NAME]
    status = cache_status(spec)
    if not status.ready:
        pytest.skip(f"{NAME} is not built ({status.message})")
    model = load_model(NAME)
    crops = torch.rand(2, 3, 112, 112, requires_grad=True)
    out = model(crops)
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)  # FaceModel normalises; the graph does not
    (out[0] @ out[1]).backward()
    assert torch.isfinite(crops.grad).all() and crops.grad.abs().sum() > 0
