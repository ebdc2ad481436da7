"""The run's progress and ETA without Qt: a fake clock drives RunProgress through photos, pauses and reports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from facecloak.app.model import RunSettings
from facecloak.app.run_state import REPORT_CAP, Mode, RunProgress, Stage, format_eta, protection_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def protect_photo(run: RunProgress, clock: Clock, key: str, faces: int, steps: int, step_s: float) -> list[float]:
    """Run one photo's steps (``step_s`` seconds per face-step); the fractions seen after each event."""
    seen = []
    run.photo_started(key, faces)
    seen.append(run.fraction())
    for step in range(1, steps + 1):
        clock.advance(step_s * faces)
        run.step_done(key, step, steps)
        seen.append(run.fraction())
    return seen


def test_the_bar_never_goes_back_at_photo_boundaries_and_reaches_the_end():
    clock = Clock()
    run = RunProgress([("a", 1), ("b", 2), ("c", 1), ("d", 3)], steps=5, measure=False, clock=clock)
    seen = [run.fraction()]
    for key, faces in (("a", 1), ("b", 2), ("c", 1), ("d", 3)):
        seen += protect_photo(run, clock, key, faces, 5, 0.1)
        run.photo_finished(key)
        seen.append(run.fraction())
    assert seen == sorted(seen)  # monotone
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0)
    # weighted by work: photo a (1 face of 7) is a seventh of the run
    assert seen[6] == pytest.approx(1 / 7)


def test_the_eta_is_the_work_left_at_the_measured_speed():
    clock = Clock()
    run = RunProgress([("a", 1), ("b", 2)], steps=10, measure=False, clock=clock)
    assert run.eta_seconds() is None and run.eta_text() == "ETA: measuring speed…"
    run.photo_started("a", 1)
    clock.advance(3.0)  # the first step carries set-up: not the speed of the others
    run.step_done("a", 1, 10)
    for step in range(2, 6):
        clock.advance(0.5)
        run.step_done("a", step, 10)
    assert run.seconds_per_face_step == pytest.approx(0.5)
    # 5 steps of a (1 face) and 10 steps of b (2 faces) left, at 0.5 s per face-step
    assert run.eta_seconds() == pytest.approx((5 + 20) * 0.5)
    assert run.eta_text() == "ETA 12 s"


def test_a_pause_changes_neither_the_measured_speed_nor_the_eta():
    clock = Clock()
    run = RunProgress([("a", 1), ("b", 1)], steps=20, measure=False, clock=clock)
    run.photo_started("a", 1)
    for step in range(1, 6):
        clock.advance(0.2)
        run.step_done("a", step, 20)
    before = run.eta_seconds()
    assert before == pytest.approx((15 + 20) * 0.2)
    run.pause()
    clock.advance(0.1)  # the step under way ends during the pause
    run.step_done("a", 6, 20)
    clock.advance(60.0)
    assert run.eta_text().endswith("(paused)")
    run.resume()
    clock.advance(0.2)
    run.step_done("a", 7, 20)
    assert run.seconds_per_face_step == pytest.approx(0.2, rel=0.3)
    assert run.eta_seconds() < before
    assert not run.paused and "(paused)" not in run.eta_text()


