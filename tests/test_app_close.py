"""The window over a fake engine (fast, no models): closing it mid-run, and protected copies that already exist.

The fakes replace only the slow parts (the face detector, the ensemble's models, the attack loop and the evaluator's
models); the window, the worker thread, the run control, the protector's pipeline and the real exporter that writes
the files are the app's own. One test runs the app as a program to see it exit cleanly; the last one closes the
window during a real report (models needed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from app_fakes import ENSEMBLE, NAMES, open_window
from PIL import Image
from PySide6.QtCore import QSettings

from facecloak.app import window as window_module
from facecloak.app.model import ERROR, PROTECTED, QUEUED
from facecloak.app.output import KEEP_BOTH, OVERWRITE, SKIP
from facecloak.app.window import MainWindow
from facecloak.core.image import pil_to_tensor


@pytest.fixture
def window(qtbot, tmp_path, engine, photos, out_dir):
    with open_window(qtbot, tmp_path, photos, out_dir, measure=True) as win:
        yield win


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temp files a write left behind (never expected)."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def answer_existing(window: MainWindow, monkeypatch, answer: str | None) -> list[list[Path]]:
    """Answer the question about existing copies with ``answer``; returns the targets each question listed."""
    asked: list[list[Path]] = []

    def ask(targets: list[Path]) -> str | None:
        asked.append(targets)
        return answer

    monkeypatch.setattr(window, "ask_existing_outputs", ask, raising=False)
    return asked


def close_timed(window: MainWindow) -> float:
    start = time.perf_counter()
    window.close()
    return time.perf_counter() - start


# -- closing during a run -------------------------------------------------------------------------------------------


def test_closing_during_the_steps_asks_then_cancels_and_stops_the_worker(qtbot, window, engine, photos, out_dir):
    engine.steps, engine.step_s = 100000, 0.02
    originals = {p: digest(p) for p in photos}
    steps: list[int] = []
    window.worker.stepProgress.connect(lambda _k, step, _t, _s: steps.append(step))
    assert window.protect_all()
    qtbot.waitUntil(lambda: len(steps) >= 3, timeout=20000)
    asked = []
    window.ask_quit = lambda question: asked.append(question) or True
    seconds = close_timed(window)
    assert asked and "cancels the run" in asked[0]  # asked first
    assert seconds < 2.5, f"closing took {seconds:.1f} s"
    assert window.thread.isFinished() and not window.isVisible()
    assert {p: digest(p) for p in photos} == originals  # originals never modified
    assert list(out_dir.iterdir()) == []  # nothing written for the cancelled photo, no partial file


def test_closing_during_the_report_cancels_within_a_second(qtbot, window, engine, photos, out_dir):
    engine.report_passes = 1000  # at least 10 s of forward passes unless the report is cancelled
    measuring: list[str] = []
    window.worker.measuring.connect(measuring.append)
    assert window.protect_all()
    qtbot.waitUntil(lambda: bool(measuring), timeout=20000)
    qtbot.wait(300)  # well inside the report
    window.ask_quit = lambda _question: True
    seconds = close_timed(window)
    assert seconds < 2.5, f"closing took {seconds:.1f} s"
    assert window.thread.isFinished() and not window.isVisible()
    written = sorted(out_dir.iterdir())
    # the photo under measurement was saved before its report started, whole; nothing else was
    assert [p.name for p in written] == ["a_cloaked.jpg"]
    assert Image.open(written[0]).size == (96, 96)
    assert leftovers(out_dir) == []


# Run as a program: the app's own shape (main() returns, the window is destroyed, the process exits), closed
# while the report runs: the way the crash showed (exit code 134, "QThread: Destroyed while thread ... running").
CLOSE_DURING_REPORT = """
import sys
import time
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import app_fakes as t
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from facecloak.app.window import MainWindow


def main() -> int:
    app = QApplication([])
    folder = Path(sys.argv[2])
    engine = t.FakeEngine()
    engine.report_passes = 100000
    t.install_fakes(engine, setattr)
    window = MainWindow(QSettings(str(folder / "facecloak.ini"), QSettings.Format.IniFormat))
    window.settings_panel.output_dir.setText(str(folder / "out"))
    window.ask_quit = lambda _question: True
    window.show()
    window.add_paths(t.make_photos(folder / "photos"))
    measuring = []
    window.worker.measuring.connect(measuring.append)

    def drive() -> None:
        if window.mode == "idle" and all(e.faces is not None for e in window.entries.values()):
            window.protect_all()
        elif measuring:
            timer.stop()
            start = time.perf_counter()
            window.close()
            print(f"closed in {time.perf_counter() - start:.2f} s", flush=True)

    timer = QTimer()
    timer.timeout.connect(drive)
    timer.start(100)
    return app.exec()


