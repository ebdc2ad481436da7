"""The protection report: measured on held-out models, serialisable, honest in its summary."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from facecloak.core.attack import Cloak, CloakCancelled, CloakConfig
from facecloak.core.report import (
    DEFAULT_VIEWS,
    LIMITATIONS,
    OWN_ORIGINAL,
    SEARCH,
    VERIFICATION,
    ProtectionEvaluator,
    ProtectionReport,
    degraded_embeddings,
    effort_sentence,
    photo_ssim,
    render_heatmap,
    render_similarity_bars,
    render_threats,
    report_transforms,
    wilson_interval,
)
from facecloak.core.search import SearchThresholds, ThresholdEstimate
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


def test_report_grid_is_the_default_views_of_every_evaluator(report, astronaut_photo):
    transforms = report_transforms(tuple(astronaut_photo.shape[-2:]), full=False)
    assert report.evaluators == [EVALUATOR] and report.ensemble == [SURROGATE]
    assert len(report.faces) == 1
    assert len(report.faces[0].cells) == len(transforms)
    assert set(report.transforms) <= set(DEFAULT_VIEWS)
    assert set(report.transforms) == {"none", "jpeg q75", "box k9", "motion k9", "median k5"}
    # a 512 px photo is never "resized to 720 px"
    assert not any(t.startswith("resize") for t in report.transforms)
    full = report_transforms(tuple(astronaut_photo.shape[-2:]))
    assert {"median k11", "motion k5", "jpeg q95"} <= {t.name for t in full} and len(full) == 25


def test_full_sweep_gives_the_numbers_of_degrading_the_whole_frame_per_model(astronaut_photo, astronaut_faces):
    """The fast path (each view degraded once, on the aligners' window only) against the slow one (the face's
    whole frame degraded again for each model): the same similarities, on every view."""
    need(EVALUATOR)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    protected = (astronaut_photo + 0.03 * torch.randn_like(astronaut_photo)).clamp(0, 1)
    rep = evaluator.report(astronaut_photo, protected, astronaut_faces, [SURROGATE], full_sweep=True)
    face = astronaut_faces[0]
    model = evaluator.models[0]
    transforms = report_transforms(tuple(astronaut_photo.shape[-2:]))
    with torch.no_grad():
        anchor = model(model.aligner(astronaut_photo, [face]))[0]
        slow_after = degraded_embeddings(model, protected, face, transforms) @ anchor
        slow_before = degraded_embeddings(model, astronaut_photo, face, transforms) @ anchor
    fast = rep.faces[0].cells
    assert [c.transform for c in fast] == [t.name for t in transforms]
    assert [c.similarity_after for c in fast] == pytest.approx(slow_after.tolist(), abs=1e-5)
    assert [c.similarity_before for c in fast] == pytest.approx(slow_before.tolist(), abs=1e-5)


def test_windowed_resize_is_the_frame_resized(monkeypatch):
    """A resize computed for the window alone equals resizing the whole frame (down with antialiasing, back up)."""
    import torch.nn.functional as F

    from facecloak.core.report_views import FaceWindow, windowed_resize

    torch.manual_seed(0)
    photo = torch.rand(1, 3, 900, 1300)
    where = FaceWindow(frame=(20, 880, 100, 1250), window=(300, 620, 400, 811), face=None)
    frame = photo[..., 20:880, 100:1250]
    for scale in (720 / 1300, 0.3, 0.123):
        small = (max(8, round(860 * scale)), max(8, round(1150 * scale)))
        down = F.interpolate(frame, size=small, mode="bilinear", antialias=True, align_corners=False)
        whole = F.interpolate(down, size=(860, 1150), mode="bilinear", align_corners=False)
        expected = whole[..., 280:600, 300:711]
        got = windowed_resize(photo, scale, where)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=2e-5)


def test_photo_ssim_counts_untouched_pixels_as_identical():
    from facecloak.core.quality import ssim

    torch.manual_seed(0)
    a = torch.rand(1, 3, 300, 420)
    b = a.clone()
    b[..., 100:140, 200:260] += 0.05 * torch.randn(1, 3, 40, 60)
    b[..., 0:3, 0:5] = 0.5  # a change at the border: reflected padding there as well
    b = b.clamp(0, 1)
    expected = float(ssim(a, b)[0])
    assert photo_ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert photo_ssim(a, b, rows=17) == pytest.approx(expected, abs=1e-6)  # strip by strip: the same
    assert photo_ssim(a, a) == 1.0


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
    effort = {"steps": 30, "device": "NVIDIA H200 (CUDA, 150 GB)"}
    data = json.loads(dataclasses.replace(report, attack=effort).to_json())
    assert ProtectionReport.from_dict(data).attack == effort
    assert effort_sentence(ProtectionReport.from_dict(data)) == "Protected in 30 steps on NVIDIA H200 (CUDA, 150 GB)."
    data.pop("attack")  # a report saved before the effort was recorded still loads, without one
    assert effort_sentence(ProtectionReport.from_dict(data)) == ""
    data = json.loads(report.to_json())
    again = ProtectionReport.from_dict(data)
    assert again.match_rate_after == pytest.approx(report.match_rate_after)
    assert again.summary == report.summary
    assert data["quality"]["perceptual_measure"].startswith("DSSIM")
    assert 0.9 < data["quality"]["ssim"] <= 1.0


def test_threat_models_are_all_reported_own_original_never_the_headline(report):
    face = report.faces[0]
    own = [t for t in face.threats if t.threat == OWN_ORIGINAL]
    assert [t.evaluator for t in own] == [EVALUATOR]
    worst = max((c for c in face.cells), key=lambda c: c.similarity_after)
    assert own[0].score == pytest.approx(worst.similarity_after) and own[0].transform == worst.transform
    assert own[0].matched == worst.matched_after
    if report.threat_cells(SEARCH):  # thresholds measured for this evaluator (else the headline says so)
        assert report.headline.startswith("Search:") and "Verification:" in report.headline
    assert "own original" not in report.headline.lower()
    assert "Worst case (own original)" in report.summary
    assert "held-out" in LIMITATIONS


def test_lone_photo_estimates_rest_on_the_typical_same_person_similarity(
    astronaut_photo, astronaut_faces, monkeypatch, tmp_path
):
    from facecloak.core import search

    need(EVALUATOR)
    table = SearchThresholds(
        EVALUATOR,
        tuple(ThresholdEstimate(far, t, 10, 10**7) for far, t in ((1e-3, 0.80), (1e-4, 0.85), (1e-5, 0.89))),
        genuine_median=0.9,
        faces=5000,
        source="a test",
    )
    monkeypatch.setattr(search, "MEASURED", {EVALUATOR: table.to_dict()})
    monkeypatch.setattr(search, "thresholds_path", lambda: tmp_path / "none.json")  # nothing measured here
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    rep = evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [SURROGATE])
    own = rep.threat_cells(OWN_ORIGINAL)[0]
    verification, found = rep.threat_cells(VERIFICATION)[0], rep.threat_cells(SEARCH)[0]
    assert rep.basis == "estimate" and verification.basis == found.basis == "estimate"
    assert own.score == pytest.approx(1.0, abs=1e-4)  # unprotected: the photo as posted is its own original
    assert verification.score == pytest.approx(0.9 * own.score, abs=1e-6)
    assert verification.matched and found.found_up_to == 100_000  # 0.9 clears 1e-5 (0.89); 1e-6 not estimated
    assert "Estimated for a lone photo" in rep.summary
    data = json.loads(rep.to_json())
    assert data["search_thresholds"][EVALUATOR]["genuine_median"] == 0.9
    assert {t["threat"] for t in data["faces"][0]["threats"]} == {SEARCH, VERIFICATION, OWN_ORIGINAL}


def test_cancel_is_polled_often_and_stops_the_report(astronaut_photo, astronaut_faces):
    import time

    need(EVALUATOR)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    polls: list[float] = []

    def never() -> bool:
        polls.append(time.perf_counter())
        return False

    evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [SURROGATE], should_cancel=never)
    views = len(report_transforms(tuple(astronaut_photo.shape[-2:]), full=False))
    assert len(polls) >= views + 2  # each degradation and each forward pass
    assert max(b - a for a, b in itertools.pairwise(polls)) < 1.0

    calls = []

    def after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CloakCancelled):
        evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [SURROGATE], should_cancel=after_three)
    assert len(calls) == 4  # stopped at the first True


def test_face_dssim_is_measured_against_the_original_encoded_like_the_export(
    astronaut, astronaut_photo, astronaut_faces, tmp_path
):
    """An unchanged photo written as JPEG: all of its face DSSIM is the re-encoding, none of it protection."""
    from PIL import Image

    from facecloak.core.image import load_image

    need(EVALUATOR)
    written = tmp_path / "copy.jpg"
    Image.fromarray(astronaut).save(written, format="JPEG", quality=70, subsampling=0)
    protected = load_image(written)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    naive = evaluator.report(astronaut_photo, protected, astronaut_faces, [SURROGATE])
    fixed = evaluator.report(astronaut_photo, protected, astronaut_faces, [SURROGATE], export_file=written)
    assert naive.quality["face_dssim_max"] > 0.003  # what the old report called the protection's change
    assert fixed.quality["face_dssim_max"] == pytest.approx(0.0, abs=1e-7)
    assert fixed.faces[0].export_dssim == pytest.approx(naive.quality["face_dssim_max"], rel=1e-5)
    assert fixed.quality["export_dssim_max"] == fixed.faces[0].export_dssim
    assert "quantisation tables" in fixed.quality["reference_encoding"]
    assert fixed.quality["ssim"] == 1.0 and naive.quality["export_dssim_max"] is None


def test_evaluator_of_an_ensemble_family_is_refused(astronaut_photo, astronaut_faces):
    need(EVALUATOR)
    evaluator = ProtectionEvaluator([EVALUATOR], device="cpu")
    with pytest.raises(ValueError, match="share model families"):
        evaluator.report(astronaut_photo, astronaut_photo, astronaut_faces, [EVALUATOR])


def test_pictures_render(report):
    heat = render_heatmap(report)
    bars = render_similarity_bars(report)
    threats = render_threats(report)
    assert heat.width > 300 and heat.height > 100
    assert bars.height > 40 and threats.height > 100
    # not a blank canvas: cells are coloured
    assert len(heat.getcolors(maxcolors=100_000)) > 5
    red_or_green = {(200, 60, 60), (60, 150, 90)}
    assert red_or_green & {colour for _, colour in threats.getcolors(maxcolors=100_000)}


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
    assert rep.faces[0].others == 1 and rep.basis == "album"
    assert "Verification: 1 of 1 held-out recognisers still link it" in rep.summary
    assert "Measured against 1 other photo(s)" in rep.summary
    assert set(itself) == {EVALUATOR}  # one embedding per evaluator


def test_album_path_on_two_photos_of_one_person(shared_data, detector):
    """Two photos of one person: the second, protected, is measured against the first's clean version."""
    from facecloak.core.image import load_image

    evaluators = ["dlib_resnet", EVALUATOR]
    for name in (*evaluators, SURROGATE):
        need(name)
    folder = shared_data / "people" / "person_04"
    first, second = load_image(folder / "img16.jpg"), load_image(folder / "img62.jpg")
    first_face, second_faces = detector.detect(first)[0], detector.detect(second)[:1]
    config = CloakConfig(steps=3, views_per_step=1, dssim_budget=0.02, robustness=RobustnessConfig(blur=False))
    protected = Cloak([load_model(SURROGATE)], config)(second, second_faces).photo
    evaluator = ProtectionEvaluator(evaluators, device="cpu")
    album = [evaluator.embed_face(first, first_face)]
    rep = evaluator.report(second, protected, second_faces, [SURROGATE], album=album)
    face = rep.faces[0]
    assert face.others == 1 and rep.basis == "album"
    verification = {t.evaluator: t for t in rep.threat_cells(VERIFICATION)}
    assert set(verification) == set(evaluators) and all(t.basis == "album" for t in verification.values())
    # the verdict rests on the protected views against the other photo's clean embedding, worst view first
    dlib = evaluator.models[0]
    view = report_transforms(tuple(second.shape[-2:]), full=False)
    with torch.no_grad():
        after = degraded_embeddings(dlib, protected, second_faces[0], view) @ album[0]["dlib_resnet"]
    assert verification["dlib_resnet"].score == pytest.approx(float(after.max()), abs=1e-5)
    assert verification["dlib_resnet"].transform == rep.transforms[int(after.argmax())]
    assert verification["dlib_resnet"].score_before > 0.9  # unprotected, dlib links the two photos
    search = {t.evaluator: t for t in rep.threat_cells(SEARCH)}
    assert search["dlib_resnet"].score == verification["dlib_resnet"].score
    assert rep.headline.startswith("Search:") and "Measured against 1 other photo(s)" in rep.summary
    data = json.loads(rep.to_json())
    assert data["basis"] == "album" and data["headline"] == rep.headline
    again = ProtectionReport.from_dict(data)
    assert again.threat_cells(VERIFICATION) == rep.threat_cells(VERIFICATION)


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


