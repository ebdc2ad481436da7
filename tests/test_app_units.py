"""App pieces without a window: settings validation, pause/cancel control, ETA text, the difference view."""

from __future__ import annotations

import threading
import time

import numpy as np

from facecloak.app.model import RunSettings
from facecloak.app.preview import amplified_difference
from facecloak.app.window import format_eta
from facecloak.app.worker import RunControl


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
