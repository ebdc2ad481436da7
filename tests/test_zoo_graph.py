"""GraphModel, the one converter of the zoo's graph models (TensorFlow.js, ONNX and TFLite listings)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch

from facecloak.core.zoo import registry
from facecloak.core.zoo.graph import GraphModel, GraphNetwork
from facecloak.core.zoo.manifest import load_manifest

MANIFEST = load_manifest()
GRAPHS: dict[str, GraphModel] = {
    name: module.GRAPH for name in MANIFEST if hasattr(module := registry.converter(name), "GRAPH")
}


def test_every_shipped_listing_belongs_to_one_graph_model_of_each_format():
    shipped = {p.name for p in (resources.files("facecloak.core.zoo") / "listings").iterdir()}
    assert shipped == {f"{graph.name}.txt" for graph in GRAPHS.values()}
    assert sorted(graph.format for graph in GRAPHS.values()) == ["onnx", "onnx", "tfjs", "tfjs", "tflite", "tflite"]


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_listing_builds_the_network_of_the_model(name):
    graph = GRAPHS[name]
    network = registry.converter(name).build_network()
    assert isinstance(network, GraphNetwork)
    assert graph.listing.startswith("input ") and graph.listing.endswith("\n")
    h, w = MANIFEST[name].input_size
    assert graph.listing.splitlines()[0] == f"input {h},{w},3"
    consts = [line.split()[1] for line in graph.listing.splitlines() if line.startswith("const ")]
    assert [n for n, _ in network.named_parameters()] == consts


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_network_feeds_its_graph_what_the_reference_runtime_is_fed(name):
    """The torch module maps [0, 1] crops inside; the reference runtime gets the package's own preprocessing of
    0-255 pixels: both must be the same input, or parity would compare two different functions."""
    graph = GRAPHS[name]
    h, w = MANIFEST[name].input_size
    crops = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    ours = graph.build_network().graph_input(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), graph.graph_input(crops), rtol=1e-6, atol=1e-5)


def test_a_graph_model_names_a_known_format_and_an_output_node_for_tfjs_only():
    with pytest.raises(ValueError, match="unknown graph format 'caffe'; known: tfjs, onnx, tflite"):
        GraphModel("m", "caffe")
    with pytest.raises(ValueError, match="only a tfjs graph, names its output node"):
        GraphModel("m", "tfjs")
    with pytest.raises(ValueError, match="only a tfjs graph, names its output node"):
        GraphModel("m", "onnx", output="embedding")
