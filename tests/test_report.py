"""The protection report: measured on held-out models, serialisable, honest in its summary."""

from __future__ import annotations

import json

import pytest
import torch

from facecloak.core.attack import Cloak, CloakConfig
from facecloak.core.report import (
    LIMITATIONS,
    ProtectionEvaluator,
    ProtectionReport,
    render_heatmap,
    render_similarity_bars,
    report_transforms,
    wilson_interval,
)
from facecloak.core.transforms import RobustnessConfig
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import cache_status, load_model

EVALUATOR, SURROGATE = "openface", "sface"


def need(name: str) -> None:
    spec = load_manifest()[name]
    if not cache_status(spec).ready or spec.verification is None:
        pytest.skip(f"{name} is not converted and measured yet")


@pytest.fixture(scope="module")
def report(astronaut_photo, astronaut_faces) -> ProtectionReport:
    need(EVALUATOR)
    need(SURROGATE)
    config = CloakConfig(steps=4, views_per_step=1, dssim_budget=0.02, robustness=RobustnessConfig(blur=False))
    protected = Cloak([load_model(SURROGATE)], config)(astronaut_photo, astronaut_faces).photo
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    return evaluator.report(astronaut_photo, protected, astronaut_faces, [SURROGATE])


@pytest.fixture(scope="module")
def evaluator_for_lpips() -> ProtectionEvaluator:
    need(EVALUATOR)
    return ProtectionEvaluator([EVALUATOR], device="cpu")


def test_report_grid_covers_every_evaluator_and_transform(report, astronaut_photo):
    transforms = report_transforms(tuple(astronaut_photo.shape[-2:]))
    assert report.evaluators == [EVALUATOR] and report.ensemble == [SURROGATE]
    assert len(report.faces) == 1
    assert len(report.faces[0].cells) == len(transforms)
    assert {"none", "median k11", "jpeg q50", "motion k5"} <= set(report.transforms)
    # a 512 px photo is never "resized to 1080 px"
    assert not any(t.startswith("resize") for t in report.transforms)


def test_clean_photo_matches_itself_and_protection_moves_it(report):
    none = next(c for c in report.faces[0].cells if c.transform == "none")
    assert none.similarity_before == pytest.approx(1.0, abs=1e-4)
    assert none.matched_before
    assert none.similarity_after < 0.999
    assert 0.0 <= report.match_rate_after <= 1.0
    assert report.match_rate_before > 0.5  # the clean photo survives most degradations unprotected
    worst = report.worst_after
    assert all(worst.margin_after >= c.margin_after for c in report.cells)


def test_report_round_trips_through_json(report):
    data = json.loads(report.to_json())
    again = ProtectionReport.from_dict(data)
    assert again.match_rate_after == pytest.approx(report.match_rate_after)
    assert again.summary == report.summary
    assert data["quality"]["perceptual_measure"].startswith("DSSIM")
    assert 0.9 < data["quality"]["ssim"] <= 1.0


def test_summary_names_the_outcome(report):
    n = len(report.evaluators)
    if report.match_rate_after == 0:
        assert report.summary.startswith(f"Not matched by {n} of {n}")
    elif any(c.matched_after for c in report.cells if c.transform == "none"):
        assert report.summary.startswith("Still matched")
    assert "held-out" in LIMITATIONS


def test_evaluator_of_an_ensemble_family_is_refused(astronaut_photo, astronaut_faces):
    need(EVALUATOR)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    with pytest.raises(ValueError, match="share model families"):
        evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [EVALUATOR])


def test_pictures_render(report):
    heat = render_heatmap(report)
    bars = render_similarity_bars(report)
    assert heat.width > 300 and heat.height > 100
    assert bars.height > 40
    # not a blank canvas: cells are coloured
    assert len(heat.getcolors(maxcolors=100_000)) > 5


