"""``facecloak bench transfer``: which rows attack, which columns score, shared attacks, the mean over modern
columns, the white-box share, and one end-to-end run on real photos."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from facecloak.bench.transfer import (
    EXPORT,
    UNENCODED,
    MatrixResult,
    Row,
    Scores,
    add_arguments,
    matrix_cells,
    modern_mean,
    parse_row,
    plan_matrix,
    run_transfer_benchmark,
    transfer_columns,
    transfer_table,
    white_box,
)
from facecloak.core.zoo.manifest import Roles, load_manifest
from facecloak.core.zoo.registry import cache_status


def spec(family: str, accuracy: float | None = 0.99, threshold: float = 0.4) -> SimpleNamespace:
    verification = None if accuracy is None else SimpleNamespace(accuracy=accuracy, threshold_far_1e3=threshold)
    return SimpleNamespace(family=family, verification=verification)


# a1 and a2 share a family; e is a reporting evaluator; old is of the FaceNet generation; weak is below 98.5%
ZOO = {
    "a1": spec("fam-a"),
    "a2": spec("fam-a"),
    "b": spec("fam-b"),
    "c": spec("fam-c"),
    "judge": spec("fam-j"),
    "old": spec("facenet-vggface2"),
    "weak": spec("fam-w", accuracy=0.97),
    "unmeasured": spec("fam-u", accuracy=None),
    "e": spec("fam-e"),
}
DEFAULT = ("a1", "b", "c")


def row(text: str) -> Row:
    return parse_row(text, DEFAULT, list(ZOO))


def test_columns_are_the_accurate_models_never_an_evaluator():
    assert transfer_columns(ZOO, ["e"]) == ["a1", "a2", "b", "c", "judge", "old"]
    manifest, roles = load_manifest(), Roles.load()
    columns = transfer_columns(manifest, roles.evaluators)
    assert columns and not set(columns) & set(roles.evaluators)
    assert all(manifest[c].verification.accuracy >= 0.985 for c in columns)
    assert "facenet_casia" not in columns  # 98.2% on LFW


def test_rows_parse_the_default_with_models_added_or_removed_or_an_explicit_list():
    assert row("default") == Row("default", DEFAULT)
    assert row("default+e").surrogates == ("a1", "b", "c", "e")
    assert row("default-b+e").surrogates == ("a1", "c", "e")
    assert row("judge, c").surrogates == ("judge", "c")
    for bad, message in [
        ("default+nope", "unknown model nope"),
        ("default-e", "e is not in the default ensemble"),
        ("default-a1-b-c", "no surrogate left"),
        ("b,b", "named twice"),
        ("default+", r"write default\+NAME"),
        ("default*e", r"unknown model default\*e"),
    ]:
        with pytest.raises(ValueError, match=message):
            row(bad)


def test_each_cell_attacks_with_the_row_less_the_columns_family_and_attacks_are_shared():
    rows = [row("default"), row("default+e"), row("default-b")]
    plan = plan_matrix(rows, ["a2", "b", "judge"], ZOO)
    cells = {key: (None if attack is None else plan.attacks[attack]) for key, attack in plan.cells.items()}
    assert cells[("default", "a2")] == ("b", "c")  # a1 leaves with its family
    assert cells[("default", "b")] == ("a1", "c")
    assert cells[("default", "judge")] == DEFAULT  # not a surrogate: the whole row attacks
    assert cells[("default+e", "judge")] == ("a1", "b", "c", "e")  # an evaluator may be a surrogate
    assert cells[("default-b", "a2")] == ("c",)
    assert cells[("default-b", "b")] == cells[("default-b", "judge")] == ("a1", "c")
    # one attack per distinct ensemble: default's b cell is default-b's whole row
    assert len(plan.attacks) == 7
    shared = frozenset({"a1", "c"})
    assert plan.scorers[shared] == ["b", "a1", "c", "judge"]  # two columns and default-b's white-box members
    assert plan.scorers[frozenset(DEFAULT)] == ["a1", "b", "c", "judge"]
    assert plan.scorers[frozenset({"b", "c"})] == ["a2"]


def test_a_row_of_one_family_has_no_cell_for_that_family():
    plan = plan_matrix([row("a1")], ["a2", "b"], ZOO)
    assert plan.cells[("a1", "a2")] is None
    assert plan.attacks[plan.cells[("a1", "b")]] == ("a1",)


def _scores(values: dict[tuple[Sequence[str], str], list[float]]) -> Scores:
    scores = Scores()
    for (ensemble, model), sims in values.items():
        scores.add(frozenset(ensemble), model, EXPORT, sims)
        scores.add(frozenset(ensemble), model, UNENCODED, [s + 0.1 for s in sims])  # encoding washes some out
        scores.haarpsi[frozenset(ensemble)] = [0.97, 0.98]
    return scores


def test_cells_count_pairs_below_threshold_and_the_mean_skips_older_columns():
    plan = plan_matrix([row("default")], ["a2", "old", "judge"], ZOO)
    scores = _scores(
        {
            (("b", "c"), "a2"): [0.1, 0.35, 0.5, 0.6],  # 2 of 4 below 0.4 (1 before encoding)
            (DEFAULT, "old"): [0.0, 0.0, 0.0, 0.0],  # all below, but not modern
            (DEFAULT, "judge"): [0.1, 0.1, 0.1, 0.9],  # 3 of 4
            (DEFAULT, "a1"): [0.5, 0.1, 0.1, 0.1],  # white-box: 1 of 4 still matched
            (DEFAULT, "b"): [0.1, 0.1, 0.1, 0.1],
            (DEFAULT, "c"): [0.4, 0.35, 0.1, 0.1],  # the threshold itself still matches
        },
    )
    thresholds = {name: 0.4 for name in ZOO}
    cells = matrix_cells(plan, scores, thresholds)
    assert (cells[("default", "a2")].below, cells[("default", "a2")].pairs) == (2, 4)
    assert cells[("default", "old")].share == 1.0
    assert cells[("default", "judge")].share == 0.75
    assert cells[("default", "judge")].haarpsi == pytest.approx(0.975)
    lo, hi = cells[("default", "judge")].interval
    assert lo < 0.75 < hi and hi - lo > 0.5  # four pairs say little
    assert modern_mean(plan.rows[0], cells, plan.columns, ZOO) == pytest.approx((0.5 + 0.75) / 2)
    assert white_box(plan.rows[0], scores, thresholds) == {"a1": (1, 4), "b": (0, 4), "c": (1, 4)}
    assert white_box(plan.rows[0], scores, thresholds, UNENCODED) == {"a1": (1, 4), "b": (0, 4), "c": (2, 4)}

    table = transfer_table(MatrixResult(plan, scores, thresholds, 2), ZOO, "### heading", "facecloak bench transfer")
    header = next(line for line in table.splitlines() if line.startswith("| row |"))
    assert header.split(" | ")[1:4] == ["a2", "old", "judge"] and "mean over left-out modern models" in header
    default_line = next(line for line in table.splitlines() if line.startswith("| default |"))
    assert "50% [15-85], 0.9750" in default_line and "| 62% |" in default_line
    # white-box: mean over members after the export's encoding, then before it
    assert "17% (worst a1 25%) [25% (worst c 50%)]" in default_line
    summary = MatrixResult(plan, scores, thresholds, 2).summary(ZOO)
    assert summary["rows"][0]["cells"]["a2"]["ensemble"] == ["b", "c"]
    assert summary["rows"][0]["cells"]["a2"]["share_unencoded"] == 0.25
    # the pairs themselves, in order, so two runs on one sample can be compared face by face
    assert summary["rows"][0]["cells"]["a2"]["similarities"] == scores.of(frozenset({"b", "c"}), "a2")


def transfer(argv: Sequence[str]) -> int:
    """``facecloak bench transfer ...`` through the module's own arguments (``sys.argv`` too: the table quotes it)."""
    parser = argparse.ArgumentParser(prog="facecloak bench transfer")
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    saved, sys.argv = sys.argv, ["facecloak", "bench", "transfer", *argv]
    try:
        return run_transfer_benchmark(args)
    finally:
        sys.argv = saved


