"""dlib ResNet converter: parses dlib's file, fills its architecture, matches dlib, tells people apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecloak.core.align import FaceAligner
from facecloak.core.image import tensor_to_uint8
from facecloak.core.zoo.converters import dlib_resnet

NAME = "dlib_resnet"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def parsed(sources):
    return dlib_resnet.parse_dat(sources[0])


@pytest.fixture(scope="module")
def network(sources):
    net = dlib_resnet.build_network()
    net.load_state_dict(dlib_resnet.convert(sources), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def astronaut_chips(astronaut_photo, astronaut_faces) -> np.ndarray:
    """The astronaut's face aligned for dlib (uint8, 1,150,150,3) plus a noise chip."""
    assert astronaut_faces, "MTCNN should find the astronaut"
    crops = FaceAligner(dlib_resnet.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    face = np.stack([tensor_to_uint8(c) for c in crops])
    noise = np.random.default_rng(0).integers(0, 256, (1, 150, 150, 3), dtype=np.uint8)
    return np.concatenate([face, noise])


def _embed(network: torch.nn.Module, chips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255.0).numpy()


def test_parsed_file_is_dlibs_resnet29(parsed):
    kinds = [layer.kind for layer in parsed.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14
    assert parsed.size == (150, 150)
    assert np.allclose(parsed.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    assert parsed.layers[0].weight.shape == (32, 3, 7, 7)
    assert parsed.layers[-1].kind == "fc" and parsed.layers[-1].weight.shape == (256, 128)
    assert all(np.isfinite(layer.weight).all() for layer in parsed.layers if layer.weight is not None)


def test_alignment_template_is_dlibs_padded_mean_face():
    points = np.array(dlib_resnet.ALIGNMENT.points)
    # eyes level and symmetric about the mean face's vertical axis (x = 0.490127)
    axis = (0.25 + 0.490127) / 1.5 * 150
    assert points[0, 1] == pytest.approx(points[1, 1])
    assert points[0, 0] + points[1, 0] == pytest.approx(2 * axis)
    assert points[3, 0] + points[4, 0] == pytest.approx(2 * axis)
    assert points[0, 0] < points[2, 0] < points[1, 0] and points[1, 1] < points[2, 1] < points[3, 1]


# --- an independent numpy forward of the parsed layers (checks the torch port without dlib) ---


def _np_conv(x: np.ndarray, layer) -> np.ndarray:
    c = layer.config
    x = np.pad(x, ((0, 0), (c["padding_y"],) * 2, (c["padding_x"],) * 2))
    windows = np.lib.stride_tricks.sliding_window_view(x, (c["nr"], c["nc"]), axis=(1, 2))
    windows = windows[:, :: c["stride_y"], :: c["stride_x"]]  # C,Ho,Wo,kh,kw
    return np.einsum("chwij,ncij->nhw", windows, layer.weight) + layer.bias[:, None, None]


def _np_pool(x: np.ndarray, layer, reduce) -> np.ndarray:
    c = layer.config
    if c["nr"] == 0:  # avg_pool_everything
        return x.mean(axis=(1, 2), keepdims=True)
    windows = np.lib.stride_tricks.sliding_window_view(x, (c["nr"], c["nc"]), axis=(1, 2))
    return reduce(windows[:, :: c["stride_y"], :: c["stride_x"]], axis=(3, 4))


def _np_add_prev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(tuple(max(s, t) for s, t in zip(a.shape, b.shape, strict=True)))
    out[: a.shape[0], : a.shape[1], : a.shape[2]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2]] += b
    return out


def _numpy_forward(parsed, chip: np.ndarray) -> np.ndarray:
    """dlib's graph on one HWC uint8 chip: each residual block's input is its shortcut."""
    x = (chip.astype(np.float64) - np.array(parsed.mean_rgb)).transpose(2, 0, 1) / 256.0
    block_input, shortcut = None, None
    for layer in parsed.layers:
        if layer.kind == "con":
            if block_input is None:
                block_input = shortcut = x
            x = _np_conv(x, layer)
        elif layer.kind == "affine":
            x = x * layer.weight[:, None, None] + layer.bias[:, None, None]
        elif layer.kind == "relu":
            x = np.maximum(x, 0)
        elif layer.kind == "max_pool":
            x = _np_pool(x, layer, np.max)
            block_input = None
        elif layer.kind == "avg_pool" and layer.config["nr"] == 0:
            x = _np_pool(x, layer, np.mean)
        elif layer.kind == "avg_pool":  # the down-sampling blocks pool their shortcut
            shortcut = _np_pool(block_input, layer, np.mean)
        elif layer.kind == "add_prev":
            x = _np_add_prev(x, shortcut)
            block_input = None
        elif layer.kind == "fc":
            x = x.reshape(-1) @ layer.weight
    return x


def test_torch_matches_numpy_forward_of_parsed_layers(parsed, network, astronaut_chips):
    block_starts = sum(1 for layer in parsed.layers if layer.kind == "add_prev")
    assert block_starts == len(network.blocks)
    expected = _numpy_forward(parsed, astronaut_chips[0])
    ours = _embed(network, astronaut_chips[:1])[0]
    assert np.abs(ours - expected).max() <= 1e-4


def test_add_prev_pads_mismatched_shapes():
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 2.0)
    out = dlib_resnet.add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, 0, 0, 0] == 3 and out[0, 3, 0, 0] == 1 and out[0, 0, 3, 3] == 2 and out[0, 3, 3, 3] == 0
