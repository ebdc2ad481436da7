"""App pieces without a window: settings, pause/cancel/close control, run summaries, outcomes, diff view."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from facecloak.app.model import RunSettings
from facecloak.app.output import export_options
from facecloak.app.preview import amplified_difference
from facecloak.app.settings_panel import PRESET_HELP
from facecloak.app.window import existing_outputs_text, format_eta, run_summary_text
from facecloak.app.worker import (
    PhotoJob,
    PhotoResult,
    RunControl,
    cloak_config,
)
from facecloak.core.attack import preset
from facecloak.core.protect import PhotoOutcome, Status


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


def test_photo_results_that_could_not_be_written_are_not_counted_protected(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    written = PhotoResult(PhotoOutcome(tmp_path / "a.jpg", Status.PROTECTED, tmp_path / "a_cloaked.jpg"), pixels)
    assert (written.status, written.saved, written.count_as) == ("protected", True, "protected")
    assert written.output == tmp_path / "a_cloaked.jpg" and written.message == ""
    taken = PhotoOutcome(tmp_path / "b.jpg", Status.SKIPPED, tmp_path / "b_cloaked.jpg", message="b_cloaked.jpg exists")
    unsaved = PhotoResult(taken, pixels)  # the attack ran, the write found the name taken: the pixels stay
    assert (unsaved.status, unsaved.saved, unsaved.count_as) == ("protected", False, "not saved")
    assert unsaved.output is None  # someone else's file is not our copy
    assert unsaved.message == "protected, but not saved: b_cloaked.jpg exists"
    assert PhotoResult(PhotoOutcome(tmp_path / "c.jpg", Status.NO_FACE)).count_as == "no face"
    failed = PhotoResult(PhotoOutcome(tmp_path / "d.jpg", Status.ERROR, message="d.jpg: damaged"))
    assert (failed.status, failed.count_as, failed.message) == ("error", "error", "d.jpg: damaged")


def test_a_job_protects_the_enabled_faces_or_all_found_when_none_were_detected_yet():
    assert PhotoJob("k", Path("a.jpg"), ["f1", "f2", "f3"], [True, False, True]).chosen() == ["f1", "f3"]
    assert PhotoJob("k", Path("a.jpg"), ["f1", "f2"], [False, False]).chosen() == []  # none selected
    assert PhotoJob("k", Path("a.jpg"), ["f1"]).chosen() == ["f1"]
    assert PhotoJob("k", Path("a.jpg")).chosen() is None  # not detected yet: the pipeline finds them


def test_the_app_builds_its_attack_config_with_the_shared_builder():
    settings = RunSettings(preset="high", steps=3, dssim_budget=0.002, jpeg=False)
    config = cloak_config(settings)
    high = preset("high")
    assert (config.steps, config.dssim_budget, config.epsilon) == (3, 0.002, high.epsilon)
    assert config.robustness.blur and not config.robustness.jpeg and config.robustness.resize
    assert cloak_config(RunSettings(preset="low", device="cpu")) == preset("low")  # nothing overridden: the preset
    # the settings' device picks the preset's GPU form, and the preset's help says what differs there
    assert cloak_config(RunSettings(preset="mid", device="cuda")) == preset("mid", gpu=True)
    assert "15 steps, 30 on a GPU" in PRESET_HELP["mid"] and "on a GPU" not in PRESET_HELP["high"]


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


def test_export_options_follow_the_naming_and_metadata_settings(tmp_path):
    same = export_options(RunSettings(naming="same", output_dir=str(tmp_path), strip_metadata=False))
    assert same.same_name and same.suffix == "" and same.keep_metadata
    suffixed = export_options(RunSettings(suffix="_safe", overwrite=True), overwrite=False)
    assert suffixed.suffix == "_safe" and not suffixed.same_name and not suffixed.overwrite
    assert export_options(RunSettings(overwrite=True)).overwrite
