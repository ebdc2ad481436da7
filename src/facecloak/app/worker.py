"""The worker: every call into torch (model loading, detection, the cloak, the report) runs here, off the GUI thread.

``Worker`` is a QObject moved to a QThread. The window asks for work through queued signals (so requests run
one after another in the worker's thread) and hears back through signals carrying plain Python objects.
Pause and Cancel do not go through the event loop (it is busy running the request): they set a
thread-safe :class:`RunControl` that the cloak polls once per optimisation step and the report before each
degradation and forward pass, so a run stops within about a second at any stage.

Every photo goes through the same pipeline as ``facecloak protect``: :meth:`Protector.protect_file
<facecloak.core.protect.Protector.protect_file>`, then :func:`~facecloak.core.protect.measure` for the report. The
worker keeps one :class:`~facecloak.core.protect.Protector` (models, face detector, album memory) for as long as the
app runs, and builds a new one only when the ensemble or the device changes, so warm starts carry across runs.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from .model import PREVIEW_STEPS, PROTECTED, RunSettings
from .output import copy_atomic, export_options

if TYPE_CHECKING:
    from facecloak.core.attack import CloakConfig
    from facecloak.core.protect import PhotoOutcome, Protector

THUMB_SIDE = 160
NOT_SAVED = "not saved"  # protected, but the file could not be written (the pixels stay in memory)


class RunControl:
    """Pause / resume / cancel shared between the GUI thread and the worker."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._cancelled = False
        self._closing = False

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._paused = False
            self._cond.notify_all()

    def close(self) -> None:
        """The app is quitting: cancel what runs and every request still queued (``reset`` does not undo this)."""
        with self._cond:
            self._closing = True
        self.cancel()

    def reset(self) -> None:
        with self._cond:
            self._cancelled = self._closing
            self._paused = False

    @property
    def paused(self) -> bool:
        with self._cond:
            return self._paused

    @property
    def cancelled(self) -> bool:
        with self._cond:
            return self._cancelled

    @property
    def closing(self) -> bool:
        with self._cond:
            return self._closing

    def should_cancel(self) -> bool:
        """Called by the cloak once per step: blocks while paused, True once cancelled."""
        with self._cond:
            while self._paused and not self._cancelled:
                self._cond.wait(0.5)
            return self._cancelled


@dataclass
class PhotoJob:
    """One photo to protect: faces already detected (or None to detect now) and which of them to protect."""

    key: str
    path: Path
    faces: list[Any] | None = None
    enabled: list[bool] | None = None
    overwrite: bool = False  # replace the file at the output's name (our earlier copy, or the user said so)
    keep_both: bool = False  # the output's name is taken: write under a numbered name beside it

    def chosen(self) -> list[Any] | None:
        """The detected faces to protect; None when no face was detected (yet): the pipeline looks for them."""
        if not self.faces:
            return None
        enabled = self.enabled if self.enabled is not None else [True] * len(self.faces)
        return [face for face, on in zip(self.faces, enabled, strict=False) if on]


@dataclass
class PhotoResult:
    """A finished photo as the window reads it: the pipeline's outcome, its pixels and the report's pictures.

    One word differs from the outcome's: a photo whose attack ran but whose copy could not be written is
    "protected" and not ``saved`` (its pixels stay in memory for *Export protected*); it counts as not saved.
    """

    outcome: PhotoOutcome
    protected: np.ndarray | None = None  # H,W,3 uint8, whenever the attack ran
    report_images: dict[str, np.ndarray] = field(default_factory=dict)
    report_error: str = ""

    @property
    def saved(self) -> bool:
        return self.outcome.status == PROTECTED

    @property
    def status(self) -> str:
        return PROTECTED if self.protected is not None else self.outcome.status

    @property
    def output(self) -> Path | None:
        return self.outcome.output if self.saved else None

    @property
    def message(self) -> str:
        if self.protected is not None and not self.saved:
            return f"protected, but not saved: {self.outcome.message}"
        return self.outcome.message

    @property
    def seconds(self) -> float:
        return self.outcome.seconds

    @property
    def face_dssim(self) -> tuple[float, ...]:
        return self.outcome.face_dssim

    @property
    def report(self) -> Any:
        return self.outcome.report

    @property
    def count_as(self) -> str:
        """How the run's summary counts this photo: a protected photo that could not be written is not protected."""
        return NOT_SAVED if self.status == PROTECTED and not self.saved else self.status


