"""The benchmarks: quick end-to-end runs (no assertion about speed), explicit data and output paths, and the
results page, whose sections each benchmark replaces or creates under their group heading."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from facecloak.bench.common import add_bench_parsers
from facecloak.core.zoo.manifest import load_manifest, manifest_path
from facecloak.core.zoo.registry import cache_status


def bench(argv: Sequence[str]) -> int:
    """Run ``facecloak bench ...`` through :func:`add_bench_parsers`, as the command line does (``sys.argv`` too:
    the results page quotes the command)."""
    parser = argparse.ArgumentParser(prog="facecloak")
    add_bench_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    saved, sys.argv = sys.argv, ["facecloak", *argv]
    try:
        return args.func(args)
    finally:
        sys.argv = saved


def require_models(*names: str) -> None:
    manifest = load_manifest()
    for name in names:
        if not cache_status(manifest[name]).ready or manifest[name].verification is None:
            pytest.skip(f"{name} not converted and measured")


PAGE = """# FaceCloak benchmarks

How to read this page.

```sh
# a comment in a code fence is no heading
facecloak bench protect --results docs/BENCHMARKS.md
```

## Protection by preset

<!-- protect-mid-lfw:start -->
### `mid` preset, LFW (50 identities)

mid numbers
<!-- protect-mid-lfw:end -->

## Speed

Hand-written speed notes.

<!-- speed:start -->
### speed table
<!-- speed:end -->

## Limits

