"""The window as a person uses it, over the fast fake engine of test_app_close: the run's progress, live controls,
the album's actions, messages that stay true, and the look. Offscreen, a few seconds per test."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from app_fakes import open_window
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from facecloak.app import window as window_module
from facecloak.app.album import STATUS_ROLE
from facecloak.app.model import ERROR, PROTECTED
from facecloak.app.window import MainWindow


@pytest.fixture
def window(qtbot, tmp_path, engine, photos, out_dir):
    with open_window(qtbot, tmp_path, photos, out_dir, measure=False) as win:
        yield win


def key_of(window: MainWindow, stem: str) -> str:
    return next(k for k, e in window.entries.items() if e.path.stem == stem)


def select(window: MainWindow, stem: str) -> str:
    key = key_of(window, stem)
    window.album.setCurrentItem(window.album.item_for(key))
    return key


def run(qtbot, window: MainWindow, start=None) -> dict:
    with qtbot.waitSignal(window.runFinished, timeout=30000) as blocker:
        (start or window.protect_all)()
        assert window.mode == "protect"
    return blocker.args[0]


def eta_seconds(text: str) -> int:
    """Seconds of an ETA label such as "ETA 1 min 05 s" or "ETA 42 s (paused)"."""
    found = re.search(r"ETA (?:(\d+) min )?(\d+) s", text)
    assert found, text
    return int(found.group(1) or 0) * 60 + int(found.group(2))


def steps_seen(window: MainWindow) -> list[int]:
    steps: list[int] = []
    window.worker.stepProgress.connect(lambda _k, step, _t, _s: steps.append(step))
    return steps


def cancel_and_wait(qtbot, window: MainWindow) -> None:
    with qtbot.waitSignal(window.runFinished, timeout=10000):
        window.cancel()


# -- the run ----------------------------------------------------------------------------------------------------------


def test_the_progress_bar_only_moves_forward_over_the_whole_run(qtbot, window, engine):
    engine.steps, engine.report_passes = 6, 3
    window.settings_panel.measure.setChecked(True)
    bar = window.progress
    shown: list[float] = []
    bar.valueChanged.connect(lambda value: shown.append(value / bar.maximum()))
    run(qtbot, window)
    assert len(shown) > 10
    assert shown == sorted(shown), shown  # never back at a photo boundary
    assert shown[-1] == pytest.approx(1.0)


def test_the_eta_uses_the_measured_speed_and_survives_a_pause(qtbot, window, engine):
    engine.steps, engine.step_s = 100, 0.02
    steps = steps_seen(window)
    assert window.protect_all()
    qtbot.waitUntil(lambda: len(steps) >= 25, timeout=20000)
    qtbot.wait(600)  # a tick of the bar
    before = eta_seconds(window.eta_label.text())
    assert 2 <= before <= 30  # about 375 steps of 0.02 s left
    window.toggle_pause()
    qtbot.wait(300)
    paused_at = len(steps)
    qtbot.wait(1500)
    assert len(steps) <= paused_at + 1
    assert window.eta_label.text().endswith("(paused)")
    window.toggle_pause()
    qtbot.waitUntil(lambda: len(steps) >= paused_at + 4, timeout=10000)
    after = eta_seconds(window.eta_label.text())
    assert after <= before + 2, (before, after)  # the pause is not counted as a slow step
    cancel_and_wait(qtbot, window)


def test_the_report_stage_has_its_own_label_moves_the_bar_and_cancels_at_once(qtbot, window, engine):
    engine.steps, engine.report_passes, engine.pass_s = 3, 1000, 0.02  # a report of many seconds
    window.settings_panel.measure.setChecked(True)
    measuring: list[str] = []
    window.worker.measuring.connect(measuring.append)
    assert window.protect_all()
    qtbot.waitUntil(lambda: bool(measuring), timeout=20000)
    qtbot.wait(100)
    assert "report" in window.stage_label.text() and window.stage_label.text().startswith("Photo 1 of 4")
    assert "held-out" in window.activity.text()
    assert window.album.item_for(measuring[0]).data(STATUS_ROLE) == "measuring"  # the badge says so too
    start = window.progress.value()
    qtbot.wait(1200)
    assert window.progress.value() > start  # the report's own progress, between the worker's events
    assert 0 < window.progress.value() < window.progress.maximum() / 4  # photo 1 of 4 is not over
    with qtbot.waitSignal(window.runFinished, timeout=3000) as blocker:
        window.cancel()
        assert window.activity.text().startswith("Cancelling the report")
    assert blocker.args[0]["cancelled"] is True


def test_the_faces_of_the_photo_being_protected_are_locked(qtbot, window, engine):
    engine.steps, engine.step_s = 100000, 0.02
    steps = steps_seen(window)
    key = select(window, "a")
    assert window.face_boxes[0].isEnabled()
    assert window.protect_all()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=20000)
    entry = window.entries[key]
    box = window.face_boxes[0]
    assert not box.isEnabled() and "Being protected" in box.toolTip()
    box.setChecked(False)  # even when forced, the box and the state agree
    assert window.face_boxes[0].isChecked() is True and entry.enabled == [True]
    preview = window.preview
    _x0, _y0, x1, y1 = preview.faces[0].box  # inside the face, near its corner
    rect = preview.image_rect(preview._panes()[0])
    s = preview.current_scale()
    qtbot.mouseClick(
        preview, Qt.MouseButton.LeftButton, pos=QPoint(round(rect.left() + x1 * s) - 3, round(rect.top() + y1 * s) - 3)
    )
    assert entry.enabled == [True] and preview.enabled == [True] and window.face_boxes[0].isChecked()
    assert "being protected" in window.activity.text()
    cancel_and_wait(qtbot, window)
    assert window.face_boxes[0].isEnabled()  # unlocked once the run is over


def test_after_changing_the_preset_protect_all_protects_again(qtbot, window, engine, out_dir):
    run(qtbot, window)
    assert engine.cloak_calls == 4
    assert not window.protect_all()  # the same settings: nothing to do, and it says why
    assert "every photo is protected with these settings" in window.activity.text()
    window.settings_panel.preset.setCurrentText("high")
    summary = run(qtbot, window)
    assert engine.cloak_calls == 8 and summary["counts"] == {"protected": 4}
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{n}_cloaked.jpg" for n in "abcd"]  # replaced, not added


def test_a_protected_photo_is_protected_again_from_its_menu_or_the_report(qtbot, window, engine):
    run(qtbot, window)
    key = select(window, "b")
    assert window.next_step.isVisible() and "Protected with the mid preset" in window.next_step_text.text()
    menu = window.album_menu(key)
    again = next(a for a in menu.actions() if a.text().replace("&", "") == "Protect again")
    assert again.isEnabled()
    run(qtbot, window, again.trigger)
    assert engine.cloak_calls == 5 and window.entries[key].status == PROTECTED
    run(qtbot, window, window.again_button.click)
    assert engine.cloak_calls == 6


def test_the_advice_at_the_strongest_preset_names_no_stronger_one(qtbot, window, engine, monkeypatch):
    monkeypatch.setattr(window_module, "still_matched", lambda _report: True)
    window.settings_panel.preset.setCurrentText("mid")
    run(qtbot, window)
    select(window, "a")
    assert "choose high" in window.next_step_text.text()
    window.settings_panel.preset.setCurrentText("high")
    run(qtbot, window)
    select(window, "b")
    select(window, "a")
    text = window.next_step_text.text()
    assert "strongest preset" in text and "Expert" in text and "choose" not in text


# -- the album ---------------------------------------------------------------------------------------------------------


def test_delete_removes_the_selected_photo_and_leaves_its_file(qtbot, window, photos, tmp_path):
    junk = tmp_path / "photos" / "notes.jpg"
    junk.write_bytes(b"not a photo")
    window.add_paths([junk])
    qtbot.waitUntil(lambda: window.entries[str(junk)].status == ERROR, timeout=10000)
    window.album.setCurrentItem(window.album.item_for(str(junk)))
    window.album.setFocus()
    qtbot.keyClick(window.album, Qt.Key.Key_Delete)
    assert str(junk) not in window.entries and window.album.item_for(str(junk)) is None
    assert junk.exists()  # only taken out of the album
    select(window, "c")
    window.album_menu(key_of(window, "c"))
    window.act_remove.trigger()
    assert [e.path.stem for e in window.entries.values()] == ["a", "b", "d"] and window.album.count() == 3
    assert all(p.exists() for p in photos)
    assert "their files stay" in window.activity.text()


def test_the_album_menu_reveals_the_protected_copy(qtbot, window, out_dir):
    key = select(window, "a")
    assert not next(a for a in window.album_menu(key).actions() if "folder" in a.text()).isEnabled()
    run(qtbot, window)
    opened: list[QUrl] = []
    window.open_url = lambda url: opened.append(url) or True
    reveal = next(a for a in window.album_menu(key).actions() if "folder" in a.text())
    assert reveal.isEnabled()
    reveal.trigger()
    assert [Path(u.toLocalFile()) for u in opened] == [out_dir]


def test_clearing_the_album_asks_first(qtbot, window):
    asked: list[str] = []
    window.confirm = lambda _title, text, _action: asked.append(text) or False
    window.act_clear.trigger()
    assert len(asked) == 1 and "all 4 photos" in asked[0] and len(window.entries) == 4
    window.confirm = lambda _title, text, _action: asked.append(text) or True
    window.act_clear.trigger()
    assert not window.entries and window.album.count() == 0 and window.stack.currentWidget() is window.dropzone


def drag_events(paths: list[Path]) -> tuple[QDragEnterEvent, QDropEvent]:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    with warnings.catch_warnings():  # PySide marks the QPoint constructor deprecated; it is the only one
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(
            QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
        )
    drop = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    drop.mime = mime  # keep the data alive as long as the event
    return enter, drop


def test_dragging_files_over_the_window_highlights_where_they_go(qtbot, window, photos):
    enter, drop = drag_events(photos[:1])
    window.dragEnterEvent(enter)
    assert enter.isAccepted() and window.drop_overlay.isVisible()
    window.dragLeaveEvent(QDragLeaveEvent())
    assert not window.drop_overlay.isVisible()
    enter, drop = drag_events(photos[:1])
    window.album.dragEnterEvent(enter)  # over the album strip as well
    assert window.drop_overlay.isVisible()
    window.album.dropEvent(drop)
    assert not window.drop_overlay.isVisible()


def test_arrow_keys_move_through_the_album(qtbot, window):
    select(window, "a")
    window.album.setFocus()
    qtbot.keyClick(window.album, Qt.Key.Key_Right)
    assert window.entries[window.current_key].path.stem == "b"


# -- messages ----------------------------------------------------------------------------------------------------------


def test_messages_follow_what_is_happening(qtbot, window, engine, tmp_path):
    assert "finding faces" not in window.activity.text().lower()
    assert "4 face(s) found" in window.activity.text()
    engine.steps, engine.step_s = 100000, 0.02
    steps = steps_seen(window)
    assert window.protect_all()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=20000)
    select(window, "a")
    assert window.report_panel.headline.text().startswith("Protecting a.jpg")
    select(window, "b")
    assert window.report_panel.headline.text() == "b.jpg is waiting for its turn in this run."
    cancel_and_wait(qtbot, window)
    junk = tmp_path / "photos" / "notes.jpg"
    junk.write_bytes(b"not a photo")
    window.add_paths([junk])
    qtbot.waitUntil(lambda: window.entries[str(junk)].status == ERROR, timeout=10000)
    window.album.setCurrentItem(window.album.item_for(str(junk)))
    headline = window.report_panel.headline.text()
    assert headline.startswith("notes.jpg") and "Protect it" not in headline and "Delete" in headline


def test_the_zoom_label_follows_the_photo_shown(qtbot, window, tmp_path):
    big = tmp_path / "photos" / "big.jpg"
    Image.fromarray(np.zeros((1200, 1600, 3), np.uint8)).save(big)
    window.add_paths([big])
    qtbot.waitUntil(lambda: window.entries[str(big)].faces is not None, timeout=10000)
    select(window, "a")
    window.preview.zoom_actual()
    assert window.zoom_label.text() == "100%"
    window.album.setCurrentItem(window.album.item_for(str(big)))
    label = window.zoom_label.text()
    assert label.startswith("Fit ") and label == window.preview.zoom_text()
    fit = round(window.preview.fit_scale() * window.preview.devicePixelRatioF() * 100)
    assert label == f"Fit {fit}%"


def test_ctrl_and_the_keypad_enter_start_protect_all(qtbot, window, engine):
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    with qtbot.waitSignal(window.runFinished, timeout=30000):
        qtbot.keyClick(
            window, Qt.Key.Key_Enter, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.KeypadModifier
        )
    assert engine.cloak_calls == 4


def test_no_banner_asks_to_build_models_while_the_setup_dialog_builds_them(qtbot, window, monkeypatch):
    from facecloak.app import first_run

    window.worker.modelsChecked.emit({})  # nothing ready: the usual banner
    assert window.banner.isVisible() and "models --build" in window.banner_text.text()
    monkeypatch.setattr(first_run, "missing_models", lambda names=None: ["sface"])
    monkeypatch.setattr(first_run.FirstRunDialog, "start", lambda self: None)
    dialog = first_run.offer_first_run(window)
    assert dialog is not None and not window.banner.isVisible()
    window.worker.modelsChecked.emit({})  # the window's own check arrives while the dialog builds
    assert not window.banner.isVisible()
    dialog.finished_building.emit(first_run.FirstRunResult(["sface"], ready=["sface"], seconds=1.0))
    qtbot.waitUntil(lambda: window.activity.text().startswith("Models ready"), timeout=10000)
    assert not window.banner.isVisible()
    dialog.result_ = dialog.finished_building  # let it close
    dialog.done(0)


# -- the look ----------------------------------------------------------------------------------------------------------


def test_the_toolbar_has_icons_with_text_and_one_primary_action(window):
    tools = window.toolbar
    for act in (window.act_open, window.act_look, window.act_pause, window.act_cancel, window.act_export):
        assert not act.icon().isNull(), act.text()
        assert tools.widgetForAction(act).toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonTextBesideIcon
        assert act.toolTip() and "(" in act.toolTip()  # what it does, and its key
    primary = window.protect_button
    assert primary.objectName() == "primaryAction" and primary.text() == "Protect all" and not primary.icon().isNull()
    assert "Ctrl+Return" in primary.toolTip()
    assert primary.isEnabled() == window.act_protect.isEnabled()
    for act in window.view_actions.values():
        assert not act.icon().isNull() and act.toolTip()


def icon_lightness(window: MainWindow) -> int:
    image = window.act_open.icon().pixmap(24, 24).toImage()
    drawn = [image.pixelColor(x, y) for x in range(24) for y in range(24) if image.pixelColor(x, y).alpha() > 200]
    return max(c.lightness() for c in drawn)


def test_the_dark_look_is_chosen_kept_and_redraws_the_icons(qapp, window):
    try:
        window.set_theme("dark")
        assert qapp.palette().color(qapp.palette().ColorRole.Window).lightness() < 80
        assert icon_lightness(window) > 180  # light lines on the dark look
        window.save_window_state()
        assert window.store.value("window/theme") == "dark"
        window.set_theme("light")
        assert qapp.palette().color(qapp.palette().ColorRole.Window).lightness() > 200
        assert icon_lightness(window) < 80
    finally:
        window.set_theme("system")