@dataclass
class ExportItem:
    key: str
    path: Path
    status: str
    message: str = ""
    output: Path | None = None
    protected: np.ndarray | None = None


def already_protected_message(path: Path) -> str:
    from facecloak.core.image import display_name

    return f"{display_name(path)} is already a protected copy made by FaceCloak: protect the original photo instead"


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


def cloak_config(settings: RunSettings) -> CloakConfig:
    """The attack's configuration for these settings (built by the one builder the command line uses too)."""
    from facecloak.core.protect import build_config

    robustness = {"blur": settings.blur, "jpeg": settings.jpeg, "resize": settings.resize}
    return build_config(settings.preset, settings.steps, settings.dssim_budget, robustness, device=settings.device)


class Worker(QObject):
    """Runs detection, protection, previews and exports; one request at a time, in its own thread."""

    # requests (connected with queued connections to the slots below)
    detectRequested = Signal(object)  # list[(key, path)]
    protectRequested = Signal(object, object)  # list[PhotoJob], RunSettings
    previewRequested = Signal(object, object)  # PhotoJob, RunSettings
    exportRequested = Signal(object, object, object)  # list[ExportItem], Path, RunSettings
    checkModelsRequested = Signal()

    # results
    modelsChecked = Signal(object)  # {name: (ready, message)}
    detecting = Signal(str)
    detected = Signal(str, object)  # key, {"faces", "size", "thumbnail", "image"} or {"error"}
    status = Signal(str)  # one-line activity for the status bar
    photoStarted = Signal(str, int)  # key, faces to protect
    stepProgress = Signal(str, int, int, float)  # key, step, total, seconds of this step
    measuring = Signal(str)
    photoFinished = Signal(str, object)  # key, PhotoResult
    runFinished = Signal(object)  # {"cancelled": bool, "counts": {...}}
    previewFinished = Signal(str, object)  # key, H,W,3 uint8 or {"error"}
    exportFinished = Signal(object)  # {"exported": [...], "skipped": [(name, why)], "failed": [(name, why)]}
    failed = Signal(str)  # a request failed as a whole (message for the user)

    def __init__(self, control: RunControl) -> None:
        super().__init__()
        self.control = control
        self._detector = None
        # engine objects built on demand and kept while their settings stay the same
        self._engines: dict[str, tuple[tuple, object]] = {}
        self.detectRequested.connect(self.detect)
        self.protectRequested.connect(self.protect)
        self.previewRequested.connect(self.preview)
        self.exportRequested.connect(self.export)
        self.checkModelsRequested.connect(self.check_models)

    # -- loading -------------------------------------------------------------------------------
    def _get_detector(self):
        """The one face detector: it finds faces as photos are added, and the protector finds them with it too."""
        if self._detector is None:
            from facecloak.core.detect import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    def _cached(self, kind: str, key: tuple, message: str, build):
        held = self._engines.get(kind)
        if held is None or held[0] != key:
            self.status.emit(message)
            self._engines.pop(kind, None)  # release the old models before loading new ones
            self._engines[kind] = (key, build())
        return self._engines[kind][1]

    def _get_protector(self, settings: RunSettings) -> Protector:
        """The app's protector, set to these settings' attack; its models load again only for another ensemble or
        device, and its album memory lives as long as it does."""
        from facecloak.core.protect import Protector

        config = cloak_config(settings)
        protector = self._cached(
            "protector",
            (tuple(settings.ensemble), settings.device),
            "Loading face-recognition models…",
            lambda: Protector(config, list(settings.ensemble) or None, settings.device, self._get_detector()),
        )
        protector.configure(config)
        return protector

    def _get_evaluator(self, settings: RunSettings):
        from facecloak.core.report import ProtectionEvaluator

        def build():
            return ProtectionEvaluator(list(settings.evaluators) or None, device=settings.device)

        return self._cached(
            "evaluator",
            (tuple(settings.evaluators), settings.device),
            "Loading the held-out models for the report…",
            build,
        )

    # -- requests ------------------------------------------------------------------------------
    @Slot()
    def check_models(self) -> None:
        try:
            from facecloak.core.zoo.manifest import load_manifest
            from facecloak.core.zoo.registry import cache_status

            states = {}
            for name, spec in load_manifest().items():
                status = cache_status(spec)
                states[name] = (status.ready, status.message)
            self.modelsChecked.emit(states)
        except Exception as err:
            self.failed.emit(f"Could not read the model cache: {_short(err)}")

    @Slot(object)
    def detect(self, items: list[tuple[str, Path]]) -> None:
        from PIL import Image

        from facecloak.core.export import is_facecloak_output
        from facecloak.core.image import ImageLoadError, load_pil, pil_to_tensor

        for key, path in items:
            if self.control.closing:
                return
            self.detecting.emit(key)
            if is_facecloak_output(path):
                self.detected.emit(key, {"error": already_protected_message(path)})
                continue
            try:
                image = load_pil(path)
                thumb = image.copy()
                thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
                faces = self._get_detector().detect(pil_to_tensor(image))
                self.detected.emit(
                    key,
                    {"faces": faces, "size": image.size, "thumbnail": np.asarray(thumb), "image": np.asarray(image)},
                )
            except ImageLoadError as err:
                self.detected.emit(key, {"error": str(err)})
            except Exception as err:
                self.detected.emit(key, {"error": f"{Path(path).name}: {_short(err)}"})

    @Slot(object, object)
    def protect(self, jobs: list[PhotoJob], settings: RunSettings) -> None:
        from facecloak.core.attack import CloakCancelled
        from facecloak.core.protect import PhotoOutcome, Status

        counts: dict[str, int] = {}
        cancelled = False
        if self.control.cancelled:  # cancelled (or the window closed) before the run reached this thread
            self.runFinished.emit({"cancelled": True, "counts": counts})
            return
        try:
            protector = self._get_protector(settings)
        except Exception as err:
            self.failed.emit(f"Cannot start protecting: {_short(err)}")
            self.runFinished.emit({"cancelled": False, "counts": counts, "error": _short(err)})
            return
        for job in jobs:
            if self.control.should_cancel():
                cancelled = True
                break
            try:
                result = self._protect_one(job, settings, protector)
            except CloakCancelled:
                cancelled = True
                break
            except Exception as err:  # one bad photo must not stop the album
                traceback.print_exc()
                result = PhotoResult(PhotoOutcome(job.path, Status.ERROR, message=f"{job.path.name}: {_short(err)}"))
            counts[result.count_as] = counts.get(result.count_as, 0) + 1
            self.photoFinished.emit(job.key, result)
        self.runFinished.emit({"cancelled": cancelled, "counts": counts})

    def _protect_one(self, job: PhotoJob, settings: RunSettings, protector: Protector) -> PhotoResult:
        """The pipeline for one photo: its copy written as soon as it is done (a failed write keeps the pixels,
        so the user can export them elsewhere), then its report."""
        from facecloak.core.export import export_target
        from facecloak.core.image import tensor_to_uint8

        options = export_options(settings, overwrite=job.overwrite or None)
        target = export_target(job.path, settings.output_folder(job.path), options)
        signals = _AttackSignals(self, job.key)
        outcome = protector.protect_file(
            job.path,
            target,
            options,
            faces=job.chosen(),
            progress=signals.step,
            should_cancel=self.control.should_cancel,
            started=signals.started,
            numbered=job.keep_both,
        )
        if outcome.protected is None:
            return PhotoResult(outcome)
        result = PhotoResult(outcome, tensor_to_uint8(outcome.protected))
        if settings.measure:
            self._measure(job.key, result, protector, settings)
        outcome.clean = outcome.protected = None  # the window keeps the 8-bit pixels only
        return result

    def _measure(self, key: str, result: PhotoResult, protector: Protector, settings: RunSettings) -> None:
        """The report of a protected photo, measured on the copy as written when it was saved (what an uploader
        gets), else on its pixels in memory; its error when it cannot be measured; stops when the run is
        cancelled."""
        from facecloak.core.attack import CloakCancelled
        from facecloak.core.protect import measure

        try:
            if self.control.should_cancel():
                raise CloakCancelled("the report was cancelled")
            evaluator = self._get_evaluator(settings)  # says so while it loads the held-out models
            self.measuring.emit(key)
            report = measure(
                evaluator,
                result.outcome,
                protector.ensemble_names,
                on_written=result.saved,
                should_cancel=self.control.should_cancel,
            )
            from facecloak.core.report import render_heatmap, render_similarity_bars

            result.outcome.report = report
            result.report_images = {
                "heatmap": np.asarray(render_heatmap(report).convert("RGB")),
                "bars": np.asarray(render_similarity_bars(report).convert("RGB")),
            }
            if settings.save_report and result.saved:
                from .report_image import save_report_files

                save_report_files(report, result.report_images, result.outcome.output)
        except CloakCancelled:
            result.report_error = "not measured: the run was cancelled during the report"
        except Exception as err:
            result.report_error = f"report unavailable: {_short(err)}"

    @Slot(object, object)
    def preview(self, job: PhotoJob, settings: RunSettings) -> None:
        """A fast low-step look at the change (not written anywhere, and not remembered by the album memory)."""
        from facecloak.core.attack import CloakCancelled
        from facecloak.core.image import load_image, tensor_to_uint8

        try:
            protector = self._get_protector(settings)
            config = cloak_config(settings)
            config = replace(config, steps=min(PREVIEW_STEPS, config.steps))
            photo = load_image(job.path)
            faces = job.chosen()
            if faces is None:
                faces = protector.detector.detect(photo)
            if not faces:
                self.previewFinished.emit(job.key, {"error": "no face to preview"})
                return
            signals = _AttackSignals(self, job.key)
            signals.started(len(faces))
            result = protector.protect_tensor(photo, faces, signals.step, self.control.should_cancel, config=config)
            self.previewFinished.emit(job.key, tensor_to_uint8(result.photo.cpu()))
        except CloakCancelled:
            self.previewFinished.emit(job.key, {"error": "preview cancelled"})
        except Exception as err:
            self.previewFinished.emit(job.key, {"error": f"preview failed: {_short(err)}"})

    @Slot(object, object, object)
    def export(self, items: list[ExportItem], folder: Path, settings: RunSettings) -> None:
        """Write every protected photo of the album into ``folder``; never over an original."""
        summary: dict[str, list] = {"exported": [], "skipped": [], "failed": []}
        for item in items:
            if self.control.closing:
                break
            name = item.path.name
            if item.status != PROTECTED or (item.protected is None and item.output is None):
                why = item.message or ("not protected yet" if item.status in ("queued", "detecting") else item.status)
                summary["skipped"].append((name, why))
                continue
            try:
                kind, detail = _export_one(item, folder, settings)
            except FileExistsError as err:
                kind, detail = "skipped", _short(err)
            except Exception as err:
                kind, detail = "failed", _short(err)
            summary[kind].append((name, detail))
        self.exportFinished.emit(summary)


