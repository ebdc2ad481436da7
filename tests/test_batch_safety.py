"""``facecloak protect`` never leaves a photo given unprotected in silence, and its options say what they do.

Fast: the face-recognition models are replaced by a fake protector (the "protected" pixels are the photo's own,
a photo with no bright pixel has "no face") and a fake evaluator, so what is tested is the batch itself:
mirrored output folders, collisions, FaceCloak's marker, exit codes, the resume journal, validation before
any side effect, and the help text. The real models run in tests/test_batch.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import facecloak
from facecloak.cli import build_parser, main
from facecloak.core import batch
from facecloak.core.batch import JOURNAL_NAME, JOURNAL_VERSION, BatchSettings, Worker, report_path, run_batch
from facecloak.core.export import (
    ExportOptions,
    export_protected,
    export_target,
    facecloak_marker,
    is_facecloak_output,
)
from facecloak.core.image import HEIF_SUPPORTED, open_photo, pil_to_tensor
from facecloak.core.protect import FoundPhoto, Protector, find_photos

MARKER = f"FaceCloak {facecloak.__version__}"
FACE = SimpleNamespace(box=(0.0, 0.0, 8.0, 8.0), score=1.0)


class FakeDetector:
    """A "face" wherever the photo has a bright pixel: a black photo has none."""

    def detect(self, photo: torch.Tensor) -> list:
        return [FACE] if float(photo.max()) > 0.2 else []


class FakeProtector(Protector):
    """The real pipeline (``protect_file``: checks, export, outcomes) around a cloak that changes nothing."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.ensemble_names = ["fake"]
        self.detector = FakeDetector()
        self.cloak = SimpleNamespace(perceptual_terms="none")
        self.protected: list[Path] = []

    def protect_tensor(self, photo, faces=None, progress=None, should_cancel=None, config=None):
        return SimpleNamespace(photo=photo.clone(), face_dssim=[0.001] * len(faces or []), steps=[None])

    def protect_file(self, source, target, options, *args, **kwargs):
        self.protected.append(Path(source))
        return super().protect_file(source, target, options, *args, **kwargs)


class FakeEvaluator:
    """Records what it measured: the pixels of the written copy."""

    def __init__(self) -> None:
        self.measured: list[torch.Tensor] = []
        self.interrupt_after: int | None = None  # simulate a kill after this many reports

    def report(self, clean, written, faces, ensemble, album=(), **_keywords):
        if self.interrupt_after is not None and len(self.measured) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.measured.append(written)
        return SimpleNamespace(
            headline="Search: not found. Verification: not linked.",
            match_rate_before=1.0,
            match_rate_after=0.0,
            evaluators=["judge"],
            faces=[SimpleNamespace(clean_embeddings={})],
            to_dict=lambda: {"faces": len(faces), "written_mean": float(written.mean())},
        )


class FakeWorker(Worker):
    """The real Worker's code around the fakes above (no model is loaded)."""

    instances: ClassVar[list[FakeWorker]] = []

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.protector = FakeProtector()
        self.evaluator = FakeEvaluator() if settings.report else None
        self.album: list = []
        self.report_problem = ""
        FakeWorker.instances.append(self)


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    FakeWorker.instances = []
    monkeypatch.setattr(batch, "Worker", FakeWorker)