def test_bad_rows_and_missing_data_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    assert transfer(["--rows", "default+nobody", "--data", str(tmp_path)]) == 2
    assert "unknown model nobody" in capsys.readouterr().err
    assert transfer(["--steps", "0", "--data", str(tmp_path)]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    monkeypatch.delenv("FACECLOAK_DATA", raising=False)
    assert transfer(["--rows", "default"]) == 2
    assert "no data folder" in capsys.readouterr().err


def test_bad_knobs_and_trained_surrogates_are_refused_before_any_work(tmp_path, capsys):
    data = ["--data", str(tmp_path)]
    assert transfer([*data, "--set", "no_such_knob=1"]) == 2
    assert "no_such_knob" in capsys.readouterr().err
    assert transfer([*data, "--surrogate", "rob"]) == 2
    assert "--surrogate takes NAME=PATH" in capsys.readouterr().err
    assert transfer([*data, "--surrogate", f"rob={tmp_path / 'missing.safetensors'}"]) == 2
    assert "no file" in capsys.readouterr().err


@pytest.mark.needs_models
def test_transfer_matrix_end_to_end_on_two_identities(shared_data, tmp_path, capsys):
    manifest = load_manifest()
    needed = {*Roles.load().ensemble, *transfer_columns(manifest, Roles.load().evaluators)}
    if not all(cache_status(manifest[name]).ready for name in needed):
        pytest.skip("the ensemble and column models are not all converted")
    page, output = tmp_path / "BENCHMARKS.md", tmp_path / "matrix.json"
    argv = ["--data", str(shared_data / "lfw"), "--identities", "2", "--probes", "1", "--steps", "2"]
    assert transfer([*argv, "--rows", "default", "--results", str(page), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "6 attacks per face for 1 row(s)" in out  # the whole ensemble, and it less each of 5 column families
    summary = json.loads(output.read_text())["folders"]["lfw"]
    assert summary["faces"] == 2 and "facenet_vggface2" in summary["columns"] and "sface" in summary["columns"]
    [default] = summary["rows"]
    pairs = {cell["pairs"] for cell in default["cells"].values()}
    assert pairs == {2}  # every column scored both faces once
    assert [p["pairs"] for p in summary["photos"]] == [1, 1] and "/" in summary["photos"][0]["photo"]
    sface = default["cells"]["sface"]
    assert len(sface["similarities"]) == 2 and len(sface["haarpsi_per_face"]) == 2
    assert default["cells"]["sface"]["ensemble"] == list(Roles.load().ensemble)
    assert "edgeface_s" not in default["cells"]["edgeface_s"]["ensemble"]
    assert 0 <= default["mean_modern"] <= 1 and 0.5 < default["haarpsi"] < 1.0
    assert set(default["white_box_still_matched"][EXPORT]) == set(Roles.load().ensemble)
    text = page.read_text()
    assert "<!-- transfer-mid-steps2-lfw:start -->" in text and "| default |" in text
    assert "--data $FACECLOAK_DATA/lfw" in text or "--data .../lfw" in text
    assert {p.name for p in tmp_path.iterdir()} <= {page.name, output.name, f".{page.name}.lock"}
