"""The desktop app driven for real (offscreen): drop, detect, protect a real face, report, cancel, export."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

from facecloak.app import album as album_module
from facecloak.app.model import ERROR, NO_FACE, PROTECTED, QUEUED
from facecloak.app.preview import DIFFERENCE, FLICKER, SIDE_BY_SIDE, SPLIT
from facecloak.app.window import MainWindow

ENSEMBLE = "facesdk_mbf"  # the fastest model of the default ensemble
EVALUATOR = "openface"  # a held-out family, quick to evaluate

pytestmark = [pytest.mark.needs_models, pytest.mark.slow]


def _ready(name: str) -> bool:
    from facecloak.core.zoo.manifest import load_manifest
    from facecloak.core.zoo.registry import cache_status

    return cache_status(load_manifest()[name]).ready


@pytest.fixture(scope="module")
def album_dir(tmp_path_factory, astronaut) -> Path:
    """A folder with a real face in a sub-folder, a photo without a face, and a broken file."""
    root = tmp_path_factory.mktemp("album")
    (root / "trip").mkdir()
    Image.fromarray(astronaut).save(root / "trip" / "astronaut.jpg", quality=95)
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (200, 1, 3))
    Image.fromarray(ramp).save(root / "sky.png")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root


def configure(window: MainWindow, out_dir: Path, steps: int = 2) -> None:
    panel = window.settings_panel
    panel.expert.setChecked(True)
    panel.steps.setValue(steps)
    panel.budget.setValue(0.02)
    for name, box in panel.ensemble_boxes.items():
        box.setChecked(name == ENSEMBLE)
    panel.blur.setChecked(False)  # the cheapest robustness set keeps the test short
    panel.jpeg.setChecked(True)
    panel.resize.setChecked(True)
    panel.measure.setChecked(True)
    panel.output_dir.setText(str(out_dir))
    panel.store.setValue("run/evaluators", [EVALUATOR])


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    if not (_ready(ENSEMBLE) and _ready(EVALUATOR)):
        pytest.skip("models not converted: run 'facecloak models --build'")
    settings = QSettings(str(tmp_path_factory.mktemp("settings") / "facecloak.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings)
    win.show()
    yield win
    win.shutdown()
    win.close()


def drop(widget, paths: list[Path]) -> QDropEvent:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    with warnings.catch_warnings():  # PySide marks the QPoint constructor deprecated; it is the only one
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(
            QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
        )
    widget.dragEnterEvent(enter)
    assert enter.isAccepted()
    event = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    widget.dropEvent(event)
    return event


def wait_detected(qtbot, window: MainWindow) -> None:
    def done() -> bool:
        return all(e.faces is not None or e.status == ERROR for e in window.entries.values())

    qtbot.waitUntil(done, timeout=60000)


def badge(window: MainWindow, key: str) -> str:
    return window.album.item_for(key).data(album_module.STATUS_ROLE)


def test_empty_window_invites_a_drop_and_lists_model_licences(window):
    assert window.stack.currentWidget() is window.dropzone
    assert not window.act_protect.isEnabled()
    text = window.about_text()
    from facecloak.core.zoo.manifest import load_manifest

    for spec in load_manifest().values():
        assert spec.display_name in text and spec.model_licence in text
    assert "held-out evaluator" in text and "tuning judge" in text  # every model says what it is used for
    assert window.act_open.shortcut().toString() == "Ctrl+O"


def test_drop_folder_detects_faces_and_flags_problems(qtbot, window, album_dir):
    drop(window, [album_dir])  # a folder: searched recursively
    wait_detected(qtbot, window)
    by_name = {e.name: e for e in window.entries.values()}
    assert set(by_name) == {"astronaut.jpg", "sky.png", "broken.jpg"}
    assert window.stack.currentIndex() == 1
    face = by_name["astronaut.jpg"]
    assert face.status == QUEUED and len(face.faces) == 1 and face.enabled == [True]
    assert by_name["sky.png"].status == NO_FACE
    broken = by_name["broken.jpg"]
    assert broken.status == ERROR and broken.message.startswith("broken.jpg: ") and "image" in broken.message
    assert broken.message in window.album.item_for(broken.key).toolTip()  # the reason on hover
    assert badge(window, face.key) == QUEUED
    # dropping the same photo again does not duplicate it
    drop(window.album, [album_dir / "trip" / "astronaut.jpg"])
    assert len(window.entries) == 3


def test_preview_shows_faces_and_toggles_them(qtbot, window, album_dir):
    key = str(album_dir / "trip" / "astronaut.jpg")
    window.album.setCurrentItem(window.album.item_for(key))
    preview = window.preview
    assert preview.before is not None and preview.after is None
    assert len(preview.faces) == 1 and len(window.face_boxes) == 1
    x0, y0, x1, y1 = preview.faces[0].box
    rect = preview.image_rect(preview._panes()[0])
    s = preview.current_scale()
    centre = QPoint(round(rect.left() + (x0 + x1) / 2 * s), round(rect.top() + (y0 + y1) / 2 * s))
    qtbot.mouseClick(preview, Qt.MouseButton.LeftButton, pos=centre)
    assert window.entries[key].enabled == [False] and not window.face_boxes[0].isChecked()
    window.face_boxes[0].setChecked(True)
    assert window.entries[key].enabled == [True] and preview.enabled == [True]


def test_protect_real_face_writes_output_and_report(qtbot, window, album_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("out")
    configure(window, out_dir)
    key = str(album_dir / "trip" / "astronaut.jpg")
    original = hashlib.sha256(Path(key).read_bytes()).hexdigest()
    with qtbot.waitSignal(window.runFinished, timeout=180000) as blocker:
        assert window.protect_all()
        assert window.act_cancel.isEnabled() and not window.act_protect.isEnabled()
    assert blocker.args[0]["cancelled"] is False
    entry = window.entries[key]
    assert entry.status == PROTECTED, entry.message
    assert badge(window, key) == PROTECTED
    assert entry.output is not None and entry.output.parent == out_dir and entry.output.exists()
    assert entry.output.name.startswith("astronaut")
    assert hashlib.sha256(Path(key).read_bytes()).hexdigest() == original  # the original is untouched
    written = np.asarray(Image.open(entry.output).convert("RGB"))
    assert written.shape == (512, 512, 3)

    # preview: every mode has both images, the difference view shows a change inside the face
    window.album.setCurrentItem(window.album.item_for(key))
    preview = window.preview
    assert preview.before is not None and preview.after is not None
    for mode in (SPLIT, SIDE_BY_SIDE, FLICKER, DIFFERENCE):
        window.set_view_mode(mode)
        assert not preview.grab().isNull()
    diff = preview.difference_image()
    assert diff is not None and diff.width() == 512
    window.set_view_mode(SPLIT)
    preview.zoom_actual()
    assert preview.current_scale() == pytest.approx(1 / preview.devicePixelRatioF())
    before = preview.center
    qtbot.keyClick(preview, Qt.Key.Key_Right)
    assert preview.center.x() > before.x()
    preview.zoom_fit()
    x = round(preview._divider_x())
    y = preview.height() // 2
    qtbot.mousePress(preview, Qt.MouseButton.LeftButton, pos=QPoint(x, y))
    qtbot.mouseMove(preview, QPoint(x - 80, y))
    qtbot.mouseRelease(preview, Qt.MouseButton.LeftButton, pos=QPoint(x - 80, y))
    assert preview.divider < 0.5

    # report panel: headline, heatmap, bars, quality, limitations; exports
    panel = window.report_panel
    if entry.report is None:
        pytest.fail(f"no report: {entry.report_error}")
    assert panel.headline.text().startswith(("Estimated: found by a face search", "Found by a face search"))
    assert "before" in panel.worst.text() and "after" in panel.worst.text() and "%" in panel.worst.text()
    assert "SSIM" in panel.quality.text()
    assert not panel.heatmap.pixmap().isNull() and not panel.bars.pixmap().isNull()
    assert "future" in panel.limitations.text()
    report_dir = tmp_path_factory.mktemp("report")
    assert window.save_report_json(report_dir / "r.json")
    data = json.loads((report_dir / "r.json").read_text())
    assert data["ensemble"] == [ENSEMBLE] and data["evaluators"] == [EVALUATOR]
    # the effort that protected the photo: in the saved report and in the panel
    assert data["attack"]["steps"] >= 1 and data["attack"]["device"] in panel.summary.text()
    assert f"Protected in {data['attack']['steps']} step" in panel.summary.text()
    assert window.save_report_png(report_dir / "r.png")
    assert Image.open(report_dir / "r.png").size[0] >= 400


def test_export_writes_album_and_explains_skips(qtbot, window, album_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("export")
    with qtbot.waitSignal(window.exportFinished, timeout=60000) as blocker:
        assert window.export_album(target)
    summary = blocker.args[0]
    assert [name for name, _ in summary["exported"]] == ["astronaut.jpg"]
    skipped = dict(summary["skipped"])
    assert skipped.keys() == {"sky.png", "broken.jpg"}
    assert "face" in skipped["sky.png"] and skipped["broken.jpg"].startswith("broken.jpg: ")
    assert summary["failed"] == []
    files = sorted(p.name for p in target.iterdir())
    assert len(files) == 1 and files[0].startswith("astronaut")
    assert window.export_dialog.text().startswith("1 protected photo(s) exported, 2 skipped, 0 failed")
    window.export_dialog.close()


def test_fast_preview_is_shown_but_not_written(qtbot, window, album_dir, tmp_path_factory):
    key = str(album_dir / "trip" / "astronaut.jpg")
    window.album.setCurrentItem(window.album.item_for(key))
    window.face_boxes[0].setChecked(False)
    window.face_boxes[0].setChecked(True)  # selection changed: back to queued, preview allowed
    assert window.entries[key].status == QUEUED
    with qtbot.waitSignal(window.previewFinished, timeout=120000):
        assert window.preview_look()
    assert window.preview.after is not None and window.preview.after_label.startswith("Preview")
    assert window.entries[key].status == QUEUED


def test_pause_and_cancel_stop_within_a_step(qtbot, window, album_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cancelled")
    configure(window, out_dir, steps=300)
    key = str(album_dir / "trip" / "astronaut.jpg")
    assert window.entries[key].status == QUEUED
    steps: list[int] = []
    window.worker.stepProgress.connect(lambda _k, step, _t, _s: steps.append(step))
    with qtbot.waitSignal(window.runFinished, timeout=120000) as blocker:
        assert window.protect_all()
        qtbot.waitUntil(lambda: len(steps) >= 2, timeout=60000)
        window.toggle_pause()
        assert window.act_pause.isChecked()
        qtbot.wait(300)  # the step under way may still finish
        paused_at = len(steps)
        qtbot.wait(1500)
        assert len(steps) <= paused_at + 1  # paused: no further steps
        window.cancel()
    assert blocker.args[0]["cancelled"] is True
    assert len(steps) < 300
    entry = window.entries[key]
    assert entry.status == QUEUED and entry.message == "cancelled"
    assert list(out_dir.iterdir()) == []  # nothing written for a cancelled photo
    assert window.act_protect.isEnabled() and not window.act_cancel.isEnabled()


def test_settings_persist_between_runs(window, qapp):
    panel = window.settings_panel
    panel.preset.setCurrentText("high")
    panel.strip.setChecked(True)
    panel.suffix.setText("_safe")
    from facecloak.app.settings_panel import SettingsPanel

    again = SettingsPanel(panel.store, window.manifest, window.roles, window.devices)
    current = again.current()
    assert current.preset == "high" and current.suffix == "_safe" and current.strip_metadata
    window.save_window_state()
    assert panel.store.value("window/geometry") is not None


def test_an_ensemble_saved_against_an_older_default_falls_back_to_todays(window, qapp):
    from facecloak.app.settings_panel import SettingsPanel

    panel = window.settings_panel
    offered = list(panel.ensemble_boxes)
    panel.store.setValue("run/ensemble", [offered[0], "a_model_no_longer_offered"])
    stale = SettingsPanel(panel.store, window.manifest, window.roles, window.devices)
    assert [n for n, b in stale.ensemble_boxes.items() if b.isChecked()] == offered
    panel.store.setValue("run/ensemble", offered[:1])  # a real subset of today's models is kept
    kept = SettingsPanel(panel.store, window.manifest, window.roles, window.devices)
    assert [n for n, b in kept.ensemble_boxes.items() if b.isChecked()] == offered[:1]
    panel.store.setValue("run/ensemble", offered)


def test_the_cpu_label_names_the_threads_the_attack_will_get(qapp, tmp_path, monkeypatch):
    """The window applies the engine's thread rule at start-up, so the label is not torch's default count."""
    from facecloak.core.device import configure_cpu_threads

    monkeypatch.setenv("FACECLOAK_THREADS", "2")  # the rule's override; the test process otherwise runs 1 thread
    settings = QSettings(str(tmp_path / "facecloak.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings)
    try:
        panel = win.settings_panel
        texts = [panel.device.itemText(i) for i in range(panel.device.count())]
        assert "cpu: CPU (2 threads)" in texts
    finally:
        win.shutdown()
        win.close()
        configure_cpu_threads(1)


def test_the_device_setting_names_the_hardware_that_runs_the_attack(window, monkeypatch):
    from facecloak.app.settings_panel import SettingsPanel
    from facecloak.core import device as device_module

    panel = window.settings_panel
    texts = [panel.device.itemText(i) for i in range(panel.device.count())]
    assert texts[0] == f"auto: {device_module.device_label(window.devices[0])}"
    assert f"cpu: {device_module.device_label('cpu')}" in texts
    assert device_module.device_label("cpu").startswith("CPU (")
    # a machine with a GPU: the name of the GPU, not just "cuda"
    names = {"cuda": "NVIDIA H200 (CUDA, 140 GB)", "cpu": "CPU (2 threads)"}
    monkeypatch.setattr("facecloak.app.settings_panel.device_label", names.__getitem__)
    gpu = SettingsPanel(panel.store, window.manifest, window.roles, ["cuda", "cpu"])
    labels = [gpu.device.itemText(i) for i in range(gpu.device.count())]
    assert labels[0] == "auto: NVIDIA H200 (CUDA, 140 GB)" and "cuda: NVIDIA H200 (CUDA, 140 GB)" in labels
    assert gpu.device.model().item(labels.index("mps (not found)")).isEnabled() is False