Hand-written limits.
"""


def test_protect_benchmark_quick_runs_end_to_end(shared_data, tmp_path, capsys):
    require_models("sface", "openface")
    out, page = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    code = bench(
        [
            "bench", "protect", "--quick", "--data", str(shared_data / "lfw"),
            "--ensemble", "sface", "--evaluators", "openface", "--output", str(out), "--results", str(page),
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["identities"] >= 2
    assert summary["ensemble"] == ["sface"] and summary["evaluators"] == ["openface"]
    roles = {c["model"]: c["role"] for c in summary["cells"]}
    assert roles == {"sface": "ensemble (white-box)", "openface": "held-out"}
    none = [c for c in summary["cells"] if c["transform"] == "none"]
    for cell in none:
        assert 0 <= cell["verification_protected"] <= 1
        lo, hi = cell["verification_ci"]
        assert lo <= cell["verification_protected"] <= hi
    printed = capsys.readouterr().out
    assert "Headline (worst held-out cell)" in printed
    assert f"### `mid` preset, LFW ({summary['identities']} identities) (quick)" in printed
    assert not page.exists()  # a quick run's numbers never reach the results page


def test_protect_benchmark_refuses_overlapping_roles(shared_data):
    with pytest.raises(ValueError, match="share model families"):
        bench(["bench", "protect", "--quick", "--ensemble", "sface", "--evaluators", "sface"])


def test_tune_benchmark_refuses_the_reporting_evaluators(capsys):
    assert bench(["bench", "tune", '{"a": {}}', "--judges", "openface"]) == 2
    assert "refusing to tune on the reporting evaluators: openface" in capsys.readouterr().out


def test_tune_benchmark_runs_on_tuning_judges(shared_data, capsys):
    require_models("sface", "mobileface")
    args = ["bench", "tune", '{"one-step": {"steps": 1, "views_per_step": 1}}', "--data", str(shared_data / "lfw")]
    assert bench([*args, "--identities", "2", "--probes", "1", "--ensemble", "sface", "--judges", "mobileface"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("one-step")]
    assert len(rows) == 1 and "mobileface" in rows[0] and "jpegq75:" in rows[0]
    haarpsi = float(rows[0].split("haarpsi ")[1].split()[0])
    assert 0.5 < haarpsi < 1.0  # the attack changed the face, a little


def test_tune_sample_protects_every_photo_in_turn_when_asked(shared_data):
    from facecloak.bench.tune import _tuning_faces

    one = _tuning_faces(shared_data / "lfw", 2, probes=2, seed=5, every_photo=False)
    every = _tuning_faces(shared_data / "lfw", 2, probes=2, seed=5, every_photo=True)
    assert len(one) == 2 and len(every) > 2
    assert {item.photo for item in one} <= {item.photo for item in every}
    for item in every:
        references = [path for path, _ in item.references]
        assert item.photo not in references and 1 <= len(references) <= 2
        assert {path.parent for path in references} == {item.photo.parent}  # same person, other photos


def test_tune_benchmark_refuses_an_unknown_knob_before_any_work(capsys):
    assert bench(["bench", "tune", '{"typo": {"stepz": 3}}', "--judges", "mobileface"]) == 2
    assert "variant typo: unknown knob stepz" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "lfw"],
        ["bench", "speed"],
        ["bench", "protect"],
        ["bench", "album"],
        ["bench", "tune", '{"a": {}}', "--judges", "mobileface"],
    ],
)
def test_benchmarks_need_a_data_folder_named(argv, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("FACECLOAK_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing is looked for relative to the working directory
    assert bench(argv) == 2
    err = capsys.readouterr().err
    assert "no data folder: pass --data DIR or set FACECLOAK_DATA" in err
    assert "Traceback" not in err


def test_the_data_folder_comes_from_facecloak_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACECLOAK_DATA", str(tmp_path / "data"))
    assert bench(["bench", "lfw"]) == 2
    assert f"LFW not found under {tmp_path / 'data'}" in capsys.readouterr().err
    assert bench(["bench", "speed"]) == 2
    assert f"{tmp_path / 'data' / 'people' / 'person_02' / 'img49.jpg'} not found" in capsys.readouterr().err


def test_an_unreadable_manifest_is_refused_before_any_work(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "lfw").mkdir(parents=True)
    (data / "lfw_protocol").mkdir()
    (data / "lfw_protocol" / "pairs.txt").write_text("10\t300\n")
    assert bench(["bench", "lfw", "--data", str(data), "--manifest", str(tmp_path / "missing.json")]) == 2
    assert f"--manifest {tmp_path / 'missing.json'}: not a readable models.json" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"settings": []}')
    assert bench(["bench", "lfw", "--data", str(data), "--manifest", str(tmp_path / "other.json")]) == 2
    assert 'not a models.json (no "models" list)' in capsys.readouterr().err


def test_lfw_thresholds_go_to_the_named_manifest_only(shared_data, tmp_path, capsys):
    require_models("openface")
    installed = manifest_path().read_bytes()
    copy, page = tmp_path / "models.json", tmp_path / "docs" / "BENCHMARKS.md"
    copy.write_bytes(installed)
    argv = ["bench", "lfw", "--data", str(shared_data), "--models", "openface", "--pairs", "4", "--impostors", "10"]
    assert bench([*argv, "--manifest", str(copy), "--results", str(page)]) == 0
    assert manifest_path().read_bytes() == installed  # the installed package is never written
    stored = {m["name"]: m for m in json.loads(copy.read_text())["models"]}
    verification = stored["openface"]["verification"]
    assert verification["pairs_same"] <= 4 and verification["pairs_different"] == 10
    assert verification["command"] == (
        "facecloak bench lfw --data $FACECLOAK_DATA --models openface --pairs 4 --impostors 10"
    )
    text = page.read_text()
    assert text.index("## Thresholds: the models on LFW") < text.index("<!-- lfw:start -->")
    row = next(line for line in text.splitlines() if line.startswith("| openface |"))
    assert f"| {verification['pairs_same']} / 10 |" in row and str(tmp_path) not in text


def test_a_writer_replaces_only_its_own_section(tmp_path):
    from facecloak.bench.common import update_markdown_section

    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    update_markdown_section(page, "protect-mid-lfw", "### `mid` preset, LFW (50 identities)\n\nnew mid numbers")
    expected = PAGE.replace("\nmid numbers\n", "\nnew mid numbers\n")
    assert page.read_text() == expected
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"] == ["BENCHMARKS.md"]  # no temp file left


def test_a_missing_section_is_created_at_the_end_of_its_group(tmp_path):
    from facecloak.bench.common import update_markdown_section

    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    update_markdown_section(page, "protect-high-people", "### `high` preset, `people/` (13 identities)")
    update_markdown_section(page, "album", "### Albums")
    update_markdown_section(page, "lfw", "### LFW verification of the model zoo")
    text = page.read_text()
    order = [
        "# FaceCloak benchmarks",
        "# a comment in a code fence",
        "## Protection by preset",
        "<!-- protect-mid-lfw:end -->",
        "<!-- protect-high-people:start -->\n### `high` preset, `people/` (13 identities)\n"
        "<!-- protect-high-people:end -->\n\n## Speed",
        "<!-- speed:end -->",
        "<!-- album:start -->\n### Albums\n<!-- album:end -->\n\n## Limits",
        "Hand-written limits.\n\n## Thresholds: the models on LFW\n\n<!-- lfw:start -->",
    ]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert text.endswith("<!-- lfw:end -->\n")
    assert "mid numbers" in text and "Hand-written speed notes." in text


def test_a_new_page_gets_a_title_and_the_group(tmp_path):
    from facecloak.bench.common import update_markdown_section

    page = tmp_path / "docs" / "BENCHMARKS.md"
    update_markdown_section(page, "speed", "### speed table")
    assert page.read_text() == (
        "# FaceCloak benchmarks\n\n## Speed\n\n<!-- speed:start -->\n### speed table\n<!-- speed:end -->\n"
    )


def test_benchmarks_ending_together_keep_every_section(tmp_path):
    import threading

    from facecloak.bench.common import update_markdown_section

    doc = tmp_path / "BENCH.md"

    def write(key: str) -> None:
        for i in range(15):
            update_markdown_section(doc, key, f"{key} run {i}")

    threads = [threading.Thread(target=write, args=(f"bench{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = doc.read_text()
    assert all(f"bench{k} run 14" in text for k in range(6))


def test_model_speed_on_some_models_keeps_the_other_rows():
    from facecloak.bench import speed as module

    full = [("dlib_resnet", "150x150", 31.0, 126.0), ("sface", "112x112", 53.0, 457.0)]
    previous = module.model_speed_table(full, 5)
    table = module.model_speed_table([("sface", "112x112", 40.0, 400.0)], 3, previous)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "ms" not in line]
    assert rows == ["| dlib_resnet | 150x150 | 31 | 126 | 16 |", "| sface | 112x112 | 40 | 400 | 50 |"]
    assert "re-measured by" in table and table.count("Command:") == 1


def test_model_speed_writes_the_page_only_when_named(tmp_path, monkeypatch, capsys):
    require_models("mobileface")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "speed.json"
    assert bench(["bench", "models", "--models", "mobileface", "--repeats", "1", "--output", str(out)]) == 0
    assert "results page not updated: pass --results" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "speed.json"]  # only the JSON asked for

    page = tmp_path / "page.md"
    page.write_text(PAGE)
    assert bench(["bench", "models", "--models", "mobileface", "--repeats", "1", "--results", str(page)]) == 0
    text = page.read_text()
    section = text[text.index("<!-- model-speed:start -->") : text.index("## Limits")]
    assert text.index("<!-- speed:end -->") < text.index("<!-- model-speed:start -->")
    assert "| mobileface | 112x112 |" in section
    assert "`facecloak bench models --models mobileface --repeats 1` (" in section and str(tmp_path) not in section


def test_commands_on_the_page_name_no_machine_paths(tmp_path):
    from facecloak.bench.common import _stored_command, portable_command

    root = tmp_path / "data"
    argv = [
        "bench", "protect", "--data", str(root / "lfw"), "--identities", "50", "--output", "/tmp/x.json",
        f"--results={tmp_path}/docs/BENCHMARKS.md", "--crops", str(tmp_path / "crops"), "--photo", "/home/me/a.jpg",
    ]  # fmt: skip
    assert portable_command(argv, root) == (
        "facecloak bench protect --data $FACECLOAK_DATA/lfw --identities 50 --photo .../a.jpg"
    )
    tune = ["bench", "tune", '{"a": {"x": "1/2"}}', "--data", str(root)]
    assert portable_command(tune, root) == 'facecloak bench tune {"a": {"x": "1/2"}} --data $FACECLOAK_DATA'
    stored = "facecloak bench lfw --data /work/shared/data --models sface openface --output /tmp/lfw_so.json"
    assert _stored_command(stored) == "facecloak bench lfw --data $FACECLOAK_DATA --models sface openface"
    stored = "facecloak bench lfw --data ../shared/data --models dlib_resnet --write-manifest"
    assert _stored_command(stored) == "facecloak bench lfw --data $FACECLOAK_DATA --models dlib_resnet"


def test_protection_headings_name_the_preset_and_the_photos():
    from facecloak.bench.protect import protection_heading, protection_key

    assert protection_heading("mid", {}, ["/d/lfw"], 50, False) == "### `mid` preset, LFW (50 identities)"
    overrides = {"dssim_budget": 0.025, "epsilon": 24 / 255}
    assert protection_heading("high", overrides, [str(Path("d") / "people")], 13, False) == (
        "### `high` preset, dssim_budget 0.025, epsilon 24/255, `people/` (13 identities)"
    )
    assert protection_key({"preset": "high", "overrides": overrides, "data": ["/d/lfw"]}) == (
        "protect-high-dssim_budget0.025-epsilon24_255-lfw"
    )


def astronaut_file(folder: Path) -> Path:
    from PIL import Image
    from skimage.data import astronaut

    path = folder / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    return path


def test_speed_benchmark_times_every_stage_with_random_weights(tmp_path, monkeypatch, capsys):
    """No model cache needed (an empty one is named): every stage of one photo is timed, seconds per face given,
    the random weights said, and the JSON rows add up."""
    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "empty-cache"))
    out, page = tmp_path / "speed.json", tmp_path / "BENCHMARKS.md"
    argv = [
        "bench", "speed", "--photo", str(astronaut_file(tmp_path)), "--random-weights", "--presets", "low",
        "--set", "steps=2", "--set", "views_per_step=1", "--ensemble", "mobileface", "--evaluators", "openface",
        "--device", "cpu", "--output", str(out), "--results", str(page),
    ]  # fmt: skip
    assert bench(argv) == 0
    printed = capsys.readouterr().out
    assert "random weights of each model's true architecture" in printed
    summary = json.loads(out.read_text())
    assert summary["random_weights"] is True and summary["device"].startswith("CPU")
    (row,) = summary["rows"]
    assert list(row["seconds"]) == ["load", "detect", "attack", "compose", "export", "report"]
    assert row["faces"] == 1 and row["photo"] == "512x512" and row["peak_gpu_mb"] is None
    assert row["total"] == pytest.approx(sum(row["seconds"].values()))
    assert row["per_face"] == pytest.approx(row["total"])
    assert all(value > 0 for value in row["seconds"].values())
    text = page.read_text()
    section = text[text.index("<!-- speed-random:start -->") : text.index("<!-- speed-random:end -->")]
    assert (
        "| preset | photo | faces | load (s) | detect (s) | attack (s) | compose (s) | export (s) | report (s)"
        in section
    )
    assert "Share of the time per stage: low: load " in section and "random weights" in section
    assert "steps per face: low 2." in section  # the steps that ran (a GPU's presets take more)
    assert not list(tmp_path.glob("*_cloaked*"))  # the protected copy went to a temporary folder


def test_speed_benchmark_refuses_bad_input_before_any_work(tmp_path, capsys):
    photo = astronaut_file(tmp_path)
    assert bench(["bench", "speed", "--photo", str(photo), "--random-weights", "--set", "stepz=2"]) == 2
    assert "--set: unknown knob stepz" in capsys.readouterr().err
    assert bench(["bench", "speed", "--photo", str(photo), "--repeats", "0"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench(["bench", "speed", "--photo", str(photo), "--random-weights", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "device 'cuda' is not available here" in err and "Traceback" not in err


def test_random_weights_build_each_true_architecture_without_the_cache(tmp_path, monkeypatch):
    """Random-weight models have the cached models' exact parameter shapes and give finite embeddings and
    gradients; the report's evaluator built inside ``random_weights_loader`` takes them."""
    from facecloak.bench.speed import random_weights_loader, random_weights_model
    from facecloak.core.report import ProtectionEvaluator

    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "empty-cache"))
    manifest = load_manifest()
    for name in ("mobileface", "openface", "edgeface_s"):
        model = random_weights_model(name)
        assert model.random_weights and model.name == name
        crops = torch.rand(2, 3, *model.input_size, requires_grad=True)
        embeddings = model(crops)
        assert embeddings.shape == (2, manifest[name].embedding_dim) and torch.isfinite(embeddings).all()
        embeddings[0].sum().backward()
        assert torch.isfinite(crops.grad).all() and crops.grad.abs().sum() > 0
    graph = random_weights_model("mobileface").network  # a listing's constants start as zeros
    assert all(float(p.abs().sum()) > 0 for p in graph.parameters() if p.numel() > 1)
    with random_weights_loader():
        evaluator = ProtectionEvaluator(["openface"], device="cpu")
    assert [m.name for m in evaluator.models] == ["openface"] and evaluator.models[0].random_weights
    from facecloak.core.zoo.registry import cache_status

    assert not cache_status(manifest["openface"]).ready  # the loader's stand-ins are gone again


def test_model_speed_times_random_weights_on_a_named_device(tmp_path, capsys):
    out = tmp_path / "models.json"
    argv = ["bench", "models", "--models", "mobileface", "--repeats", "1", "--random-weights", "--output", str(out)]
    assert bench(argv) == 0
    (row,) = json.loads(out.read_text())
    assert row[0] == "mobileface" and row[1] == "112x112" and row[2] > 0 and row[3] > 0
    printed = capsys.readouterr().out
    assert "### Model speed: forward + backward on the CPU" in printed and "random weights" in printed
