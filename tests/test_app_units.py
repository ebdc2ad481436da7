"""App pieces without a window: settings, pause/cancel/close control, run summaries, numbered copies, diff view."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.app.model import RunSettings
from facecloak.app.output import save_protected_new_name
from facecloak.app.preview import amplified_difference
from facecloak.app.window import existing_outputs_text, format_eta, run_summary_text
from facecloak.app.worker import REPORT_CHUNK, CancellableModel, PhotoResult, ReportCancelled, RunControl


def test_settings_refuse_outputs_that_would_replace_originals():
    assert RunSettings().problem() == ""
    assert "output folder" in RunSettings(naming="same").problem()
    assert RunSettings(naming="same", output_dir="/tmp/out").problem() == ""
    assert "suffix" in RunSettings(suffix=" ").problem()
    assert RunSettings().strip_metadata  # identifying metadata is stripped unless the user says otherwise


def test_pause_blocks_the_step_until_resume_and_cancel_releases_it():
    control = RunControl()
    assert control.should_cancel() is False
    control.pause()
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.append(control.should_cancel()))
    worker.start()
    time.sleep(0.3)
    assert seen == []  # blocked while paused
    control.resume()
    worker.join(2)
    assert seen == [False]
    control.pause()
    worker = threading.Thread(target=lambda: seen.append(control.should_cancel()))
    worker.start()
    time.sleep(0.2)
    control.cancel()  # cancelling a paused run must not wait for a resume
    worker.join(2)
    assert seen == [False, True]
    control.reset()
    assert control.should_cancel() is False


def test_eta_text():
    assert format_eta(4.2) == "4 s"
    assert format_eta(125) == "2 min 05 s"
    assert format_eta(3 * 3600 + 60) == "3 h 01 min"


def test_amplified_difference_shows_only_changed_pixels():
    before = np.full((4, 4, 3), 100, np.uint8)
    after = before.copy()
    after[1, 2] = (103, 99, 100)
    diff = amplified_difference(before, after, gain=10)
    assert diff[1, 2].tolist() == [30, 10, 0]
    diff[1, 2] = 0
    assert not diff.any()


def test_closing_cancels_for_good_while_a_run_can_be_reset():
    control = RunControl()
    control.cancel()
    control.reset()
    assert control.should_cancel() is False  # a cancelled run does not cancel the next one
    control.pause()
    control.close()  # the window is closing: a paused step is released, and cancelled
    assert control.should_cancel() is True and not control.paused
    control.reset()  # the end of the cancelled run must not revive requests still queued
    assert control.closing and control.should_cancel() is True


def test_report_models_stop_between_chunks_once_cancelled():
    calls: list[int] = []

    class Model:
        name = "held_out"

        def __call__(self, crops: torch.Tensor) -> torch.Tensor:
            calls.append(len(crops))
            return crops.flatten(1)[:, :2]

    flag = {"cancel": False}
    model = CancellableModel(Model(), lambda: flag["cancel"])
    crops = torch.arange(25 * 3 * 2 * 2, dtype=torch.float32).reshape(25, 3, 2, 2)
    out = model(crops)
    assert torch.equal(out, crops.flatten(1)[:, :2])  # the same embeddings, computed in chunks
    assert calls == [REPORT_CHUNK, REPORT_CHUNK, REPORT_CHUNK, 25 - 3 * REPORT_CHUNK]
    assert model.name == "held_out"  # everything else is the model's own
    flag["cancel"] = True
    with pytest.raises(ReportCancelled):
        model(crops)
    assert len(calls) == 4  # no forward pass once cancelled


def test_photo_results_that_could_not_be_written_are_not_counted_protected():
    assert PhotoResult("k", "protected", saved=True).count_as == "protected"
    assert PhotoResult("k", "protected", saved=False).count_as == "not saved"
    assert PhotoResult("k", "no face").count_as == "no face"


def test_run_summary_counts_every_photo_as_what_happened_to_it():
    counts = {"error": 1, "protected": 2, "not saved": 1, "skipped (output exists)": 3}
    assert run_summary_text(counts, False) == "Done: 2 protected, 1 not saved, 3 skipped (output exists), 1 error"
    assert run_summary_text({}, True) == "Cancelled: nothing done"


def test_the_existing_copies_question_names_them_and_the_numbered_name(tmp_path):
    targets = [tmp_path / f"p{i}_cloaked.jpg" for i in range(7)]
    text = existing_outputs_text(targets)
    assert text.startswith(f"7 of the protected copies this run would write exist already in {tmp_path}: ")
    assert "p0_cloaked.jpg, p1_cloaked.jpg" in text and "and 2 more" in text and "p6" not in text
    assert "p0_cloaked (2).jpg" in text


def _photo(folder: Path, name: str) -> Path:
    path = folder / name
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(path)
    return path


def test_keep_both_takes_the_first_free_numbered_name_and_never_overwrites(tmp_path):
    from facecloak.core.image import uint8_to_tensor

    source = _photo(tmp_path, "x.png")
    original = source.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    pixels = uint8_to_tensor(np.full((12, 16, 3), 200, np.uint8))
    settings = RunSettings(output_dir=str(out))
    first = save_protected_new_name(source, pixels, out, settings)
    assert first == out / "x_cloaked.png"  # the usual name while it is free
    (out / "x_cloaked (2).png").write_bytes(b"someone else's")
    third = save_protected_new_name(source, pixels, out, settings)
    assert third == out / "x_cloaked (3).png"
    assert (out / "x_cloaked (2).png").read_bytes() == b"someone else's"
    assert np.asarray(Image.open(third))[0, 0].tolist() == [200, 200, 200]
    same_name = RunSettings(output_dir=str(out), naming="same")
    assert save_protected_new_name(source, pixels, out, same_name) == out / "x.png"
    assert save_protected_new_name(source, pixels, out, same_name) == out / "x (2).png"
    assert sorted(p.name for p in out.iterdir()) == [
        "x (2).png", "x.png", "x_cloaked (2).png", "x_cloaked (3).png", "x_cloaked.png",
    ]  # fmt: skip
    assert source.read_bytes() == original and not list(out.glob(".*"))  # original untouched, no temp file left


def test_a_name_taken_between_the_check_and_the_write_is_never_overwritten(tmp_path, monkeypatch):
    from facecloak.app import output
    from facecloak.core.image import uint8_to_tensor

    source = _photo(tmp_path, "y.png")
    out = tmp_path / "out"
    out.mkdir()
    real_export = output.export_protected
    raced: list[Path] = []

    def export_after_another_writer(src, protected, out_dir, options, photo=None):
        target = output.export_target(src, out_dir, options)
        if not raced:  # another program takes the name just before our write
            target.write_bytes(b"the other program's file")
            raced.append(target)
        return real_export(src, protected, out_dir, options, photo=photo)

    monkeypatch.setattr(output, "export_protected", export_after_another_writer)
    written = save_protected_new_name(source, uint8_to_tensor(np.zeros((12, 16, 3), np.uint8)), out, RunSettings())
    assert raced == [out / "y_cloaked.png"] and raced[0].read_bytes() == b"the other program's file"
    assert written == out / "y_cloaked (2).png"
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
