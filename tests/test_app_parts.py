"""The window's parts that need no running window: pixel cache, About text, messages, face labels, looks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QRectF, QSizeF, Qt

from facecloak.app.about import about_html, model_role
from facecloak.app.messages import next_step_text, report_placeholder, still_matched
from facecloak.app.model import ERROR, PRESET_NAMES, PROTECTED, PROTECTING, QUEUED, PhotoEntry
from facecloak.app.pixel_cache import CLEAN, PROTECTED_PIXELS, PixelCache
from facecloak.app.preview import face_numbers, place_labels
from facecloak.app.theme import DARK, LIGHT, SYSTEM, is_dark, palette, wants_dark


def pixels(value: int) -> np.ndarray:
    return np.full((64, 64, 3), value, np.uint8)


# -- pixel cache -----------------------------------------------------------------------------------------------------


def test_the_cache_keeps_the_most_recently_used_photos_and_previews_apart():
    cache = PixelCache(capacity=2)
    cache.put("a", clean=pixels(1))
    cache.put("b", clean=pixels(2))
    cache.put("a", protected=pixels(3))  # a is used again: b is now the oldest
    cache.previews["b"] = pixels(9)
    cache.put("c", clean=pixels(4))
    assert "b" not in cache and "a" in cache and len(cache) == 2
    assert cache.get("a", CLEAN)[0, 0, 0] == 1 and cache.get("a", PROTECTED_PIXELS)[0, 0, 0] == 3
    assert cache.previews["b"][0, 0, 0] == 9  # a preview exists nowhere else: never evicted
    cache.forget("a", PROTECTED_PIXELS)
    assert cache.get("a", PROTECTED_PIXELS) is None and cache.get("a", CLEAN) is not None
    cache.forget("b")
    assert "b" not in cache.previews


def test_evicted_pixels_reload_from_disk_and_a_vanished_file_is_reported(tmp_path):
    photo, copy = tmp_path / "p.png", tmp_path / "p_cloaked.png"
    Image.fromarray(pixels(10)).save(photo)
    Image.fromarray(pixels(20)).save(copy)
    entry = PhotoEntry(photo, status=PROTECTED, faces=[], output=copy)
    clean, protected, problem = PixelCache().load(entry)
    assert clean[0, 0, 0] == 10 and protected[0, 0, 0] == 20 and problem == ""
    photo.unlink()
    clean, protected, problem = PixelCache().load(entry)
    assert clean is None and "p.png" in problem


def test_pixels_held_only_in_memory_are_shown_without_a_file():
    entry = PhotoEntry(Path("/nowhere/p.png"), status=ERROR, pinned_protected=pixels(7))
    clean, protected, problem = PixelCache().load(entry)
    assert clean is None and protected[0, 0, 0] == 7 and problem == ""


# -- about -------------------------------------------------------------------------------------------------------------


def test_the_about_box_names_every_model_with_its_role_and_licences():
    spec = SimpleNamespace(
        display_name="Net <A&B>", model_licence="MIT", package_licence="Apache-2.0", training_data="it's web faces"
    )
    roles = {"ensemble": ["a"], "evaluators": ["b"], "tuning": ["c"]}
    html = about_html({"a": spec, "b": spec, "c": spec, "d": spec}, roles, "1.2.3", "No promises about the future.")
    assert "FaceCloak 1.2.3" in html and "Net &lt;A&amp;B&gt;" in html and "it's web faces" in html
    assert [model_role(n, roles) for n in "abcd"] == [
        "attack ensemble",
        "held-out evaluator",
        "tuning judge (benchmarks only)",
        "available",
    ]
    assert "No promises about the future." in html


# -- messages ----------------------------------------------------------------------------------------------------------


def test_the_advice_names_the_next_preset_and_at_the_strongest_says_what_else_there_is():
    assert "choose mid" in next_step_text("low", True) and "choose high" in next_step_text("mid", True)
    strongest = next_step_text(PRESET_NAMES[-1], True)
    assert "strongest preset" in strongest and "Expert" in strongest
    assert "choose" not in strongest  # no preset stronger than the strongest is named
    assert "Protect again" in next_step_text("high", False) and "Still" not in next_step_text("high", False)


def test_still_matched_reads_the_undegraded_cells_only():
    cell = SimpleNamespace
    assert still_matched(SimpleNamespace(cells=[cell(transform="none", matched_after=True)]))
    assert not still_matched(SimpleNamespace(cells=[cell(transform="jpeg50", matched_after=True)]))
    assert not still_matched(None)


def test_the_report_placeholder_says_what_is_happening_to_the_photo():
    path = Path("/album/p.jpg")
    assert report_placeholder(PhotoEntry(path, status=PROTECTING, faces=[1]), True).startswith("Protecting p.jpg")
    waiting = report_placeholder(PhotoEntry(path, status=QUEUED, faces=[1]), True)
    assert waiting == "p.jpg is waiting for its turn in this run."
    idle = report_placeholder(PhotoEntry(path, status=QUEUED, faces=[1]), False)
    assert "not protected yet" in idle and "Ctrl+Enter" in idle
    unreadable = PhotoEntry(Path("/album/notes.jpg"), status=ERROR, message="notes.jpg: not an image")
    text = report_placeholder(unreadable, False)
    assert text.startswith("notes.jpg: not an image") and "Delete" in text and "Protect" not in text
    assert report_placeholder(PhotoEntry(path), False) == "Finding faces in p.jpg…"


# -- face labels ------------------------------------------------------------------------------------------------------


def test_face_labels_never_overlap_and_stay_inside_the_image():
    bounds = QRectF(0, 0, 400, 300)
    # a crowded photo: three faces side by side, one at the top edge, one overhanging the right edge
    boxes = [QRectF(10, 5, 40, 40), QRectF(40, 60, 40, 40), QRectF(70, 62, 40, 40), QRectF(370, 100, 60, 60)]
    sizes = [QSizeF(90, 20)] * len(boxes)
    labels = place_labels(boxes, sizes, bounds)
    for i, a in enumerate(labels):
        assert bounds.contains(a), a
        for b in labels[i + 1 :]:
            assert not a.intersects(b), (a, b)
    assert labels[1].bottom() <= boxes[1].top()  # room above: the label sits just above its face


def test_faces_are_numbered_left_to_right_as_people_read_the_photo():
    faces = [SimpleNamespace(box=(x, y, x + 80, y + 100)) for x, y in ((648, 40), (479, 41), (59, 40), (272, 44))]
    assert face_numbers(faces) == [4, 3, 1, 2]
    assert face_numbers([]) == []


# -- looks -------------------------------------------------------------------------------------------------------------


def test_the_look_follows_the_system_unless_the_user_chose_one(qapp):
    assert wants_dark(SYSTEM, Qt.ColorScheme.Dark) and not wants_dark(SYSTEM, Qt.ColorScheme.Light)
    assert not wants_dark(SYSTEM, Qt.ColorScheme.Unknown)
    assert wants_dark(DARK, Qt.ColorScheme.Light) and not wants_dark(LIGHT, Qt.ColorScheme.Dark)
    assert is_dark(palette(True)) and not is_dark(palette(False))


@pytest.mark.parametrize("dark", [True, False])
def test_text_is_readable_on_both_looks(qapp, dark):
    pal = palette(dark)
    for fg, bg in (("WindowText", "Window"), ("Text", "Base"), ("HighlightedText", "Highlight")):
        text, back = pal.color(getattr(pal.ColorRole, fg)), pal.color(getattr(pal.ColorRole, bg))
        assert abs(text.lightness() - back.lightness()) > 100, (fg, bg)