sys.exit(main())
"""


def test_the_app_closed_during_the_report_exits_cleanly(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_DURING_REPORT, tests, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Destroyed while thread" not in done.stderr
    seconds = float(done.stdout.split("closed in ")[1].split()[0])
    assert seconds < 2.5


def test_keep_working_leaves_the_run_going(qtbot, window, engine):
    engine.steps, engine.step_s = 100000, 0.02
    steps: list[int] = []
    window.worker.stepProgress.connect(lambda _k, step, _t, _s: steps.append(step))
    assert window.protect_all()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=20000)
    asked = []
    window.ask_quit = lambda question: asked.append(question) or False
    window.close()
    assert len(asked) == 1 and window.isVisible() and window.thread.isRunning()
    seen = len(steps)
    qtbot.waitUntil(lambda: len(steps) > seen + 2, timeout=10000)  # still protecting
    with qtbot.waitSignal(window.runFinished, timeout=10000) as blocker:
        window.cancel()
    assert blocker.args[0]["cancelled"] is True


def test_closing_asks_before_discarding_photos_held_only_in_memory(qtbot, window):
    entry = window.entries[next(iter(window.entries))]
    asked = []
    window.ask_quit = lambda question: asked.append(question) or False
    entry.pinned_protected = np.zeros((96, 96, 3), np.uint8)  # protected, but its file could not be written
    window.close()
    assert len(asked) == 1 and "1 protected photo(s) exist only in memory" in asked[0]
    assert window.isVisible() and window.thread.isRunning()
    window.ask_quit = lambda question: asked.append(question) or True
    window.close()
    assert len(asked) == 2 and not window.isVisible() and window.thread.isFinished()


def test_closing_when_nothing_would_be_lost_does_not_ask(qtbot, window):
    window.ask_quit = lambda _question: pytest.fail("asked although nothing runs and nothing is unsaved")
    assert window.close_question() == ""
    window.close()
    assert not window.isVisible() and window.thread.isFinished()


def test_a_step_longer_than_the_wait_closes_the_window_once_it_ends(qtbot, window, engine, monkeypatch):
    monkeypatch.setattr(window_module, "CLOSE_WAIT_MS", 100)
    engine.steps, engine.step_s = 3, 1.0  # each step outlasts the wait
    started: list[str] = []
    window.worker.photoStarted.connect(lambda key, _n: started.append(key))
    assert window.protect_all()
    qtbot.waitUntil(lambda: bool(started), timeout=20000)
    window.ask_quit = lambda _question: True
    seconds = close_timed(window)
    assert seconds < 1.0  # the window does not freeze
    assert window.isVisible() and window.activity.text().startswith("Closing")
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)  # closed once the step ended
    assert window.thread.isFinished()


# -- protected copies that exist already ---------------------------------------------------------------------------


def existing(out_dir: Path, *names: str) -> dict[Path, str]:
    """Files already at some of the run's output names (someone else's files: never to be touched unasked)."""
    files = {}
    for name in names:
        path = out_dir / f"{name}_cloaked.jpg"
        path.write_bytes(f"someone's {name}".encode())
        files[path] = digest(path)
    return files


def run(qtbot, window: MainWindow) -> dict:
    with qtbot.waitSignal(window.runFinished, timeout=30000) as blocker:
        assert window.protect_all()
    return blocker.args[0]


def test_existing_outputs_are_asked_about_before_any_work_and_skipped(qtbot, window, engine, out_dir, monkeypatch):
    taken = existing(out_dir, "a", "b")
    asked = answer_existing(window, monkeypatch, SKIP)
    run(qtbot, window)
    assert len(asked) == 1 and sorted(p.name for p in asked[0]) == ["a_cloaked.jpg", "b_cloaked.jpg"]
    assert engine.cloak_calls == 2  # only c and d were protected
    assert {p: digest(p) for p in taken} == taken
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{name}_cloaked.jpg" for name in NAMES]
    by_name = {e.path.stem: e for e in window.entries.values()}
    assert by_name["a"].status == QUEUED and "a_cloaked.jpg exists" in by_name["a"].message
    assert by_name["c"].status == PROTECTED
    assert window.activity.text() == "Done: 2 protected, 2 skipped (output exists)"


def test_keep_both_writes_the_next_free_numbered_name(qtbot, window, engine, out_dir, monkeypatch):
    taken = existing(out_dir, "a")
    (out_dir / "a_cloaked (2).jpg").write_bytes(b"an earlier second copy")
    taken[out_dir / "a_cloaked (2).jpg"] = digest(out_dir / "a_cloaked (2).jpg")
    answer_existing(window, monkeypatch, KEEP_BOTH)
    run(qtbot, window)
    assert {p: digest(p) for p in taken} == taken
    entry = next(e for e in window.entries.values() if e.path.stem == "a")
    assert entry.status == PROTECTED and entry.output == out_dir / "a_cloaked (3).jpg"
    assert Image.open(entry.output).size == (96, 96)
    assert window.activity.text() == "Done: 4 protected"
    assert leftovers(out_dir) == []


def test_overwrite_replaces_the_existing_copies(qtbot, window, engine, out_dir, monkeypatch):
    taken = existing(out_dir, "a", "d")
    answer_existing(window, monkeypatch, OVERWRITE)
    run(qtbot, window)
    for path in taken:
        assert Image.open(path).size == (96, 96)  # now a protected photo
    assert len(list(out_dir.iterdir())) == 4
    assert window.activity.text() == "Done: 4 protected"


def test_the_report_measures_the_copy_as_written(qtbot, window, engine, out_dir):
    """What an uploader gets is the encoded file, not the pixels before the JPEG encoder."""
    run(qtbot, window)
    assert len(engine.measured) == 4
    for pixels, export_file in engine.measured:
        assert export_file is not None and export_file.parent == out_dir  # face DSSIM against the same encoding
        assert torch.equal(pixels, pil_to_tensor(Image.open(export_file).convert("RGB")))


def test_cancelling_the_question_starts_nothing(qtbot, window, engine, out_dir, monkeypatch):
    taken = existing(out_dir, "b")
    answer_existing(window, monkeypatch, None)
    assert not window.protect_all()
    assert window.mode == "idle" and engine.cloak_calls == 0
    assert sorted(out_dir.iterdir()) == list(taken)


def test_an_output_that_appears_during_the_run_is_counted_as_not_saved(qtbot, window, engine, out_dir, monkeypatch):
    asked = answer_existing(window, monkeypatch, OVERWRITE)
    late = out_dir / "d_cloaked.jpg"

    def another_program_writes_d(call: int) -> None:
        if call == 1:
            late.write_bytes(b"written by another program meanwhile")

    engine.on_cloak = another_program_writes_d
    summary = run(qtbot, window)
    assert asked == []  # nothing existed when the run started
    assert late.read_bytes() == b"written by another program meanwhile"  # never overwritten unasked
    entry = next(e for e in window.entries.values() if e.path.stem == "d")
    assert entry.status == ERROR and "not saved" in entry.message and entry.pinned_protected is not None
    assert summary["counts"] == {"protected": 3, "not saved": 1}
    assert window.activity.text() == "Done: 3 protected, 1 not saved"
    assert window.banner.isVisible() and "Export protected" in window.banner_text.text()


def test_a_protected_copy_dropped_into_the_album_is_flagged_not_protected_again(qtbot, window, engine, out_dir):
    run(qtbot, window)
    copy = out_dir / "a_cloaked.jpg"
    window.add_paths([copy])
    qtbot.waitUntil(lambda: window.entries[str(copy)].status == ERROR, timeout=10000)
    message = window.entries[str(copy)].message
    assert message == "a_cloaked.jpg is already a protected copy made by FaceCloak: protect the original photo instead"
    assert message in window.album.item_for(str(copy)).toolTip()
    calls = engine.cloak_calls
    assert not window.protect_all()  # nothing left to protect: the copy is never protected a second time
    assert engine.cloak_calls == calls == 4


# -- a real report ---------------------------------------------------------------------------------------------------


@pytest.fixture
def real_window(qapp, tmp_path):
    from facecloak.core.zoo.manifest import load_manifest, load_roles
    from facecloak.core.zoo.registry import cache_status

    manifest = load_manifest()
    if not all(cache_status(manifest[name]).ready for name in [ENSEMBLE, *load_roles()["evaluators"]]):
        pytest.skip("models not converted: run 'facecloak models --build'")
    win = MainWindow(QSettings(str(tmp_path / "facecloak.ini"), QSettings.Format.IniFormat))
    panel = win.settings_panel
    panel.expert.setChecked(True)
    panel.steps.setValue(1)
    for name, box in panel.ensemble_boxes.items():
        box.setChecked(name == ENSEMBLE)
    panel.measure.setChecked(True)
    panel.output_dir.setText(str(tmp_path / "out"))
    win.show()
    yield win
    win.ask_quit = lambda _question: True
    win.close()


@pytest.mark.needs_models
@pytest.mark.slow
def test_closing_during_a_real_report_stops_within_about_a_second(qtbot, real_window, tmp_path, astronaut):
    win = real_window
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=95)
    win.add_paths([photo])
    qtbot.waitUntil(lambda: all(e.faces is not None for e in win.entries.values()), timeout=60000)
    measuring: list[str] = []
    win.worker.measuring.connect(measuring.append)
    assert win.protect_all()
    qtbot.waitUntil(lambda: bool(measuring) or win.mode == "idle", timeout=120000)
    assert measuring, f"the run ended before its report: {win.activity.text()} {win.banner_text.text()}"
    qtbot.wait(500)  # the held-out models are loaded: inside the report's forward passes (seconds of them)
    win.ask_quit = lambda _question: True
    seconds = close_timed(win)
    assert win.thread.isFinished() and not win.isVisible()
    assert seconds < 2.0, f"closing took {seconds:.1f} s"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["astronaut_cloaked.jpg"]  # saved before the report
    qtbot.wait(100)  # the photo's result, sent as the worker stopped
    entry = win.entries[str(photo)]
    assert entry.status == PROTECTED and "cancelled during the report" in entry.report_error
