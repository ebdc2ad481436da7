"""The benchmarks run end to end (quick modes); they assert nothing about speed."""

from __future__ import annotations

import json

import pytest

from facecloak.core.cli import main
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import cache_status


def test_protect_benchmark_quick_runs_end_to_end(shared_data, tmp_path, capsys):
    manifest = load_manifest()
    for name in ("sface", "openface"):
        if not cache_status(manifest[name]).ready or manifest[name].verification is None:
            pytest.skip(f"{name} not converted and measured")
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "protect", "--quick", "--data", str(shared_data / "lfw"),
            "--ensemble", "sface", "--evaluators", "openface", "--output", str(out),
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
    assert "Headline (worst held-out cell)" in capsys.readouterr().out


def test_protect_benchmark_refuses_overlapping_roles(shared_data):
    with pytest.raises(ValueError, match="share model families"):
        main(["bench", "protect", "--quick", "--ensemble", "sface", "--evaluators", "sface"])


def test_tune_benchmark_refuses_the_reporting_evaluators(capsys):
    assert main(["bench", "tune", '{"a": {}}', "--judges", "openface"]) == 2
    assert "refusing to tune on the reporting evaluators: openface" in capsys.readouterr().out


def test_tune_benchmark_runs_on_tuning_judges(shared_data, capsys):
    manifest = load_manifest()
    for name in ("sface", "mobileface"):
        if not cache_status(manifest[name]).ready or manifest[name].verification is None:
            pytest.skip(f"{name} not converted and measured")
    args = ["bench", "tune", '{"one-step": {"steps": 1, "views_per_step": 1}}', "--data", str(shared_data / "lfw")]
    assert main([*args, "--identities", "2", "--probes", "1", "--ensemble", "sface", "--judges", "mobileface"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("one-step")]
    assert len(rows) == 1 and "mobileface" in rows[0] and "jpegq75:" in rows[0]
    haarpsi = float(rows[0].split("haarpsi ")[1].split()[0])
    assert 0.5 < haarpsi < 1.0  # the attack changed the face, a little


def test_tune_sample_protects_every_photo_in_turn_when_asked(shared_data):
    from facecloak.core.bench_tune import _tuning_faces

    one = _tuning_faces(shared_data / "lfw", 2, probes=2, seed=5, every_photo=False)
    every = _tuning_faces(shared_data / "lfw", 2, probes=2, seed=5, every_photo=True)
    assert len(one) == 2 and len(every) > 2
    assert {item.photo for item in one} <= {item.photo for item in every}
    for item in every:
        references = [path for path, _ in item.references]
        assert item.photo not in references and 1 <= len(references) <= 2
        assert {path.parent for path in references} == {item.photo.parent}  # same person, other photos


def test_tune_benchmark_refuses_an_unknown_knob_before_any_work(capsys):
    assert main(["bench", "tune", '{"typo": {"stepz": 3}}', "--judges", "mobileface"]) == 2
    assert "variant typo: unknown knob stepz" in capsys.readouterr().out


def test_markdown_sections_are_replaced_in_place_and_appended(tmp_path):
    from facecloak.core.bench import update_markdown_section

    doc = tmp_path / "BENCH.md"
    doc.write_text("# title\n\nhand-written summary\n")
    update_markdown_section(doc, "speed", "old numbers")
    update_markdown_section(doc, "album", "album numbers")
    update_markdown_section(doc, "speed", "new numbers")
    text = doc.read_text()
    assert text.startswith("# title\n\nhand-written summary\n")
    assert "new numbers" in text and "old numbers" not in text and "album numbers" in text
    assert text.index("<!-- speed:start -->") < text.index("<!-- album:start -->")
    left = [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"]
    assert left == ["BENCH.md"]  # no temp file left behind


def test_benchmarks_ending_together_keep_every_section(tmp_path):
    import threading

    from facecloak.core.bench import update_markdown_section

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


def test_model_speed_on_some_models_keeps_the_other_rows(tmp_path, monkeypatch):
    from facecloak.core import bench

    monkeypatch.setattr(bench, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    full = [("dlib_resnet", "150x150", 31.0, 126.0), ("sface", "112x112", 53.0, 457.0)]
    bench.update_markdown_section(bench.BENCHMARKS_MD, "model-speed", bench.model_speed_table(full, 5, False))
    table = bench.model_speed_table([("sface", "112x112", 40.0, 400.0)], 3, True)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "ms" not in line]
    assert rows == ["| dlib_resnet | 150x150 | 31 | 126 | 16 |", "| sface | 112x112 | 40 | 400 | 50 |"]
    assert "re-measured by" in table and table.count("Command:") == 1