def test_wilson_interval():
    lo, hi = wilson_interval(95, 100)
    assert 0.88 < lo < 0.95 < hi < 0.99
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_reference_photos_of_the_same_person_are_compared(astronaut_photo, astronaut_faces):
    need(EVALUATOR)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    flipped = torch.flip(astronaut_photo, dims=[-1])
    width = astronaut_photo.shape[-1]
    from facecloak.core.detect import Face

    f = astronaut_faces[0]
    mirrored = Face(
        box=(width - 1 - f.box[2], f.box[1], width - 1 - f.box[0], f.box[3]),
        score=f.score,
        landmarks=tuple(
            (width - 1 - x, y)
            for x, y in (f.landmarks[1], f.landmarks[0], f.landmarks[2], f.landmarks[4], f.landmarks[3])
        ),
    )
    rep = evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [SURROGATE], [flipped], [mirrored])
    ref = rep.faces[0].references[0]
    assert ref.similarity_before == pytest.approx(ref.similarity_after, abs=1e-5)
    assert ref.similarity_before > 0.5


def test_report_command_on_files(report, astronaut, tmp_path, capsys):
    from PIL import Image

    from facecloak.cli import main

    need(EVALUATOR)
    original = tmp_path / "astro.png"
    Image.fromarray(astronaut).save(original)
    other = tmp_path / "small.png"
    Image.fromarray(astronaut).resize((300, 300)).save(other)
    out = tmp_path / "report.json"
    args = ["report", str(original), "--against", str(original), str(other), "--evaluators", EVALUATOR]
    assert main([*args, "--ensemble", SURROGATE, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "match rate at FAR 1e-3" in text and "held-out evaluators: openface" in text
    data = json.loads(out.read_text())
    # an unprotected photo against itself: everything still matches where the clean photo did
    assert data["match_rate_after"] == pytest.approx(data["match_rate_before"])
    assert len(data["faces"][0]["references"]) == 1
    assert main(["report", str(original), "--against", str(other), "--evaluators", EVALUATOR]) == 2


def test_album_photos_of_the_same_person_are_found_and_compared(
    astronaut_photo, astronaut_faces, shared_data, detector
):
    from facecloak.bench.verification import central_face
    from facecloak.core.image import load_image

    need(EVALUATOR)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    stranger_photo = load_image(shared_data / "lfw" / "Abdullah" / "Abdullah_0001.jpg")
    stranger_face = central_face(detector.detect(stranger_photo), *stranger_photo.shape[-2:])
    stranger = evaluator.embed_face(stranger_photo, stranger_face)
    itself = evaluator.embed_face(astronaut_photo, astronaut_faces[0])
    assert evaluator.same_person(itself, itself)
    assert not evaluator.same_person(itself, stranger)
    rep = evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [SURROGATE], album=[itself, stranger])
    assert len(rep.faces[0].references) == 1  # the stranger is not "another photo of this person"
    assert rep.faces[0].linked_after == 1  # unprotected, the photo is still linked
    assert "Linked by a held-out recogniser to 1 of 1 other photos" in rep.summary
    assert set(itself) == {EVALUATOR}  # one embedding per evaluator


def test_report_measures_lpips_only_when_its_backbone_is_cached(
    evaluator_for_lpips, astronaut_photo, astronaut_faces, tmp_path, monkeypatch
):
    from torchvision.models import alexnet

    from facecloak.core import perceptual

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    protected = (astronaut_photo + 0.03 * torch.randn_like(astronaut_photo)).clamp(0, 1)
    without = evaluator_for_lpips.report(astronaut_photo, protected, astronaut_faces, [SURROGATE])
    assert without.quality["lpips"] is None and "LPIPS not measured" in without.quality["perceptual_measure"]
    # a stand-in backbone (random AlexNet) where torchvision keeps the real one: the report now measures LPIPS
    perceptual.alexnet_checkpoint().parent.mkdir(parents=True)
    torch.save(alexnet(weights=None).state_dict(), perceptual.alexnet_checkpoint())
    measured = evaluator_for_lpips.report(astronaut_photo, protected, astronaut_faces, [SURROGATE])
    assert measured.quality["lpips"] > 0 and "LPIPS (alex)" in measured.quality["perceptual_measure"]