def photo(path: Path, seed: int, face: bool = True, size: int = 48) -> Path:
    """A small distinct photo; ``face=False``: all black, where the fake detector finds nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 255, (size, size, 3), dtype=np.uint8) if face else np.zeros((size, size, 3), np.uint8)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def protect(*args: object) -> int:
    return main(["protect", *map(str, args), "--no-progress"])


def same_pixels(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(open_photo(a).rgb, np.int16), np.asarray(open_photo(b).rgb, np.int16))


# -- one name in two subfolders ----------------------------------------------------------------------------


def test_same_name_in_two_subfolders_goes_to_mirrored_subfolders(tmp_path, capsys):
    album = tmp_path / "album"
    first, second = photo(album / "a" / "x.png", 1), photo(album / "b" / "x.png", 2)
    top = photo(album / "y.png", 3)
    originals = digest(album)
    out = tmp_path / "out"
    assert protect(album, "-o", out) == 0
    text = capsys.readouterr().out
    assert "3 protected" in text and "skipped" not in text
    assert same_pixels(out / "a" / "x_cloaked.png", first)  # each copy is of its own photo
    assert same_pixels(out / "b" / "x_cloaked.png", second)
    assert same_pixels(out / "y_cloaked.png", top)
    assert digest(album) == originals  # originals byte-identical
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_export_target_mirrors_the_folder_a_photo_was_found_under(tmp_path):
    options = ExportOptions()
    album, out = tmp_path / "album", tmp_path / "out"
    assert export_target(album / "a" / "b" / "x.jpg", out, options, relative_to=album) == out / "a/b/x_cloaked.jpg"
    assert export_target(album / "x.jpg", out, options, relative_to=album) == out / "x_cloaked.jpg"
    assert export_target(album / "a" / "x.jpg", out, options) == out / "x_cloaked.jpg"  # as the app calls it
    with pytest.raises(ValueError, match="not inside"):
        export_target(tmp_path / "elsewhere" / "x.jpg", out, options, relative_to=album)


def test_find_photos_knows_which_given_folder_each_photo_came_from(tmp_path):
    album = tmp_path / "album"
    inner = photo(album / "a" / "x.png", 1)
    loose = photo(tmp_path / "loose.png", 2)
    found = find_photos([album, loose, album / "a"])  # album/a overlaps album: the first given folder wins
    assert found == [FoundPhoto(inner, album), FoundPhoto(loose, None)]


def test_two_given_files_with_one_name_fail_loudly_naming_both(tmp_path, capsys):
    first, second = photo(tmp_path / "a" / "x.png", 1), photo(tmp_path / "b" / "x.png", 2)
    out = tmp_path / "out"
    assert protect(first, second, "-o", out) == 1
    captured = capsys.readouterr()
    assert same_pixels(out / "x_cloaked.png", first)
    assert "1 protected, 1 failed" in captured.out and "skipped" not in captured.out + captured.err
    line = next(line for line in captured.err.splitlines() if line.strip().startswith(str(second)))
    assert str(first) in line and "x_cloaked.png" in line and "not protected" in line
    assert "1 photo(s) not protected:" in captured.err


def test_two_formats_of_one_name_collide_when_converted_to_one_format(tmp_path):
    folder = tmp_path / "album"
    photo(folder / "x.jpg", 1), photo(folder / "x.png", 2)
    settings = BatchSettings(options=ExportOptions(format="png"))
    found = find_photos([folder])
    todo, known = batch.plan(found, tmp_path / "out", settings, None)
    assert [job.source.name for job in todo] == ["x.jpg"]
    assert [(Path(r.source).name, r.status) for r in known] == [("x.png", "error")]
    assert "x.jpg" in known[0].message


# -- FaceCloak's marker ------------------------------------------------------------------------------------

FORMATS = ["a.jpg", "a.png", "a.webp", "a.tif", "a.bmp", "a.heic"]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("keep", [False, True], ids=["stripped", "kept"])
def test_every_export_carries_the_marker_and_the_source_does_not(tmp_path, name, keep):
    if name.endswith(".heic") and not HEIF_SUPPORTED:
        pytest.skip("pillow-heif is not installed")
    source = photo(tmp_path / name, 4, size=64)
    loaded = open_photo(source)
    out = export_protected(source, pil_to_tensor(loaded.rgb), tmp_path / "out", ExportOptions(keep_metadata=keep))
    assert facecloak_marker(out) == MARKER and is_facecloak_output(out)
    assert not is_facecloak_output(source)
    assert open_photo(out).size == loaded.size  # the marked file still decodes whole


def test_the_marker_is_read_without_decoding_pixels(tmp_path, monkeypatch):
    source = photo(tmp_path / "a.png", 5)
    out = export_protected(source, pil_to_tensor(open_photo(source).rgb), tmp_path / "out", ExportOptions())

    def refuse(*_args, **_kwargs):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    assert is_facecloak_output(out)


def test_the_marker_check_never_raises_or_blocks_on_hostile_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it for reading would block
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    fake = b"<x:xmpmeta>" + MARKER.encode() + b"</x:xmpmeta>"  # the words alone, not the marker's field
    (tmp_path / "words.jpg").write_bytes(b"\xff\xd8\xff\xfe" + len(fake).to_bytes(2, "big") + fake)
    for name in ("empty.jpg", "random.png", "folder.jpg", "fifo.jpg", "loop.jpg", "missing.jpg", "words.jpg"):
        assert facecloak_marker(tmp_path / name) is None, name


def test_a_second_run_into_another_folder_leaves_the_first_runs_copies_alone(tmp_path, capsys):
    album = tmp_path / "album"
    photo(album / "day1" / "x.png", 1)
    assert protect(album, "-o", album / "protected") == 0  # an output folder inside the album is fine
    first_copy = album / "protected" / "day1" / "x_cloaked.png"
    assert is_facecloak_output(first_copy)
    renamed = album / "renamed.png"  # recognised by its marker, not by its name
    renamed.write_bytes(first_copy.read_bytes())
    capsys.readouterr()
    assert protect(album, "-o", album / "other") == 0
    captured = capsys.readouterr()
    assert not list(tmp_path.rglob("*_cloaked_cloaked*")) and not (album / "other" / "renamed_cloaked.png").exists()
    assert f"{first_copy}: skipped: already a protected copy ({MARKER}), not protected again" in captured.out
    assert "1 protected, 2 FaceCloak output(s) left alone" in captured.out
    listed = captured.out.split("already protected by FaceCloak, left as they are:")[1]
    assert str(first_copy) in listed and str(renamed) in listed


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_output_folder_equal_to_an_input_folder_is_refused_before_anything(tmp_path, capsys, spelling):
    album = tmp_path / "album"
    photo(album / "x.png", 1)
    (tmp_path / "link").symlink_to(album, target_is_directory=True)
    out = {"same": album, "dot": album / "sub" / "..", "symlink": tmp_path / "link"}[spelling]
    (album / "sub").mkdir()
    before = digest(album)
    assert protect(album, "-o", out) == 2
    err = capsys.readouterr().err
    assert "cannot start: the output folder" in err and f"is the input folder {album}" in err
    assert digest(album) == before and not (album / JOURNAL_NAME).exists()


# -- exit codes and the summary ----------------------------------------------------------------------------


def test_a_copy_that_exists_makes_the_exit_code_1_unless_resumed_or_overwritten(tmp_path, capsys):
    source = photo(tmp_path / "album" / "x.png", 1)
    out = tmp_path / "out"
    assert protect(source, "-o", out) == 0
    capsys.readouterr()
    assert protect(source, "-o", out) == 1
    captured = capsys.readouterr()
    assert "1 skipped (copy exists)" in captured.out
    assert f"  {source}: skipped ({out / 'x_cloaked.png'} exists (use --resume or --overwrite))" in captured.err
    assert protect(source, "-o", out, "--resume") == 0
    assert protect(source, "-o", out, "--overwrite") == 0


def test_photos_without_a_face_are_named_in_the_summary_and_are_no_failure(tmp_path, capsys):
    album = tmp_path / "album"
    photo(album / "face.png", 1)
    dark = photo(album / "night" / "dark.png", 2, face=False)
    assert protect(album, "-o", tmp_path / "out") == 0
    text = capsys.readouterr().out
    assert "1 protected, 1 no face" in text
    assert f"1 photo(s) with no face found, no copy written:\n  {dark}\n" in text
    assert not (tmp_path / "out" / "night").exists()


def test_a_failed_photo_is_named_by_its_path_and_the_rest_goes_on(tmp_path, capsys):
    album = tmp_path / "album"
    good = photo(album / "good.png", 1)
    broken = album / "sub" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert protect(album, "-o", tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert same_pixels(tmp_path / "out" / "good_cloaked.png", good)
    assert f"  {broken}: damaged or truncated JPEG file" in captured.err.split("not protected:")[1]


# -- validation before any side effect ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--set", "stepz=3"], "unknown knob stepz"),
        (["--steps", "-1"], "steps must be >= 0"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--quality", "101"], "quality must be between 1 and 100"),
        (["--ensemble", "no_such_model"], "no_such_model"),
    ],
    ids=["knob", "steps", "jobs", "quality", "model"],
)
def test_a_bad_option_creates_no_output_folder(tmp_path, capsys, monkeypatch, option, message):
    def refuse_unknown(settings):
        if settings.ensemble:
            raise ValueError(f"unknown model {settings.ensemble[0]!r}")
        return FakeWorker(settings)

    monkeypatch.setattr(batch, "Worker", refuse_unknown)
    source = photo(tmp_path / "x.png", 1)
    out = tmp_path / "out"
    assert protect(source, "-o", out, *option) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_only_missing_inputs_create_nothing_and_name_the_path_as_given(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "x.jpg"
    out = tmp_path / "out"
    assert protect(missing, "-o", out) == 1
    err = capsys.readouterr().err
    assert f"{missing}: no such file or folder" in err
    assert not out.exists()


def test_a_missing_input_is_reported_and_the_others_are_still_protected(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "x.jpg"
    source = photo(tmp_path / "album" / "y.png", 1)
    out = tmp_path / "out"
    assert protect(missing, source, "-o", out) == 1
    captured = capsys.readouterr()
    assert (out / "y_cloaked.png").exists()
    assert "1 protected, 1 failed" in captured.out
    assert f"  {missing}: no such file or folder" in captured.err.split("not protected:")[1]


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    source = photo(tmp_path / "x.png", 1)
    (tmp_path / "out").write_text("a file")
    assert protect(source, "-o", tmp_path / "out") == 2
    assert "exists and is not a folder" in capsys.readouterr().err


# -- resume: the report is a step of its own ---------------------------------------------------------------


def test_resume_with_report_writes_the_report_a_kill_left_out_without_protecting_again(tmp_path, capsys):
    album = tmp_path / "album"
    for i in range(3):
        photo(album / f"p{i}.png", i)
    out = tmp_path / "out"
    settings = BatchSettings(report=True)
    worker = FakeWorker(settings)
    worker.evaluator.interrupt_after = 1  # killed while measuring the second photo: its copy is already written
    with pytest.raises(KeyboardInterrupt):
        run_batch(find_photos([album]), out, settings, worker=worker, log=lambda _t: None)
    assert sorted(p.name for p in out.glob("*_cloaked.png")) == ["p0_cloaked.png", "p1_cloaked.png"]
    assert [p.name for p in out.glob("*.report.json")] == ["p0_cloaked.report.json"]
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir() if p.name != JOURNAL_NAME}

    assert protect(album, "-o", out, "--resume", "--report") == 0
    text = capsys.readouterr().out
    (resumed,) = FakeWorker.instances[1:]
    assert resumed.protector.protected == [album / "p2.png"]  # p1 was not protected a second time
    assert len(resumed.evaluator.measured) == 2  # p1's missing report and p2's
    assert "resuming: 2 photo(s) already done" in text
    assert (
        f"{album / 'p1.png'}: done earlier; Search: not found. Verification: not linked. Own original (worst case): "
        "match rate 100% -> 0% on judge" in text
    )
    for path, stamp in stamps.items():  # p0's copy and report, p1's copy: untouched
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp, path.name
    report = json.loads((out / "p1_cloaked.report.json").read_text())
    written = pil_to_tensor(open_photo(out / "p1_cloaked.png").rgb)
    assert report["written_mean"] == pytest.approx(float(written.mean()))  # measured on the written copy
    journal = json.loads((out / JOURNAL_NAME).read_text())
    assert journal["version"] == JOURNAL_VERSION == 2
    assert sorted(e["report"] for e in journal["done"].values()) == [f"p{i}_cloaked.report.json" for i in range(3)]


def test_resume_with_report_after_a_run_without_report(tmp_path, capsys):
    album = tmp_path / "album"
    photo(album / "a" / "p.png", 1)
    out = tmp_path / "out"
    assert protect(album, "-o", out) == 0
    assert not list(out.rglob("*.report.json"))
    assert protect(album, "-o", out, "--resume", "--report") == 0
    assert FakeWorker.instances[-1].protector.protected == []
    assert report_path(out / "a" / "p_cloaked.png").exists()
    capsys.readouterr()
    assert protect(album, "-o", out, "--resume", "--report") == 0  # all done now: nothing measured again
    assert FakeWorker.instances[-1].evaluator.measured == []


def test_resume_finds_temp_files_left_in_mirrored_subfolders(tmp_path, capsys):
    album = tmp_path / "album"
    photo(album / "a" / "p.png", 1)
    out = tmp_path / "out"
    stale = out / "a" / ".p_cloaked.png.facecloak-abc.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    assert protect(album, "-o", out, "--resume") == 0
    assert not stale.exists()
    assert "removed 1 unfinished temporary file(s)" in capsys.readouterr().out


# -- the options say what they do --------------------------------------------------------------------------


def _subparsers(parser):
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            yield from action.choices.items()


@pytest.mark.parametrize("command", ["protect", "detect", "report", "models"])
def test_every_option_has_one_line_of_help_with_its_default(command):
    parser = dict(_subparsers(build_parser()))[command]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = action.option_strings[-1]
        assert action.help, f"{command} {name} has no help"
        if not action.required and action.nargs != "*":
            assert "default" in action.help, f"{command} {name}: the help does not say the default"
        if action.default not in (None, False, []) and not isinstance(action.default, list):
            assert f"default: {action.default}" in action.help, f"{command} {name}: default {action.default}"


def test_quality_help_says_where_the_estimate_is_capped_and_sizes_say_their_unit():
    commands = dict(_subparsers(build_parser()))
    quality = next(a for a in commands["protect"]._actions if "--quality" in a.option_strings)
    assert "75-95" in quality.help and "1-100" in quality.help
    size = next(a for a in commands["detect"]._actions if "--min-face-size" in a.option_strings)
    assert "pixels" in size.help


def test_the_readme_synopsis_of_protect_names_every_option():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    bullet = re.search(r"^- `facecloak protect .*?(?=^- `facecloak )", readme, re.S | re.M)
    assert bullet is not None
    protect_parser = dict(_subparsers(build_parser()))["protect"]
    for action in protect_parser._actions:
        if action.option_strings and action.dest != "help":
            shown = [o for o in action.option_strings if re.search(rf"{re.escape(o)}\b", bullet.group(0))]
            assert shown, f"{action.option_strings[-1]} is missing from the README synopsis"


def test_detect_names_a_missing_photo_by_the_path_given(tmp_path, capsys):
    missing = tmp_path / "sub" / "gone.jpg"
    assert main(["detect", str(missing)]) == 1
    assert capsys.readouterr().err.strip() == f"{missing}: no such file"


# -- facecloak report and the marker -----------------------------------------------------------------------


def test_report_says_which_photo_carries_the_marker(tmp_path, capsys):
    original = photo(tmp_path / "orig.png", 1, face=False)  # no face: the command stops before any model
    copy = export_protected(original, pil_to_tensor(open_photo(original).rgb), tmp_path / "out", ExportOptions())
    assert main(["report", str(copy), "--against", str(original)]) == 1
    captured = capsys.readouterr()
    assert f"{copy}: carries the FaceCloak marker ({MARKER})" in captured.out
    assert "warning" not in captured.err
    assert main(["report", str(original), "--against", str(copy)]) == 1
    captured = capsys.readouterr()
    assert f"{original}: no FaceCloak marker" in captured.out
    assert f"warning: the original {copy} is itself a protected copy ({MARKER})" in captured.err