class _AttackSignals:
    """One photo's attack as signals: ``photoStarted`` as it starts, then ``stepProgress`` with each step's seconds
    (they feed the window's ETA)."""

    def __init__(self, worker: Worker, key: str) -> None:
        self.worker, self.key = worker, key
        self.last = time.perf_counter()

    def started(self, faces: int) -> None:
        self.worker.photoStarted.emit(self.key, faces)
        self.last = time.perf_counter()

    def step(self, step: int, total: int, _loss: float) -> None:
        now = time.perf_counter()
        self.worker.stepProgress.emit(self.key, step, total, now - self.last)
        self.last = now


def _export_one(item: ExportItem, folder: Path, settings: RunSettings) -> tuple[str, str]:
    """Export one protected photo into ``folder``: ``("exported", where)`` or ``("failed", why)``."""
    from facecloak.core.export import export_target, same_file, write_protected
    from facecloak.core.image import open_photo, uint8_to_tensor

    options = export_options(settings)
    target = export_target(item.path, folder, options)
    if same_file(item.path, target):
        return "failed", "would replace the original; choose another folder"
    if item.output is not None and target.exists() and same_file(item.output, target):
        return "exported", str(target)  # already written there during the run
    if item.protected is not None:
        return "exported", str(write_protected(open_photo(item.path), uint8_to_tensor(item.protected), target, options))
    if item.output is not None and item.output.exists():
        copy_atomic(item.output, target, overwrite=settings.overwrite)
        return "exported", str(target)
    return "failed", "the protected copy is no longer available; protect it again"