def test_report_picture_has_no_missing_glyph(report):
    """Every character of the exported PNG's text has a glyph in Pillow's built-in font (no boxes for arrows)."""
    from types import SimpleNamespace

    from PIL import ImageFont

    from facecloak.app.report_image import compose_report_image, page_lines

    font = ImageFont.load_default(size=15)
    box = bytes(font.getmask("\ue000"))  # what the font draws for a character it lacks

    def missing(lines: list[str]) -> set[str]:
        return {ch for ch in set("".join(lines)) if ch != " " and bytes(font.getmask(ch)) == box}

    assert missing(["→"]) == {"→"}  # the check can fail: the arrow is a box in this font
    lines, foot = page_lines(report, LIMITATIONS)
    assert any(line.startswith("Search") or line.startswith("Own original") for line in lines)
    assert not missing(lines + foot)
    # a report of the older kind (no threat models): its "before -> after" headline is drawn in ASCII
    older = SimpleNamespace(match_rate_before=1.0, match_rate_after=0.25, worst_after=None, quality={}, faces=[])
    older_lines, _ = page_lines(older)
    assert older_lines[0] == "Match rate on held-out recognisers: 100% before -> 25% after"
    page = compose_report_image(report, {}, LIMITATIONS)
    assert page.width >= 800 and page.height > 600


def test_report_panel_shows_the_threat_models_in_plain_words(qtbot, report):
    from facecloak.app.report_panel import ReportPanel

    panel = ReportPanel()
    qtbot.addWidget(panel)
    panel.resize(460, 900)
    panel.show()
    panel.show_report(report, {})
    threats = panel.threats.text()
    if report.threat_cells(SEARCH):
        assert "<b>Search</b>" in threats and "<b>Verification</b>" in threats
        assert not panel.headline.text().startswith("Match rate")
    assert panel.worst.text().startswith("Worst case (own original)") and "before" in panel.worst.text()
    assert "&#" not in panel.quality.text() and "protection's own change" in panel.quality.text()
    for label in (panel.threat_figure, panel.heatmap, panel.bars):
        assert not label.pixmap().isNull() and label.pixmap().width() <= 460
    panel.show_message("nothing yet")
    assert panel.threats.text() == "" and panel.heatmap.isHidden()