def test_the_report_stage_has_its_own_progress_label_and_measured_speed():
    clock = Clock()
    run = RunProgress([("a", 2), ("b", 2)], steps=4, measure=True, clock=clock)
    protect_photo(run, clock, "a", 2, 4, 1.0)
    assert run.stage == Stage.SAVING and "writing the copy" in run.position()
    after_steps = run.fraction()
    run.report_started("a")
    assert run.stage == Stage.REPORT and run.position() == "Photo 1 of 2 · report: measuring on held-out models"
    clock.advance(5.0)
    during = run.fraction()
    assert during > after_steps  # the bar moves on while the report runs
    clock.advance(1000.0)  # much longer than expected: the report's part of the bar waits at its cap
    stalled = run.fraction()
    clock.advance(1000.0)
    assert run.fraction() == stalled < 0.5  # held below the end of photo a until its report ends
    assert stalled == pytest.approx((8 + REPORT_CAP * 24) / 64)  # steps 2 x 4 x 1 s; report 2 x 12 s at the prior
    run.photo_finished("a")
    assert run.report_seconds_per_face == pytest.approx(2005.0 / 2)  # measured: the ETA now uses it
    protect_photo(run, clock, "b", 2, 4, 1.0)
    run.report_started("b")
    assert run.eta_seconds() == pytest.approx(2 * 2005.0 / 2)
    clock.advance(500.0)
    assert run.eta_seconds() == pytest.approx(2005.0 - 500.0)


def test_a_run_of_one_photo_names_it():
    run = RunProgress([("/album/trip/astronaut.jpg", 1)], steps=3, measure=True, clock=Clock())
    run.photo_started("/album/trip/astronaut.jpg", 1)
    run.step_done("/album/trip/astronaut.jpg", 1, 3)
    assert run.position() == "astronaut.jpg · step 1 of 3"
    run.report_started("/album/trip/astronaut.jpg")
    assert run.position() == "astronaut.jpg · report: measuring on held-out models"


def test_a_photo_that_fails_before_its_steps_still_moves_the_bar_on():
    clock = Clock()
    run = RunProgress([("bad", 1), ("good", 1)], steps=10, measure=False, clock=clock)
    run.photo_finished("bad")  # unreadable: finished without a step
    assert run.fraction() == pytest.approx(0.5)
    assert run.position() == "1 of 2 photos done"


def test_faces_counted_when_a_photo_starts_replace_the_guess():
    clock = Clock()
    run = RunProgress([("a", 1), ("b", 1)], steps=10, measure=False, clock=clock)
    run.photo_started("a", 3)  # detected during the run: three faces, not one
    for step in range(1, 11):
        clock.advance(0.3)
        run.step_done("a", step, 10)
    run.photo_finished("a")
    assert run.fraction() == pytest.approx(0.75)
    assert run.eta_seconds() == pytest.approx(10 * 0.1)


def test_format_eta_reads_like_a_person_would_say_it():
    assert format_eta(4.4) == "4 s"
    assert format_eta(125) == "2 min 05 s"
    assert format_eta(3 * 3600 + 7 * 60) == "3 h 07 min"


def test_only_settings_that_change_the_pixels_change_the_protection_key():
    here = ["cpu"]
    base = RunSettings(preset="mid")
    moved = RunSettings(preset="mid", output_dir="/elsewhere", suffix="_x")
    assert protection_key(base, here) == protection_key(moved, here)
    assert protection_key(base, here) != protection_key(RunSettings(preset="high"), here)
    assert protection_key(base, here) != protection_key(RunSettings(preset="mid", steps=3), here)


def test_the_protection_key_holds_the_device_the_attack_runs_on():
    auto, cpu, cuda = (RunSettings(preset="mid", device=d) for d in ("auto", "cpu", "cuda"))
    # without a GPU "auto" is the CPU: switching between them changes no pixel
    assert protection_key(auto, ["cpu"]) == protection_key(cpu, ["cpu"])
    # with one, "auto" runs the GPU's preset: the CPU protects differently
    assert protection_key(auto, ["cuda", "cpu"]) == protection_key(cuda, ["cuda", "cpu"])
    assert protection_key(auto, ["cuda", "cpu"]) != protection_key(cpu, ["cuda", "cpu"])


def test_mode_compares_equal_to_its_word():
    assert Mode.IDLE == "idle" and Mode.PROTECT == "protect" and str(Mode.EXPORT) == "export"


def test_the_run_state_needs_no_qt():
    code = "import sys, facecloak.app.run_state; print(sorted(m for m in sys.modules if m.startswith('PySide6')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
