"""The main window: album, preview, settings and report over a worker thread that does all the torch work."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSettings, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .album import AlbumStrip, DropZone, PathDropTarget
from .model import DETECTING, ERROR, NO_FACE, PREVIEW_STEPS, PROTECTED, PROTECTING, QUEUED, PhotoEntry, RunSettings
from .output import KEEP_BOTH, OVERWRITE, SKIP, target_path
from .preview import DIFFERENCE, FLICKER, SIDE_BY_SIDE, SPLIT, PreviewWidget
from .report_image import compose_report_image, report_paths
from .report_panel import ReportPanel, limitations_text
from .settings_panel import SettingsPanel
from .worker import NOT_SAVED, ExportItem, PhotoJob, RunControl, Worker

IMAGE_EXTENSIONS = "*.jpg *.jpeg *.png *.webp *.bmp *.tif *.tiff"
PIXEL_CACHE = 6  # full-resolution photos kept in memory for the preview (the rest reload from disk)
# Closing waits this long for the worker (it stops within about a second); past it, the window stays open,
# says it is closing, and closes itself once the worker has stopped (a QThread must never die running).
CLOSE_WAIT_MS = 3000
SKIPPED_EXISTING = "skipped (output exists)"
SUMMARY_ORDER = (PROTECTED, NOT_SAVED, SKIPPED_EXISTING, NO_FACE, ERROR)


def run_summary_text(counts: dict[str, int], cancelled: bool) -> str:
    """The status-bar line at the end of a run: every photo counted as what really happened to it."""
    kinds = [k for k in SUMMARY_ORDER if counts.get(k)] + sorted(k for k in counts if k not in SUMMARY_ORDER)
    text = ", ".join(f"{counts[k]} {k}" for k in kinds if counts[k]) or "nothing done"
    return ("Cancelled: " if cancelled else "Done: ") + text


def existing_outputs_text(targets: list[Path]) -> str:
    """The question asked before a run when protected copies with the same names exist already."""
    from facecloak.core.image import display_name

    n = len(targets)
    names = ", ".join(display_name(t) for t in targets[:5]) + (f" and {n - 5} more" if n > 5 else "")
    folders = {t.parent for t in targets}
    where = f" in {folders.pop()}" if len(folders) == 1 else ""
    example = display_name(targets[0].with_name(f"{targets[0].stem} (2){targets[0].suffix}"))
    return (
        f"{n} of the protected copies this run would write exist{'s' if n == 1 else ''} already{where}: {names}.\n\n"
        f"Overwrite them, keep both (the new copy gets a numbered name such as {example}), "
        "or skip these photos? Originals are never changed."
    )


def format_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


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
        self._pixels: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._previews: dict[str, np.ndarray] = {}
        self.mode = "idle"  # "idle" | "protect" | "preview" | "export"
        self.current_key: str | None = None
        self.last_export_summary: dict | None = None
        self.last_run_summary: dict | None = None
        self._sec_per_face_step: float | None = None
        self._run_keys: list[str] = []
        self._run_steps = 0
        self._current_faces = 1
        self._current_step = 0
        self._done_keys: set[str] = set()
        self._run_skipped = 0  # photos left out of the current run because their copy exists
        self._closing = False

        from facecloak.core.zoo.manifest import load_manifest, load_roles

        self.manifest = load_manifest()
        self.roles = load_roles()
        from facecloak.core.device import available_devices

        self.devices = available_devices()

        # worker thread: all torch work happens there
        self.control = RunControl()
        self.thread = QThread(self)
        self.thread.setObjectName("facecloak-worker")
        self.worker = Worker(self.control)
        self.worker.moveToThread(self.thread)
        self.thread.start()
        self._connect_worker()

        self._build_ui()
        self._build_actions()
        self._restore_window()
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
        # in-app message bar: errors are shown here, never as console tracebacks
        self.banner = QWidget()
        self.banner.setObjectName("banner")
        bl = QHBoxLayout(self.banner)
        bl.setContentsMargins(10, 6, 6, 6)
        self.banner_text = QLabel()
        self.banner_text.setWordWrap(True)
        self.banner_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.banner.hide)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(close)
        self.banner.setStyleSheet(
            "#banner { background: #7a2a2a; border-radius: 6px; } #banner QLabel { color: white; }"
        )
        self.banner.hide()
        outer.addWidget(self.banner)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.stack = QStackedWidget()
        self.dropzone = DropZone()
        self.stack.addWidget(self.dropzone)
        work = QWidget()
        wl = QVBoxLayout(work)
        wl.setContentsMargins(0, 0, 0, 0)
        self.preview = PreviewWidget()
        self.preview.faceToggled.connect(self._on_face_toggled)
        self.preview.zoomChanged.connect(lambda s: self.zoom_label.setText(f"{s * self.devicePixelRatioF():.0%}"))
        wl.addWidget(self.preview, 1)
        self.faces_row = QHBoxLayout()
        self.faces_label = QLabel()
        self.faces_row.addWidget(self.faces_label)
        self.face_boxes: list[QCheckBox] = []
        self.faces_row.addStretch(1)
        self.zoom_label = QLabel("fit")
        self.zoom_label.setToolTip("Zoom (Ctrl+0 fit, Ctrl+1 100%, wheel to zoom)")
        self.faces_row.addWidget(self.zoom_label)
        wl.addLayout(self.faces_row)
        self.album = AlbumStrip()
        self.album.currentItemChanged.connect(self._on_album_selection)
        self.album.pathsDropped.connect(self.add_paths)
        wl.addWidget(self.album)
        self.stack.addWidget(work)
        self.splitter.addWidget(self.stack)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("sideTabs")
        self.report_panel = ReportPanel()
        self.report_panel.exportJsonRequested.connect(self._ask_report_json)
        self.report_panel.exportPngRequested.connect(self._ask_report_png)
        self.settings_panel = SettingsPanel(self.store, self.manifest, self.roles, self.devices)
        self.tabs.addTab(self.report_panel, "Report")
        self.tabs.addTab(self.settings_panel, "Settings")
        self.tabs.setMinimumWidth(360)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        outer.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

        bar = self.statusBar()
        self.activity = QLabel("Ready")
        self.eta_label = QLabel()
        self.eta_label.setObjectName("eta")
        self.progress = QProgressBar()
        self.progress.setObjectName("runProgress")
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.progress.hide()
        bar.addWidget(self.activity, 1)
        bar.addPermanentWidget(self.eta_label)
        bar.addPermanentWidget(self.progress)

    def _action(self, text: str, shortcut: Any = None, tip: str = "", slot=None, checkable: bool = False) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setToolTip(
                tip + (f" ({action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)})" if shortcut else "")
            )
            action.setStatusTip(tip)
        action.setCheckable(checkable)
        if slot is not None:
            action.triggered.connect(slot)
        return action

    def _build_actions(self) -> None:
        self.act_open = self._action(
            "&Open…", QKeySequence.StandardKey.Open, "Add photos to the album", self.open_files
        )
        self.act_open_folder = self._action(
            "Open &folder…", "Ctrl+Shift+O", "Add every photo in a folder", self.open_folder
        )
        self.act_export = self._action(
            "&Export protected…", "Ctrl+E", "Write the protected album to a folder", self.ask_export
        )
        self.act_clear = self._action("&Clear album", None, "Remove every photo from the album", self.clear_album)
        self.act_quit = self._action("&Quit", QKeySequence.StandardKey.Quit, "Quit FaceCloak", self.close)
        self.act_protect = self._action("&Protect all", "Ctrl+Return", "Protect every queued photo", self.protect_all)
        self.act_look = self._action(
            "Preview &look", "Ctrl+L", f"A fast {PREVIEW_STEPS}-step preview of the selected photo", self.preview_look
        )
        self.act_pause = self._action(
            "P&ause", "Ctrl+Space", "Pause or resume within one optimisation step", self.toggle_pause, True
        )
        self.act_cancel = self._action("&Cancel", "Esc", "Stop within one optimisation step", self.cancel)
        self.view_group = QActionGroup(self)
        self.view_actions: dict[str, QAction] = {}
        for key, (label, shortcut, tip) in {
            SPLIT: ("&Split", "1", "Before | after with a draggable divider"),
            SIDE_BY_SIDE: ("Side &by side", "2", "Original and protected next to each other"),
            FLICKER: ("A/B &flicker", "3", "Alternate original and protected"),
            DIFFERENCE: ("&Difference", "4", "Amplified difference: where the change is"),
        }.items():
            act = self._action(label, shortcut, tip, lambda _c=False, k=key: self.set_view_mode(k), True)
            self.view_group.addAction(act)
            self.view_actions[key] = act
        self.view_actions[SPLIT].setChecked(True)
        self.act_fit = self._action("Zoom to &fit", "Ctrl+0", "Fit the photo in the view", self.preview.zoom_fit)
        self.act_actual = self._action(
            "&Actual pixels (100%)", "Ctrl+1", "One photo pixel per screen pixel", self.preview.zoom_actual
        )
        self.act_zoom_in = self._action(
            "Zoom &in", QKeySequence.StandardKey.ZoomIn, "Zoom in", lambda: self.preview.zoom_by(1.25)
        )
        self.act_zoom_out = self._action(
            "Zoom &out", QKeySequence.StandardKey.ZoomOut, "Zoom out", lambda: self.preview.zoom_by(0.8)
        )
        self.act_about = self._action("&About FaceCloak", None, "Models and licences", self.show_about)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for act in (self.act_open, self.act_open_folder, self.act_export, None, self.act_clear, None, self.act_quit):
            file_menu.addAction(act) if act else file_menu.addSeparator()
        run_menu = menu.addMenu("&Protect")
        for act in (self.act_protect, self.act_look, self.act_pause, self.act_cancel):
            run_menu.addAction(act)
        view_menu = menu.addMenu("&View")
        for act in self.view_actions.values():
            view_menu.addAction(act)
        view_menu.addSeparator()
        for act in (self.act_fit, self.act_actual, self.act_zoom_in, self.act_zoom_out):
            view_menu.addAction(act)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.act_about)

        tools = self.toolbar = self.addToolBar("Main")
        tools.setObjectName("mainToolbar")
        tools.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for act in (self.act_open, None, self.act_protect, self.act_look, self.act_pause, self.act_cancel, None):
            tools.addAction(act) if act else tools.addSeparator()
        for act in self.view_actions.values():
            tools.addAction(act)
        tools.addSeparator()
        tools.addAction(self.act_fit)
        tools.addAction(self.act_actual)
        tools.addSeparator()
        tools.addAction(self.act_export)

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
        self.settings_panel.save()
        self.store.sync()

    # -- messages ------------------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        self.banner_text.setText(text)
        self.banner.show()
        self.activity.setText(text.splitlines()[0][:160])

    def _set_activity(self, text: str) -> None:
        self.activity.setText(text)

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
            self.worker.detectRequested.emit(new)
            if self.current_key is None:
                self.album.setCurrentRow(0)
            self._set_activity(f"Added {len(new)} photo(s); finding faces…")
        self._update_actions()
        return len(new)

    def clear_album(self) -> None:
        if self.mode != "idle":
            self.show_error("Stop the current run before clearing the album.")
            return
        self.entries.clear()
        self._pixels.clear()
        self._previews.clear()
        self.album.clear_album()
        self.current_key = None
        self.preview.set_images(None, None)
        self.preview.set_faces([], [])
        self.report_panel.show_message("Protect a photo to see how well it worked.")
        self.stack.setCurrentIndex(0)
        self._update_actions()

    def paths_dropped(self, paths: list[Path]) -> None:
        self.add_paths(paths)

    def _refresh_entry(self, entry: PhotoEntry) -> None:
        self.album.update_entry(entry)
        if entry.key == self.current_key:
            self._show_current()

    # -- worker events -------------------------------------------------------------------------
    def _on_models_checked(self, states: dict) -> None:
        self.model_states = states
        self.settings_panel.set_model_states(states)
        missing = [n for n in self.roles.get("ensemble", []) if not states.get(n, (False, ""))[0]]
        if missing:
            self.show_error(f"Some models are not ready ({', '.join(missing)}): run 'facecloak models --build' once.")

    def _on_detecting(self, key: str) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.status == QUEUED:
            entry.status = DETECTING
            self.album.update_entry(entry)

    def _on_detected(self, key: str, payload: dict) -> None:
        entry = self.entries.get(key)
        if entry is None:
            return
        if "error" in payload:
            entry.status, entry.message = ERROR, payload["error"]
        else:
            entry.faces = list(payload["faces"])
            entry.enabled = [True] * len(entry.faces)
            entry.size = tuple(payload["size"])
            entry.thumbnail = payload["thumbnail"]
            self._cache(key, clean=payload["image"])
            if entry.status == DETECTING:
                entry.status = QUEUED if entry.faces else NO_FACE
            entry.message = f"{len(entry.faces)} face(s) found" if entry.faces else "no face found"
        self._refresh_entry(entry)
        self._update_actions()
        self.detectionFinished.emit(key)

    def _on_photo_started(self, key: str, faces: int) -> None:
        self._current_faces = max(1, faces)
        self._current_step = 0
        entry = self.entries.get(key)
        if entry is None:
            return
        if self.mode == "protect":
            entry.status, entry.progress, entry.message = PROTECTING, 0.0, ""
            self.album.update_entry(entry)
            self._set_activity(f"Protecting {entry.name} ({faces} face(s))…")
        else:
            self._set_activity(f"Previewing {entry.name}…")

    def _on_step(self, key: str, step: int, total: int, seconds: float) -> None:
        self._current_step = step
        per = seconds / self._current_faces
        # the first step includes one-off set-up; an average weighted to recent steps tracks the real speed
        self._sec_per_face_step = per if self._sec_per_face_step is None else 0.7 * self._sec_per_face_step + 0.3 * per
        entry = self.entries.get(key)
        if entry is not None and self.mode == "protect":
            entry.progress = step / max(1, total)
            self.album.update_entry(entry)
        self._run_steps = total
        self._update_progress()

    def _update_progress(self) -> None:
        if self.mode not in ("protect", "preview"):
            return
        total = self._run_steps or 1
        if self.mode == "preview":
            self.progress.setRange(0, total)
            self.progress.setValue(self._current_step)
            remaining = (total - self._current_step) * self._current_faces
        else:
            n = max(1, len(self._run_keys))
            done = len(self._done_keys)
            self.progress.setRange(0, n * total)
            self.progress.setValue(min(n * total, done * total + self._current_step))
            remaining = (total - self._current_step) * self._current_faces
            for key in self._run_keys:
                entry = self.entries.get(key)
                if key in self._done_keys or entry is None or entry.status == PROTECTING:
                    continue
                remaining += total * max(1, len(entry.enabled_faces()) if entry.faces is not None else 1)
        if self._sec_per_face_step is not None:
            paused = " (paused)" if self.control.paused else ""
            self.eta_label.setText(f"ETA {format_eta(remaining * self._sec_per_face_step)}{paused}")

    def _on_measuring(self, key: str) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            self._set_activity(f"Measuring the protection of {entry.name} on held-out models…")

    def _on_photo_finished(self, key: str, result) -> None:
        self._done_keys.add(key)
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
            else:
                # never lose a photo: keep the pixels so "Export protected" can write them elsewhere
                entry.status = ERROR
                entry.pinned_protected = result.protected
            self._cache(key, protected=result.protected)
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
        else:
            self._previews[key] = result
            self._set_activity(f"Preview ready ({PREVIEW_STEPS} steps, not saved). Protect to write the photo.")
        self._end_run()
        if key == self.current_key:
            self._show_current()
        self.previewFinished.emit(key)

    def _end_run(self) -> None:
        self.mode = "idle"
        self.control.reset()
        self.act_pause.setChecked(False)
        self.progress.hide()
        self.eta_label.clear()
        self._update_actions()

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

    def protect_all(self) -> bool:
        """Protect every queued photo (and retry failed ones); returns whether a run started."""
        if self.mode != "idle":
            return False
        settings = self._settings_or_error()
        if settings is None:
            return False
        todo = [
            e
            for e in self.entries.values()
            if e.status in (QUEUED, DETECTING) or (e.status == ERROR and e.faces and e.pinned_protected is None)
        ]
        if not todo:
            self._set_activity("Nothing to protect: add photos, or change a face selection to protect again.")
            return False
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
        self.mode = "protect"
        self._run_skipped = len(skipped)
        self._run_keys = [job.key for job in jobs]
        self._done_keys = set()
        self._current_step = 0
        self._run_steps = settings.steps or 0
        self.progress.setValue(0)
        self.progress.show()
        self.eta_label.setText("ETA: measuring speed…")
        self._update_actions()
        self.worker.protectRequested.emit(jobs, settings)
        return True

    def preview_look(self) -> bool:
        if self.mode != "idle":
            return False
        entry = self.current_entry()
        if entry is None or not entry.enabled_faces():
            self._set_activity("Select a photo with at least one face selected to preview the look.")
            return False
        settings = self._settings_or_error()
        if settings is None:
            return False
        self.control.reset()
        self.mode = "preview"
        self._current_step = 0
        self._run_steps = PREVIEW_STEPS
        self.progress.setValue(0)
        self.progress.show()
        self._update_actions()
        self.worker.previewRequested.emit(self._job(entry), settings)
        return True

    def toggle_pause(self) -> None:
        if self.mode not in ("protect", "preview"):
            self.act_pause.setChecked(False)
            return
        if self.control.paused:
            self.control.resume()
            self.act_pause.setChecked(False)
            self._set_activity("Resumed")
        else:
            self.control.pause()
            self.act_pause.setChecked(True)
            self._set_activity("Paused (the current step finishes first)")
        self._update_progress()

    def cancel(self) -> None:
        if self.mode in ("protect", "preview"):
            self.control.cancel()
            self._set_activity("Cancelling after the current step…")

    def _update_actions(self) -> None:
        idle = self.mode == "idle"
        running = self.mode in ("protect", "preview")
        has = bool(self.entries)
        self.act_protect.setEnabled(idle and has)
        self.act_look.setEnabled(idle and has)
        self.act_pause.setEnabled(running)
        self.act_cancel.setEnabled(running)
        self.act_export.setEnabled(
            idle and any(e.status == PROTECTED or e.pinned_protected is not None for e in self.entries.values())
        )
        self.act_clear.setEnabled(idle and has)
        self.settings_panel.setEnabled(idle)

    # -- selection, preview, faces ---------------------------------------------------------------
    def current_entry(self) -> PhotoEntry | None:
        return self.entries.get(self.current_key) if self.current_key else None

    def _on_album_selection(self, item, _previous=None) -> None:
        from .album import KEY_ROLE

        self.current_key = item.data(KEY_ROLE) if item is not None else None
        self._show_current()

    def _cache(self, key: str, **images: np.ndarray | None) -> None:
        slot = self._pixels.setdefault(key, {})
        slot.update({k: v for k, v in images.items() if v is not None})
        self._pixels.move_to_end(key)
        while len(self._pixels) > PIXEL_CACHE:
            self._pixels.popitem(last=False)

    def _images(self, entry: PhotoEntry) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Full-resolution original and protected pixels; evicted ones reload from disk (PIL, no torch)."""
        slot = self._pixels.get(entry.key, {})
        clean, protected = slot.get("clean"), slot.get("protected")
        if protected is None:
            protected = entry.pinned_protected
        try:
            if clean is None and entry.faces is not None:
                from facecloak.core.image import load_pil

                clean = np.asarray(load_pil(entry.path))
            if protected is None and entry.status == PROTECTED and entry.output and entry.output.exists():
                from facecloak.core.image import load_pil

                protected = np.asarray(load_pil(entry.output))
        except Exception as err:  # a photo that vanished from disk: say so, keep going
            self._set_activity(f"Cannot show {entry.name}: {err}")
        self._cache(entry.key, clean=clean, protected=protected)
        return clean, protected

    def _show_current(self) -> None:
        entry = self.current_entry()
        if entry is None:
            self.preview.placeholder = "Select a photo"
            self.preview.set_images(None, None)
            self.preview.set_faces([], [])
            self._rebuild_face_boxes(None)
            return
        clean, protected = self._images(entry)
        label = "Protected"
        if protected is None and entry.key in self._previews:
            protected, label = self._previews[entry.key], f"Preview ({PREVIEW_STEPS} steps)"
        if protected is not None and clean is not None and protected.shape != clean.shape:
            protected = None  # the file on disk is not this photo any more
        self.preview.placeholder = entry.message if entry.status == ERROR else "Finding faces…"
        self.preview.set_images(clean, protected, label)
        self.preview.set_faces(entry.faces or [], entry.enabled)
        self._rebuild_face_boxes(entry)
        if entry.report is not None:
            self.report_panel.show_report(entry.report, entry.report_images, entry.output)
        elif entry.report_error:
            self.report_panel.show_message(entry.report_error)
        elif entry.status == PROTECTED:
            self.report_panel.show_message("No report for this photo (measuring was off).")
        else:
            self.report_panel.show_message(f"{entry.name}: {entry.status}. Protect it to see how well it worked.")

    def _rebuild_face_boxes(self, entry: PhotoEntry | None) -> None:
        for box in self.face_boxes:
            self.faces_row.removeWidget(box)
            box.deleteLater()
        self.face_boxes = []
        if entry is None or entry.faces is None:
            self.faces_label.setText("")
            return
        self.faces_label.setText("Faces:" if entry.faces else "No face found in this photo.")
        for i, on in enumerate(entry.enabled):
            box = QCheckBox(f"Face {i + 1}")
            box.setChecked(on)
            box.setToolTip("Protect this face (click the face in the preview to toggle too)")
            box.toggled.connect(lambda checked, i=i: self._on_face_toggled(i, checked))
            self.faces_row.insertWidget(1 + i, box)
            self.face_boxes.append(box)

    def _on_face_toggled(self, index: int, on: bool) -> None:
        entry = self.current_entry()
        if entry is None or index >= len(entry.enabled):
            return
        if self.mode != "idle" and entry.key in self._run_keys:
            self.preview.set_faces(entry.faces or [], entry.enabled)  # undo the click: this photo is running
            self._set_activity("Faces can be changed once this photo's run is over.")
            return
        if entry.enabled[index] == on:
            return
        entry.enabled[index] = on
        if entry.status in (PROTECTED, ERROR, NO_FACE) and entry.faces:
            entry.status = QUEUED
            entry.message = "face selection changed: protect again"
            # what was shown no longer matches the selection; the earlier file stays until it is replaced
            entry.report, entry.report_images, entry.report_error = None, {}, ""
            self._pixels.get(entry.key, {}).pop("protected", None)
            entry.pinned_protected = None
        self._previews.pop(entry.key, None)
        self.album.update_entry(entry)
        self._update_actions()
        self._show_current()

    def set_view_mode(self, mode: str) -> None:
        self.preview.set_mode(mode)
        self.view_actions[mode].setChecked(True)

    # -- export --------------------------------------------------------------------------------
    def ask_export(self) -> None:
        settings = self.settings_panel.current()
        start = settings.output_dir or str(self.store.value("paths/last_export", str(Path.home())))
        folder = QFileDialog.getExistingDirectory(self, "Export protected photos to", start)
        if folder:
            self.store.setValue("paths/last_export", folder)
            self.export_album(Path(folder))

    def export_album(self, folder: Path) -> bool:
        if self.mode != "idle":
            return False
        settings = self.settings_panel.current()
        items = [
            ExportItem(
                e.key,
                e.path,
                PROTECTED if (e.status == PROTECTED or e.pinned_protected is not None) else e.status,
                "" if e.status == PROTECTED else e.message,
                e.output,
                e.pinned_protected if e.pinned_protected is not None else self._pixels.get(e.key, {}).get("protected"),
            )
            for e in self.entries.values()
        ]
        self.mode = "export"
        self._update_actions()
        self._set_activity(f"Exporting to {folder}…")
        self.worker.exportRequested.emit(items, Path(folder), settings)
        return True

    def _on_export_finished(self, summary: dict) -> None:
        self.last_export_summary = summary
        self.mode = "idle"
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

        rows = []
        for name, spec in self.manifest.items():
            role = (
                "attack ensemble"
                if name in self.roles.get("ensemble", [])
                else "held-out evaluator"
                if name in self.roles.get("evaluators", [])
                else "tuning judge (benchmarks only)"
                if name in self.roles.get("tuning", [])
                else "available"
            )
            rows.append(
                f"<tr><td>{spec.display_name}</td><td>{role}</td><td>{spec.model_licence}</td>"
                f"<td>{spec.package_licence}</td><td>{spec.training_data}</td></tr>"
            )
        return (
            f"<h3>FaceCloak {__version__}</h3>"
            "<p>Protects photos from face recognition on your own machine and measures the result on "
            "held-out recognisers. Nothing leaves this computer.</p>"
            "<table cellspacing=6><tr><th align=left>Model</th><th align=left>Role</th>"
            "<th align=left>Model licence</th><th align=left>Package licence</th><th align=left>Training data</th></tr>"
            + "".join(rows)
            + "</table>"
            f"<p><small>{limitations_text()}</small></p>"
        )

    def show_about(self) -> None:
        box = QDialog(self)
        box.setObjectName("aboutBox")
        box.setWindowTitle("About FaceCloak")
        layout = QVBoxLayout(box)
        text = QTextBrowser()
        text.setOpenExternalLinks(False)
        text.setHtml(self.about_text())
        layout.addWidget(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(box.close)
        layout.addWidget(buttons)
        box.resize(900, 600)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.about_box = box

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
        if self.mode == "protect":
            parts.append("Photos are being protected: quitting cancels the run (photos already finished are saved).")
        elif self.mode == "export":
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
        label = "Cancel the run and quit" if self.mode in ("protect", "export") else "Discard and quit"
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
