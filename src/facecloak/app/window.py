"""The main window: album, preview, settings and report over a worker thread that does all the torch work.

The window holds the album (``entries``) and what it is busy with (``mode``); a run's progress and ETA are a
:class:`~facecloak.app.run_state.RunProgress`, the preview's pixels a :class:`~facecloak.app.pixel_cache.PixelCache`,
the About box :mod:`facecloak.app.about`, and every sentence it shows about a photo :mod:`facecloak.app.messages`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEvent, QSettings, Qt, QThread, QTimer, QUrl, Signal
from PySide6.QtGui import QCloseEvent, QDesktopServices
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import actions, theme
from .about import AboutDialog, about_html
from .album import KEY_ROLE, MEASURING, AlbumStrip, DropOverlay, DropZone, PathDropTarget
from .messages import (
    SKIPPED_EXISTING,
    existing_outputs_text,
    next_step_text,
    report_placeholder,
    run_summary_text,
    still_matched,
)
from .model import DETECTING, ERROR, NO_FACE, PREVIEW_STEPS, PROTECTED, PROTECTING, QUEUED, PhotoEntry, RunSettings
from .output import KEEP_BOTH, OVERWRITE, SKIP, target_path
from .pixel_cache import PROTECTED_PIXELS, PixelCache
from .preview import SPLIT, PreviewWidget, face_numbers
from .report_image import compose_report_image, report_paths
from .report_panel import ReportPanel, limitations_text
from .run_state import Mode, RunProgress, Stage, format_eta, protection_key
from .settings_panel import SettingsPanel
from .worker import NOT_SAVED, ExportItem, PhotoJob, RunControl, Worker, cloak_config

IMAGE_EXTENSIONS = "*.jpg *.jpeg *.png *.webp *.bmp *.tif *.tiff"
# Closing waits this long for the worker (it stops within about a second); past it, the window stays open,
# says it is closing, and closes itself once the worker has stopped (a QThread must never die running).
CLOSE_WAIT_MS = 3000
PROGRESS_TICK_MS = 500  # the bar and ETA move on between the worker's events (a report sends none for seconds)
PROGRESS_SCALE = 1000
BANNER_STYLE = "#banner { background: #7a2a2a; border-radius: 6px; } #banner QLabel { color: white; }"
NEXT_STEP_STYLE = "#nextStep { background: palette(alternate-base); border-radius: 6px; }"


class MainWindow(PathDropTarget, QMainWindow):
    """``MainWindow(settings=None)``; pass a QSettings to keep tests away from the user's settings."""

    runFinished = Signal(object)  # re-emitted from the worker for callers (and tests)
    photoFinished = Signal(str)
    previewFinished = Signal(str)
    exportFinished = Signal(object)
    detectionFinished = Signal(str)

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("FaceCloak")
        self.setObjectName("FaceCloakMain")
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.store = settings or QSettings()
        self.entries: OrderedDict[str, PhotoEntry] = OrderedDict()
        self.pixels = PixelCache()
        self.mode = Mode.IDLE
        self.run: RunProgress | None = None
        self.current_key: str | None = None
        self.last_export_summary: dict | None = None
        self.last_run_summary: dict | None = None
        self._run_keys: list[str] = []
        self._run_settings: RunSettings | None = None
        self._done_keys: set[str] = set()
        self._run_skipped = 0  # photos left out of the current run because their copy exists
        self._protected_with: dict[str, tuple] = {}  # photo -> protection_key of the settings that protected it
        self._detecting: set[str] = set()
        self._building_models = False  # the first-run dialog is building them: no banner telling to build them
        self._models_banner = ""
        self._closing = False
        self.theme_choice = str(self.store.value("window/theme", theme.SYSTEM))

        from facecloak.core.zoo.manifest import load_manifest, load_roles

        self.manifest = load_manifest()
        self.roles = load_roles()
        from facecloak.core.device import available_devices, configure_cpu_threads

        self.devices = available_devices()
        configure_cpu_threads()  # the engine's rule, applied now so the settings name the threads the attack gets

        # worker thread: all torch work happens there
        self.control = RunControl()
        self.thread = QThread(self)
        self.thread.setObjectName("facecloak-worker")
        self.worker = Worker(self.control)
        self.worker.moveToThread(self.thread)
        self.thread.start()
        self._connect_worker()
        self._tick = QTimer(self)
        self._tick.setInterval(PROGRESS_TICK_MS)
        self._tick.timeout.connect(self._update_progress)

        app = QApplication.instance()
        if app is not None:  # before the widgets: style sheets take their palette colours when they are set
            theme.apply_theme(app, self.theme_choice)
            app.styleHints().colorSchemeChanged.connect(self._on_color_scheme_changed)
        self._build_ui()
        actions.install(self)
        self._restore_window()
        self.set_theme(self.theme_choice)
        self._update_actions()
        self.worker.checkModelsRequested.emit()

    # -- construction ----------------------------------------------------------------------------
    def _connect_worker(self) -> None:
        w = self.worker
        w.modelsChecked.connect(self._on_models_checked)
        w.detecting.connect(self._on_detecting)
        w.detected.connect(self._on_detected)
        w.status.connect(self._set_activity)
        w.photoStarted.connect(self._on_photo_started)
        w.stepProgress.connect(self._on_step)
        w.measuring.connect(self._on_measuring)
        w.photoFinished.connect(self._on_photo_finished)
        w.runFinished.connect(self._on_run_finished)
        w.previewFinished.connect(self._on_preview_finished)
        w.exportFinished.connect(self._on_export_finished)
        w.failed.connect(self.show_error)

    def _build_ui(self) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(6, 6, 6, 6)
        outer.addWidget(self._build_banner())
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.stack = QStackedWidget()
        self.dropzone = DropZone()
        self.stack.addWidget(self.dropzone)
        self.stack.addWidget(self._build_work_area())
        self.splitter.addWidget(self.stack)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("sideTabs")
        self.report_panel = ReportPanel()
        self.report_panel.exportJsonRequested.connect(self._ask_report_json)
        self.report_panel.exportPngRequested.connect(self._ask_report_png)
        self.settings_panel = SettingsPanel(self.store, self.manifest, self.roles, self.devices)
        self.settings_panel.changed.connect(self._show_next_step)
        self.tabs.addTab(self._build_report_page(), "Report")
        self.tabs.addTab(self.settings_panel, "Settings")
        self.tabs.setMinimumWidth(360)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        outer.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.drop_overlay = DropOverlay(central)
        self._build_status_bar()

    def _build_banner(self) -> QWidget:
        """The in-app message bar: errors are shown here, never as console tracebacks."""
        self.banner = QWidget()
        self.banner.setObjectName("banner")
        bl = QHBoxLayout(self.banner)
        bl.setContentsMargins(10, 6, 6, 6)
        self.banner_text = QLabel()
        self.banner_text.setWordWrap(True)
        self.banner_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss this message")
        close.clicked.connect(self.banner.hide)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(close)
        self.banner.setStyleSheet(BANNER_STYLE)
        self.banner.hide()
        return self.banner

    def _build_work_area(self) -> QWidget:
        work = QWidget()
        wl = QVBoxLayout(work)
        wl.setContentsMargins(0, 0, 0, 0)
        self.preview = PreviewWidget()
        self.preview.faceToggled.connect(self._on_face_toggled)
        self.preview.zoomChanged.connect(lambda _scale: self.zoom_label.setText(self.preview.zoom_text()))
        wl.addWidget(self.preview, 1)
        self.faces_row = QHBoxLayout()
        self.faces_label = QLabel()
        self.faces_row.addWidget(self.faces_label)
        self.face_boxes: list[QCheckBox] = []
        self.faces_row.addStretch(1)
        self.zoom_label = QLabel()
        self.zoom_label.setObjectName("zoomLabel")
        self.zoom_label.setToolTip("Zoom: Ctrl+0 fits the photo, Ctrl+1 shows 100%, the wheel zooms")
        self.faces_row.addWidget(self.zoom_label)
        wl.addLayout(self.faces_row)
        self.album = AlbumStrip()
        self.album.currentItemChanged.connect(self._on_album_selection)
        self.album.pathsDropped.connect(self.add_paths)
        self.album.removeRequested.connect(self.remove_photos)
        self.album.menuRequested.connect(lambda key, pos: self.album_menu(key).exec(pos))
        self.album.dropHighlight.connect(self.drop_highlight)
        wl.addWidget(self.album)
        return work

    def _build_report_page(self) -> QWidget:
        """The report tab: the report, and under it what to do next with a button to protect the photo again."""
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.report_panel, 1)
        self.next_step = QFrame()
        self.next_step.setObjectName("nextStep")
        self.next_step.setStyleSheet(NEXT_STEP_STYLE)
        row = QHBoxLayout(self.next_step)
        self.next_step_text = QLabel()
        self.next_step_text.setObjectName("nextStepText")
        self.next_step_text.setWordWrap(True)
        self.again_button = QPushButton("Protect again")
        self.again_button.setObjectName("protectAgainButton")
        self.again_button.setToolTip("Protect this photo again from its original, with the current settings")
        self.again_button.clicked.connect(self.protect_selected)
        row.addWidget(self.next_step_text, 1)
        row.addWidget(self.again_button)
        self.next_step.hide()
        layout.addWidget(self.next_step)
        return page

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.activity = QLabel("Ready")
        self.stage_label = QLabel()
        self.stage_label.setObjectName("runStage")
        self.stage_label.setToolTip("Which photo the run is on, and its stage: optimisation steps, then the report")
        self.eta_label = QLabel()
        self.eta_label.setObjectName("eta")
        self.eta_label.setToolTip("Time left for the whole run, from the speed measured in this run")
        self.progress = QProgressBar()
        self.progress.setObjectName("runProgress")
        self.progress.setMaximumWidth(260)
        self.progress.setRange(0, PROGRESS_SCALE)
        self.progress.setTextVisible(True)
        self.progress.setToolTip("The whole run: every photo's steps and report")
        self.progress.hide()
        bar.addWidget(self.activity, 1)
        bar.addPermanentWidget(self.stage_label)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.eta_label)

    def _restore_window(self) -> None:
        geometry = self.store.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.store.value("window/state")
        if state is not None:
            self.restoreState(state)
        split = self.store.value("window/splitter")
        if split is not None:
            self.splitter.restoreState(split)
        else:
            self.splitter.setSizes([900, 380])
        mode = str(self.store.value("window/view", SPLIT))
        if mode in self.view_actions:
            self.set_view_mode(mode)

    def save_window_state(self) -> None:
        self.store.setValue("window/geometry", self.saveGeometry())
        self.store.setValue("window/state", self.saveState())
        self.store.setValue("window/splitter", self.splitter.saveState())
        self.store.setValue("window/view", self.preview.mode)
        self.store.setValue("window/theme", self.theme_choice)
        self.settings_panel.save()
        self.store.sync()

    # -- look --------------------------------------------------------------------------------------
    def set_theme(self, choice: str) -> None:
        """Follow the system's colour scheme, or force the light or the dark look."""
        self.theme_choice = choice if choice in theme.CHOICES else theme.SYSTEM
        self.theme_actions[self.theme_choice].setChecked(True)
        app = QApplication.instance()
        if app is None:
            return
        theme.apply_theme(app, self.theme_choice)
        actions.refresh_icons(self, app.palette())
        for widget in self.findChildren(QWidget):  # style sheets read palette colours once: read them again
            if widget.styleSheet():
                widget.setStyleSheet(widget.styleSheet())

    def _on_color_scheme_changed(self, _scheme: Qt.ColorScheme) -> None:
        self.set_theme(self.theme_choice)  # "system" follows the desktop's light or dark

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "protect_button"):
            actions.refresh_icons(self)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.drop_overlay.setGeometry(self.centralWidget().rect())

    def drop_highlight(self, on: bool) -> None:
        """Show, while files are dragged over the window, that dropping them adds them to the album."""
        if on:
            self.drop_overlay.setGeometry(self.centralWidget().rect())
            self.drop_overlay.raise_()
        self.drop_overlay.setVisible(on)

    # -- messages ------------------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        self.banner_text.setText(text)
        self.banner.show()
        self.activity.setText(text.splitlines()[0][:160])

    def _set_activity(self, text: str) -> None:
        self.activity.setText(text)

    def confirm(self, title: str, text: str, action: str) -> bool:
        """Ask before a destructive action; ``action`` names it on its button (Cancel is the default)."""
        box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=self)
        box.setObjectName("confirmAction")
        yes = box.addButton(action, QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(keep)
        box.setEscapeButton(keep)
        box.exec()
        return box.clickedButton() is yes

    # -- album ---------------------------------------------------------------------------------
    def open_files(self) -> None:
        start = str(self.store.value("paths/last_open", str(Path.home())))
        files, _ = QFileDialog.getOpenFileNames(
            self, "Add photos", start, f"Photos ({IMAGE_EXTENSIONS});;All files (*)"
        )
        if files:
            self.store.setValue("paths/last_open", str(Path(files[0]).parent))
            self.add_paths([Path(f) for f in files])

    def open_folder(self) -> None:
        start = str(self.store.value("paths/last_open", str(Path.home())))
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of photos", start)
        if folder:
            self.store.setValue("paths/last_open", folder)
            self.add_paths([Path(folder)])

    def add_paths(self, paths: list[Path]) -> int:
        """Add files and folders (recursively) to the album; returns how many photos were new."""
        from facecloak.core.protect import iter_photos

        missing = [p for p in paths if not Path(p).exists()]
        photos = iter_photos([p for p in paths if Path(p).exists()])
        new = []
        for path in photos:
            key = str(path)
            if key in self.entries:
                continue
            entry = PhotoEntry(path)
            self.entries[key] = entry
            self.album.add_entry(entry)
            new.append((key, path))
        if missing:
            self.show_error("Not found: " + ", ".join(str(p) for p in missing[:5]))
        elif paths and not photos:
            self.show_error("No photos found there (JPEG, PNG, WebP, BMP, TIFF).")
        if new:
            self.stack.setCurrentIndex(1)
            self._detecting.update(key for key, _ in new)
            self.worker.detectRequested.emit(new)
            if self.current_key is None:
                self.album.setCurrentRow(0)
            self._set_activity(f"Added {len(new)} photo(s); finding faces…")
        self._update_actions()
        return len(new)

    def _busy_keys(self) -> set[str]:
        """Photos the current protect run has still to finish (their state must not change under it)."""
        if self.mode != Mode.PROTECT:
            return set()
        return set(self._run_keys) - self._done_keys

    def remove_photos(self, keys: list[str]) -> int:
        """Take photos out of the album (their files stay); asks first when protected pixels would be lost."""
        busy = self._busy_keys()
        keys = [k for k in keys if k in self.entries]
        kept = [k for k in keys if k in busy]
        keys = [k for k in keys if k not in busy]
        unsaved = [k for k in keys if self.entries[k].pinned_protected is not None]
        if unsaved and not self.confirm(
            "Remove photos?",
            f"{len(unsaved)} of these photos were protected but could not be written: removing them discards "
            "the protected version. Use File > Export protected first to keep it.",
            "Remove and discard",
        ):
            return 0
        for key in keys:
            del self.entries[key]
            self.pixels.forget(key)
            self._protected_with.pop(key, None)
            self._detecting.discard(key)
            self.album.remove_entry(key)
        if not self.entries:
            self._show_empty_album()
        message = f"Removed {len(keys)} photo(s) from the album; their files stay on disk." if keys else ""
        if kept:
            message = (message + " " if message else "") + "Photos being protected stay until the run is over."
        if message:
            self._set_activity(message)
        self._update_actions()
        return len(keys)

    def clear_album(self) -> bool:
        """Empty the album after asking (files on disk stay); whether it was emptied."""
        if self.mode != Mode.IDLE:
            self.show_error("Stop the current run before clearing the album.")
            return False
        if not self.entries:
            return False
        unsaved = len(self.unsaved_photos())
        text = f"Remove all {len(self.entries)} photos from the album? The photos and protected copies on disk stay."
        if unsaved:
            text += f"\n\n{unsaved} protected photo(s) could not be written and exist only here: they would be lost."
        if not self.confirm("Clear the album?", text, "Clear album"):
            return False
        self.entries.clear()
        self.pixels.clear()
        self._protected_with.clear()
        self._detecting.clear()
        self.album.clear_album()
        self._show_empty_album()
        self._update_actions()
        return True

    def _show_empty_album(self) -> None:
        self.current_key = None
        self.preview.set_images(None, None)
        self.preview.set_faces([], [])
        self._rebuild_face_boxes(None)
        self.report_panel.show_message("Protect a photo to see how well it worked.")
        self.next_step.hide()
        self.stack.setCurrentIndex(0)

    def album_menu(self, key: str) -> QMenu:
        """The context menu of photo ``key`` (the current one): protect (again), preview, show its copy, remove."""
        menu = QMenu(self)
        menu.setObjectName("albumMenu")
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._update_actions()
        menu.addAction(self.act_again)
        menu.addAction(self.act_look)
        menu.addSeparator()
        entry = self.entries.get(key)
        self.act_reveal.setEnabled(bool(entry and entry.output is not None and entry.output.exists()))
        menu.addAction(self.act_reveal)
        menu.addSeparator()
        menu.addAction(self.act_remove)
        return menu

    def remove_selected(self) -> int:
        return self.remove_photos(self.album.selected_keys())

    def reveal_current(self) -> bool:
        return self.reveal_output(self.current_key or "")

    def reveal_output(self, key: str) -> bool:
        """Open the folder that holds the protected copy of photo ``key`` in the file manager."""
        entry = self.entries.get(key)
        if entry is None or entry.output is None or not entry.output.exists():
            self._set_activity("This photo has no protected copy on disk yet.")
            return False
        if not self.open_url(QUrl.fromLocalFile(str(entry.output.parent))):
            self.show_error(f"Could not open the folder {entry.output.parent}")
            return False
        return True

    def open_url(self, url: QUrl) -> bool:
        return QDesktopServices.openUrl(url)

    def paths_dropped(self, paths: list[Path]) -> None:
        self.add_paths(paths)

    def _refresh_entry(self, entry: PhotoEntry) -> None:
        self.album.update_entry(entry)
        if entry.key == self.current_key:
            self._show_current()

    # -- worker events -------------------------------------------------------------------------
    def models_being_built(self, building: bool) -> None:
        """The first-run dialog builds the models: no banner telling the user to build them meanwhile."""
        self._building_models = building
        if building and self._models_banner and self.banner_text.text() == self._models_banner:
            self.banner.hide()

    def _on_models_checked(self, states: dict) -> None:
        self.model_states = states
        self.settings_panel.set_model_states(states)
        missing = [n for n in self.roles.get("ensemble", []) if not states.get(n, (False, ""))[0]]
        if missing and not self._building_models:
            self._models_banner = (
                f"Some models are not ready ({', '.join(missing)}): run 'facecloak models --build' once."
            )
            self.show_error(self._models_banner)

    def _on_detecting(self, key: str) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.status == QUEUED:
            entry.status = DETECTING
            self._refresh_entry(entry)

    def _on_detected(self, key: str, payload: dict) -> None:
        entry = self.entries.get(key)
        self._detecting.discard(key)
        if entry is None:
            return
        if "error" in payload:
            entry.status, entry.message = ERROR, payload["error"]
        else:
            entry.faces = list(payload["faces"])
            entry.enabled = [True] * len(entry.faces)
            entry.size = tuple(payload["size"])
            entry.thumbnail = payload["thumbnail"]
            self.pixels.put(key, clean=payload["image"])
            if entry.status == DETECTING:
                entry.status = QUEUED if entry.faces else NO_FACE
            entry.message = f"{len(entry.faces)} face(s) found" if entry.faces else "no face found"
        self._refresh_entry(entry)
        if not self._detecting and self.mode == Mode.IDLE:
            self._set_activity(self._detection_summary())
        self._update_actions()
        self.detectionFinished.emit(key)

    def _detection_summary(self) -> str:
        entries = list(self.entries.values())
        faces = sum(len(e.faces or []) for e in entries)
        without = sum(e.status == NO_FACE for e in entries)
        unreadable = sum(e.status == ERROR and not e.faces for e in entries)
        text = f"{len(entries)} photo(s) in the album, {faces} face(s) found"
        if without:
            text += f"; {without} without a face"
        if unreadable:
            text += f"; {unreadable} cannot be protected (hover them for why)"
        return text + ". Untick faces to leave them as they are, then Protect all."

    def _on_photo_started(self, key: str, faces: int) -> None:
        if self.run is not None:
            self.run.photo_started(key, faces)
        entry = self.entries.get(key)
        if entry is None:
            return
        if self.mode == Mode.PROTECT:
            entry.status, entry.progress, entry.message = PROTECTING, 0.0, ""
            self._refresh_entry(entry)
            self._set_activity(f"Protecting {entry.name} ({faces} face(s))…")
        else:
            self._set_activity(f"Previewing {entry.name}…")
        self._update_progress()

    def _on_step(self, key: str, step: int, total: int, _seconds: float) -> None:
        if self.run is not None:
            self.run.step_done(key, step, total)
        entry = self.entries.get(key)
        if entry is not None and self.mode == Mode.PROTECT:
            entry.progress = step / max(1, total)
            self.album.update_entry(entry)
        self._update_progress()

    def _on_measuring(self, key: str) -> None:
        if self.run is not None:
            self.run.report_started(key)
        entry = self.entries.get(key)
        if entry is not None:
            entry.message = MEASURING
            self.album.update_entry(entry)
            self._set_activity(f"Measuring how well {entry.name} is protected, on held-out recognisers…")
        self._update_progress()

    def _on_photo_finished(self, key: str, result) -> None:
        self._done_keys.add(key)
        if self.run is not None:
            self.run.photo_finished(key)
        entry = self.entries.get(key)
        if entry is None:
            return
        entry.progress = 1.0
        entry.seconds = result.seconds
        if result.status == PROTECTED:
            entry.output = result.output
            entry.report = result.report
            entry.report_images = result.report_images
            entry.report_error = result.report_error
            entry.face_dssim = result.face_dssim
            entry.message = result.message or (f"saved as {result.output}" if result.output else "")
            if result.saved:
                entry.status = PROTECTED
                entry.pinned_protected = None
                if self._run_settings is not None:
                    self._protected_with[key] = protection_key(self._run_settings, self.devices)
            else:
                # never lose a photo: keep the pixels so "Export protected" can write them elsewhere
                entry.status = ERROR
                entry.pinned_protected = result.protected
            self.pixels.put(key, protected=result.protected)
        else:
            entry.status = result.status
            entry.message = result.message
        self._refresh_entry(entry)
        self._update_progress()
        self.photoFinished.emit(key)

    def _on_run_finished(self, summary: dict) -> None:
        self.last_run_summary = summary
        cancelled = summary.get("cancelled")
        for key in self._run_keys:
            entry = self.entries.get(key)
            if entry is not None and entry.status == PROTECTING:
                entry.status, entry.progress, entry.message = QUEUED, 0.0, "cancelled"
                self._refresh_entry(entry)
        counts = dict(summary.get("counts", {}))
        if self._run_skipped:
            counts[SKIPPED_EXISTING] = self._run_skipped
        if counts.get(NOT_SAVED):
            self.show_error(
                f"{counts[NOT_SAVED]} protected photo(s) could not be written (the album's tooltips say why). "
                "They are kept in memory: use File > Export protected to write them elsewhere."
            )
        self._set_activity(run_summary_text(counts, bool(cancelled)))
        self._end_run()
        self.runFinished.emit(summary)

    def _on_preview_finished(self, key: str, result) -> None:
        if isinstance(result, dict):
            self._set_activity(result.get("error", "preview failed"))
            if "cancelled" not in result.get("error", ""):
                self.show_error(result.get("error", "preview failed"))
        elif key in self.entries:
            self.pixels.previews[key] = result
            self._set_activity(f"Preview ready ({PREVIEW_STEPS} steps, not saved). Protect to write the photo.")
        self._end_run()
        self.previewFinished.emit(key)

    def _end_run(self) -> None:
        self.mode = Mode.IDLE
        self.run = None
        self._tick.stop()
        self.control.reset()
        self.act_pause.setChecked(False)
        self.progress.hide()
        self.stage_label.clear()
        self.eta_label.clear()
        self._update_actions()
        self._show_current()  # faces unlock, the report panel says what happened

    # -- running -------------------------------------------------------------------------------
    def _settings_or_error(self) -> RunSettings | None:
        settings = self.settings_panel.current()
        problem = settings.problem()
        if problem:
            self.show_error(problem)
            return None
        return settings

    def _job(self, entry: PhotoEntry) -> PhotoJob:
        return PhotoJob(
            entry.key,
            entry.path,
            list(entry.faces) if entry.faces is not None else None,
            list(entry.enabled) if entry.faces is not None else None,
        )

    def _plan_outputs(
        self, todo: list[PhotoEntry], settings: RunSettings
    ) -> tuple[list[PhotoJob], list[PhotoEntry]] | None:
        """The run's jobs and the photos skipped because their copy exists; None when the user cancelled.

        Every output name is checked before any work: names taken by other files are asked about once
        (overwrite / keep both / skip); our own earlier copy of a photo is replaced; a name that two photos of
        this run share goes numbered for the second, so a run never overwrites what it wrote itself.
        ValueError when the settings cannot name a copy.
        """
        own, repeats, conflicts, seen = set(), set(), {}, set()
        for e in todo:
            target = target_path(e.path, settings.output_folder(e.path), settings)
            where = target.resolve()
            if where in seen:
                repeats.add(e.key)
            elif e.output is not None and e.output.resolve() == where:
                own.add(e.key)
            elif os.path.lexists(target):  # a dangling link takes the name too
                conflicts[e.key] = target
            seen.add(where)
        choice = OVERWRITE if settings.overwrite else None
        if conflicts and choice is None:
            choice = self.ask_existing_outputs(list(conflicts.values()))
            if choice is None:
                return None
        jobs, skipped = [], []
        for e in todo:
            if e.key in conflicts and choice == SKIP:
                skipped.append(e)
                continue
            job = self._job(e)
            job.overwrite = e.key in own or (e.key in conflicts and choice == OVERWRITE)
            job.keep_both = e.key in repeats or (e.key in conflicts and choice == KEEP_BOTH)
            jobs.append(job)
        return jobs, skipped

    def ask_existing_outputs(self, targets: list[Path]) -> str | None:
        """Ask once what to do with photos whose protected copy exists: OVERWRITE, KEEP_BOTH, SKIP, or None."""
        text = existing_outputs_text(targets)
        box = QMessageBox(QMessageBox.Icon.Question, "Protected copies exist", text, parent=self)
        box.setObjectName("existingOutputs")
        choices = [
            (box.addButton("Overwrite", QMessageBox.ButtonRole.DestructiveRole), OVERWRITE),
            (box.addButton("Keep both", QMessageBox.ButtonRole.AcceptRole), KEEP_BOTH),
            (box.addButton("Skip these photos", QMessageBox.ButtonRole.AcceptRole), SKIP),
        ]
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(choices[1][0])
        box.setEscapeButton(cancel)
        box.exec()
        return next((choice for button, choice in choices if button is box.clickedButton()), None)

    def _needs_protecting(self, entry: PhotoEntry, settings: RunSettings) -> bool:
        """Whether Protect all includes ``entry``: not protected yet, failed, or protected with other settings."""
        if entry.status in (QUEUED, DETECTING):
            return True
        if entry.status == ERROR:
            return bool(entry.faces) and entry.pinned_protected is None
        if entry.status == PROTECTED:
            used = self._protected_with.get(entry.key)
            return bool(entry.enabled_faces()) and used is not None and used != protection_key(settings, self.devices)
        return False

    def protect_all(self) -> bool:
        """Protect every photo not protected yet (or protected with other settings, or failed); whether it started."""
        if self.mode != Mode.IDLE:
            return False
        settings = self._settings_or_error()
        if settings is None:
            return False
        todo = [e for e in self.entries.values() if self._needs_protecting(e, settings)]
        if not todo:
            self._set_activity(
                "Nothing to protect: every photo is protected with these settings. Change a setting or a face "
                "selection, or use Protect again on a photo."
                if self.entries
                else "Nothing to protect: add photos first (drop them here or File > Open)."
            )
            return False
        return self._start_protect(todo, settings)

    def protect_selected(self) -> bool:
        """Protect the selected photos now, from their originals with the current settings (again, if protected)."""
        if self.mode != Mode.IDLE:
            return False
        settings = self._settings_or_error()
        if settings is None:
            return False
        todo = [self.entries[k] for k in self.album.selected_keys() if self._can_protect(self.entries[k])]
        if not todo:
            self._set_activity("Select a photo with at least one face ticked to protect it.")
            return False
        return self._start_protect(todo, settings)

    @staticmethod
    def _can_protect(entry: PhotoEntry) -> bool:
        return bool(entry.enabled_faces()) and entry.pinned_protected is None

    def _start_protect(self, todo: list[PhotoEntry], settings: RunSettings) -> bool:
        try:
            plan = self._plan_outputs(todo, settings)
        except (OSError, ValueError) as err:
            self.show_error(f"Cannot name the protected copies: {err}")
            return False
        if plan is None:
            self._set_activity("Nothing started: the existing protected copies are left as they are.")
            return False
        jobs, skipped = plan
        for entry in skipped:
            taken = target_path(entry.path, settings.output_folder(entry.path), settings)
            entry.message = f"skipped: {taken.name} exists (not overwritten)"
            self._refresh_entry(entry)
        if not jobs:
            self._set_activity(f"Nothing protected: the copies of all {len(skipped)} photo(s) exist (skipped).")
            return False
        self.banner.hide()
        self.control.reset()
        self.mode = Mode.PROTECT
        self._run_skipped = len(skipped)
        self._run_keys = [job.key for job in jobs]
        self._run_settings = settings
        self._done_keys = set()
        faces = {e.key: len(e.enabled_faces()) or 1 for e in todo}
        self.run = RunProgress([(job.key, faces[job.key]) for job in jobs], self._steps(settings), settings.measure)
        self._start_progress()
        self.worker.protectRequested.emit(jobs, settings)
        return True

    @staticmethod
    def _steps(settings: RunSettings) -> int:
        return cloak_config(settings).steps  # the steps the worker's attack will run, on the settings' device

    def _start_progress(self) -> None:
        self.progress.setValue(0)
        self.progress.show()
        self._tick.start()
        self._update_actions()
        self._show_current()  # the faces of photos in the run lock
        self._update_progress()

    def preview_look(self) -> bool:
        if self.mode != Mode.IDLE:
            return False
        entry = self.current_entry()
        if entry is None or not entry.enabled_faces():
            self._set_activity("Select a photo with at least one face selected to preview the look.")
            return False
        settings = self._settings_or_error()
        if settings is None:
            return False
        self.control.reset()
        self.mode = Mode.PREVIEW
        self.run = RunProgress([(entry.key, len(entry.enabled_faces()))], PREVIEW_STEPS, measure=False)
        self._start_progress()
        self.worker.previewRequested.emit(self._job(entry), settings)
        return True

    def _update_progress(self) -> None:
        """The run's bar (monotone over the whole run), where it is, and the time left."""
        run = self.run
        if run is None or self.mode not in (Mode.PROTECT, Mode.PREVIEW):
            return
        self.progress.setValue(round(run.fraction() * PROGRESS_SCALE))
        self.stage_label.setText(run.position())
        self.eta_label.setText(run.eta_text())

    def toggle_pause(self) -> None:
        if self.mode not in (Mode.PROTECT, Mode.PREVIEW) or self.run is None:
            self.act_pause.setChecked(False)
            return
        if self.control.paused:
            self.control.resume()
            self.run.resume()
            self.act_pause.setChecked(False)
            self._set_activity("Resumed")
        else:
            self.control.pause()
            self.run.pause()
            self.act_pause.setChecked(True)
            what = "report's current pass" if self.run.stage == Stage.REPORT else "current step"
            self._set_activity(f"Paused (the {what} finishes first)")
        self._update_progress()

    def cancel(self) -> None:
        if self.mode in (Mode.PROTECT, Mode.PREVIEW):
            self.control.cancel()
            if self.run is not None and self.run.paused:
                self.run.resume()
            in_report = self.run is not None and self.run.stage == Stage.REPORT
            self._set_activity(
                "Cancelling the report (the photo is saved)…" if in_report else "Cancelling after the current step…"
            )

    def _update_actions(self) -> None:
        idle = self.mode == Mode.IDLE
        running = self.mode in (Mode.PROTECT, Mode.PREVIEW)
        has = bool(self.entries)
        selected = [self.entries[k] for k in self.album.selected_keys() if k in self.entries]
        self.act_protect.setEnabled(idle and has)
        self.act_again.setEnabled(idle and any(self._can_protect(e) for e in selected))
        self.act_again.setText(
            "Protect &again" if selected and all(e.status == PROTECTED for e in selected) else "Protect &selected"
        )
        self.act_look.setEnabled(idle and has)
        self.act_pause.setEnabled(running)
        self.act_cancel.setEnabled(running)
        self.act_export.setEnabled(
            idle and any(e.status == PROTECTED or e.pinned_protected is not None for e in self.entries.values())
        )
        self.act_clear.setEnabled(idle and has)
        self.act_remove.setEnabled(bool(set(self.album.selected_keys()) - self._busy_keys()))
        self.again_button.setEnabled(self.act_again.isEnabled())
        self.settings_panel.setEnabled(idle)

    # -- selection, preview, faces ---------------------------------------------------------------
    def current_entry(self) -> PhotoEntry | None:
        return self.entries.get(self.current_key) if self.current_key else None

    def _on_album_selection(self, item, _previous=None) -> None:
        self.current_key = item.data(KEY_ROLE) if item is not None else None
        self._show_current()
        self._update_actions()

    def _images(self, entry: PhotoEntry) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Full-resolution original and protected pixels (evicted ones reload from disk)."""
        clean, protected, problem = self.pixels.load(entry)
        if problem:
            self._set_activity(f"Cannot show {entry.name}: {problem}")
        return clean, protected

    def _show_current(self) -> None:
        entry = self.current_entry()
        if entry is None:
            self.preview.placeholder = "Select a photo"
            self.preview.set_images(None, None)
            self.preview.set_faces([], [])
            self._rebuild_face_boxes(None)
            self.next_step.hide()
            return
        clean, protected = self._images(entry)
        label = "Protected"
        if protected is None and entry.key in self.pixels.previews:
            protected, label = self.pixels.previews[entry.key], f"Preview ({PREVIEW_STEPS} steps)"
        if protected is not None and clean is not None and protected.shape != clean.shape:
            protected = None  # the file on disk is not this photo any more
        self.preview.placeholder = entry.message if entry.status == ERROR else f"Finding faces in {entry.name}…"
        self.preview.set_images(clean, protected, label)
        self.preview.set_faces(entry.faces or [], entry.enabled)
        self._rebuild_face_boxes(entry)
        if entry.report is not None:
            self.report_panel.show_report(entry.report, entry.report_images, entry.output)
        elif entry.report_error:
            self.report_panel.show_message(entry.report_error)
        else:
            waiting = entry.key in self._busy_keys()
            self.report_panel.show_message(report_placeholder(entry, waiting))
        self._show_next_step()

    def _show_next_step(self) -> None:
        """Under the report of a protected photo: what to do next, with Protect again."""
        entry = self.current_entry()
        used = self._protected_with.get(entry.key) if entry is not None else None
        if entry is None or entry.status != PROTECTED or used is None:
            self.next_step.hide()
            return
        text = next_step_text(used[0], still_matched(entry.report))
        if used != protection_key(self.settings_panel.current(), self.devices):
            text += " The settings have changed since: Protect all or Protect again uses the new ones."
        self.next_step_text.setText(text)
        self.next_step.show()

    def _face_locked(self, entry: PhotoEntry) -> bool:
        return entry.key in self._busy_keys()

    def _rebuild_face_boxes(self, entry: PhotoEntry | None) -> None:
        for box in self.face_boxes:
            self.faces_row.removeWidget(box)
            box.deleteLater()
        self.face_boxes = []
        if entry is None or entry.faces is None:
            self.faces_label.setText("")
            return
        locked = self._face_locked(entry)
        self.faces_label.setText("Faces:" if entry.faces else "No face found in this photo.")
        numbers = face_numbers(entry.faces)
        for i, on in enumerate(entry.enabled):
            box = QCheckBox(f"Face {numbers[i]}")
            box.setChecked(on)
            box.setEnabled(not locked)
            box.setToolTip(
                "Being protected: the faces can be changed once this photo is done"
                if locked
                else "Protect this face (or click the face in the preview)"
            )
            box.toggled.connect(lambda checked, i=i: self._on_face_toggled(i, checked))
            self.face_boxes.append(box)  # in the detector's order, like entry.enabled
        for position, i in enumerate(sorted(range(len(numbers)), key=numbers.__getitem__)):
            self.faces_row.insertWidget(1 + position, self.face_boxes[i])  # shown left to right, as numbered

    def _on_face_toggled(self, index: int, on: bool) -> None:
        entry = self.current_entry()
        if entry is None or index >= len(entry.enabled):
            return
        if self._face_locked(entry):
            self._set_activity(f"{entry.name} is being protected: its faces can be changed once it is done.")
            self._show_faces(entry)  # the check box and the outline show what is really used
            return
        if entry.enabled[index] == on:
            return
        entry.enabled[index] = on
        if entry.status in (PROTECTED, ERROR, NO_FACE) and entry.faces:
            entry.status = QUEUED
            entry.message = "face selection changed: protect again"
            # what was shown no longer matches the selection; the earlier file stays until it is replaced
            entry.report, entry.report_images, entry.report_error = None, {}, ""
            self.pixels.forget(entry.key, PROTECTED_PIXELS)
            entry.pinned_protected = None
        self.pixels.previews.pop(entry.key, None)
        self.album.update_entry(entry)
        self._update_actions()
        self._show_current()

    def _show_faces(self, entry: PhotoEntry) -> None:
        self.preview.set_faces(entry.faces or [], entry.enabled)
        for box, on in zip(self.face_boxes, entry.enabled, strict=False):
            box.blockSignals(True)
            box.setChecked(on)
            box.blockSignals(False)

    def set_view_mode(self, mode: str) -> None:
        self.preview.set_mode(mode)
        self.view_actions[mode].setChecked(True)

    def zoom_fit(self) -> None:
        self.preview.zoom_fit()

    def zoom_actual(self) -> None:
        self.preview.zoom_actual()

    def zoom_in(self) -> None:
        self.preview.zoom_by(1.25)

    def zoom_out(self) -> None:
        self.preview.zoom_by(0.8)

    # -- export --------------------------------------------------------------------------------
    def ask_export(self) -> None:
        settings = self.settings_panel.current()
        start = settings.output_dir or str(self.store.value("paths/last_export", str(Path.home())))
        folder = QFileDialog.getExistingDirectory(self, "Export protected photos to", start)
        if folder:
            self.store.setValue("paths/last_export", folder)
            self.export_album(Path(folder))

    def export_album(self, folder: Path) -> bool:
        if self.mode != Mode.IDLE:
            return False
        settings = self.settings_panel.current()
        items = [
            ExportItem(
                e.key,
                e.path,
                PROTECTED if (e.status == PROTECTED or e.pinned_protected is not None) else e.status,
                "" if e.status == PROTECTED else e.message,
                e.output,
                e.pinned_protected if e.pinned_protected is not None else self.pixels.get(e.key, PROTECTED_PIXELS),
            )
            for e in self.entries.values()
        ]
        self.mode = Mode.EXPORT
        self._update_actions()
        self._set_activity(f"Exporting to {folder}…")
        self.worker.exportRequested.emit(items, Path(folder), settings)
        return True

    def _on_export_finished(self, summary: dict) -> None:
        self.last_export_summary = summary
        self.mode = Mode.IDLE
        self._update_actions()
        exported, skipped, failed = summary["exported"], summary["skipped"], summary["failed"]
        text = f"{len(exported)} protected photo(s) exported, {len(skipped)} skipped, {len(failed)} failed."
        self._set_activity(text)
        details = [f"Skipped {n}: {why}" for n, why in skipped] + [f"Failed {n}: {why}" for n, why in failed]
        box = QMessageBox(
            QMessageBox.Icon.Information if not failed else QMessageBox.Icon.Warning, "Export", text, parent=self
        )
        box.setObjectName("exportSummary")
        if details:
            box.setInformativeText("\n".join(details[:12]) + ("\n…" if len(details) > 12 else ""))
            box.setDetailedText("\n".join(details))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # non-blocking: the window stays usable
        self.export_dialog = box
        self.exportFinished.emit(summary)

    # -- report export ------------------------------------------------------------------------
    def _report_default(self, suffix: str) -> str:
        entry = self.current_entry()
        if entry is None:
            return ""
        base = entry.output or entry.path
        json_path, png_path = report_paths(base)
        return str(json_path if suffix == "json" else png_path)

    def _ask_report_json(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", self._report_default("json"), "JSON (*.json)")
        if path:
            self.save_report_json(Path(path))

    def _ask_report_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", self._report_default("png"), "PNG (*.png)")
        if path:
            self.save_report_png(Path(path))

    def save_report_json(self, path: Path) -> bool:
        entry = self.current_entry()
        if entry is None or entry.report is None:
            return False
        try:
            path.write_text(entry.report.to_json(), encoding="utf-8")
        except OSError as err:
            self.show_error(f"Could not save the report: {err}")
            return False
        self._set_activity(f"Report saved as {path}")
        return True

    def save_report_png(self, path: Path) -> bool:
        entry = self.current_entry()
        if entry is None or entry.report is None:
            return False
        try:
            compose_report_image(entry.report, entry.report_images, limitations_text()).save(path)
        except (OSError, ValueError) as err:
            self.show_error(f"Could not save the report: {err}")
            return False
        self._set_activity(f"Report saved as {path}")
        return True

    # -- about, close ------------------------------------------------------------------------
    def about_text(self) -> str:
        from facecloak import __version__

        return about_html(self.manifest, self.roles, __version__, limitations_text())

    def show_about(self) -> None:
        self.about_box = AboutDialog(self.about_text(), self)
        self.about_box.open()

    def shutdown(self, timeout_ms: int | None = None) -> bool:
        """Cancel all the worker does or has queued and stop its thread; whether it stopped in ``timeout_ms``.

        The default wait is :data:`CLOSE_WAIT_MS`.
        """
        self.control.close()
        self.thread.quit()
        return self.thread.wait(CLOSE_WAIT_MS if timeout_ms is None else timeout_ms)

    def unsaved_photos(self) -> list[PhotoEntry]:
        """Protected photos held only in memory (their file could not be written)."""
        return [e for e in self.entries.values() if e.pinned_protected is not None]

    def close_question(self) -> str:
        """What quitting now would stop or lose, as the question to ask; empty when nothing would be."""
        parts = []
        if self.mode == Mode.PROTECT:
            parts.append("Photos are being protected: quitting cancels the run (photos already finished are saved).")
        elif self.mode == Mode.EXPORT:
            parts.append("An export is running: quitting stops it after the photo being written.")
        unsaved = len(self.unsaved_photos())
        if unsaved:
            parts.append(
                f"{unsaved} protected photo(s) exist only in memory (they could not be written): quitting discards "
                "them. Keep working and use File > Export protected to save them."
            )
        return "\n\n".join(parts)

    def ask_quit(self, question: str) -> bool:
        """Ask whether to quit anyway (``question`` from :meth:`close_question`)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Quit FaceCloak?", question, parent=self)
        box.setObjectName("quitQuestion")
        label = "Cancel the run and quit" if self.mode in (Mode.PROTECT, Mode.EXPORT) else "Discard and quit"
        quit_button = box.addButton(label, QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton("Keep working", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.setEscapeButton(keep)
        box.exec()
        return box.clickedButton() is quit_button

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:  # already stopping: close once the worker has stopped
            event.setAccepted(self.thread.isFinished())
            return
        question = self.close_question()
        if question and not self.ask_quit(question):
            event.ignore()
            return
        self._closing = True
        self._tick.stop()
        self.save_window_state()
        if self.shutdown():
            event.accept()
            return
        # the step under way outlasted the wait: stay open, say so, and close once the worker has stopped
        event.ignore()
        for part in (self.centralWidget(), self.menuBar(), self.toolbar):
            part.setEnabled(False)
        self._set_activity("Closing: waiting for the current step to finish…")
        self.thread.finished.connect(self.close)
        if self.thread.isFinished():  # it stopped between the wait and the connection
            QTimer.singleShot(0, self.close)


def install_error_hook(window: MainWindow) -> None:
    """Unexpected errors become an in-app message (the traceback goes to the log on stderr, not a dialog)."""
    import sys
    import traceback

    def hook(kind, value, tb) -> None:
        traceback.print_exception(kind, value, tb)
        QTimer.singleShot(0, lambda: window.show_error(f"Unexpected error: {value}"))

    sys.excepthook = hook
    QApplication.instance()  # keep the reference pattern obvious: the hook lives as long as the app


__all__ = ["MainWindow", "existing_outputs_text", "format_eta", "install_error_hook", "run_summary_text"]
