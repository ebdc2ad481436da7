"""The worker: every call into torch (model loading, detection, the cloak, the report) runs here, off the GUI thread.

``Worker`` is a QObject moved to a QThread. The window asks for work through queued signals (so requests run
one after another in the worker's thread) and hears back through signals carrying plain Python objects.
Pause and Cancel do not go through the event loop (it is busy running the request): they set a
thread-safe :class:`RunControl` that the cloak polls once per optimisation step and the report once per forward
pass of a held-out model (:class:`CancellableModel`), so a run stops within about a second at any stage.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from .model import PREVIEW_STEPS, RunSettings
from .output import copy_atomic, save_protected, save_protected_new_name, target_path

THUMB_SIDE = 160
REPORT_CHUNK = 8  # crops per forward pass of a held-out model in the report: about 0.5 s each on one CPU core
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


class ReportCancelled(RuntimeError):
    """The run was cancelled while the report was being measured."""


class CancellableModel:
    """A held-out model of the report that checks the run's cancel flag before each forward pass.

    The evaluator runs one batched pass per model and face (25 degraded crops: over a second on one CPU core for
    the larger models); passes of at most :data:`REPORT_CHUNK` crops keep the report's reaction to Cancel, Pause
    and closing the window well under a second. Every other attribute is the model's own.
    """

    def __init__(self, model: Any, should_cancel: Callable[[], bool]) -> None:
        self._model = model
        self._should_cancel = should_cancel

    def __call__(self, crops: Any) -> Any:
        import torch

        parts = []
        for part in crops.split(REPORT_CHUNK):
            if self._should_cancel():
                raise ReportCancelled("the report was cancelled")
            parts.append(self._model(part))
        return torch.cat(parts)

    def __getattr__(self, name: str) -> Any:
        if name in ("_model", "_should_cancel"):  # not set yet (copying): never recurse
            raise AttributeError(name)
        return getattr(self._model, name)


@dataclass
class PhotoJob:
    """One photo to protect: faces already detected (or None to detect now) and which of them to protect."""

    key: str
    path: Path
    faces: list[Any] | None = None
    enabled: list[bool] | None = None
    overwrite: bool = False  # replace the file at the output's name (our earlier copy, or the user said so)
    keep_both: bool = False  # the output's name is taken: write under a numbered name beside it


@dataclass
class PhotoResult:
    key: str
    status: str  # "protected", "no face", "error"
    protected: np.ndarray | None = None  # H,W,3 uint8
    output: Path | None = None
    message: str = ""
    faces: list[Any] = field(default_factory=list)
    face_dssim: tuple[float, ...] = ()
    seconds: float = 0.0
    report: Any = None
    report_images: dict[str, np.ndarray] = field(default_factory=dict)
    report_error: str = ""
    saved: bool = False

    @property
    def count_as(self) -> str:
        """How the run's summary counts this photo: a protected photo that could not be written is not protected."""
        return NOT_SAVED if self.status == "protected" and not self.saved else self.status


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
        if self._detector is None:
            from facecloak.core.detect import DetectorConfig, FaceDetector

            self._detector = FaceDetector(DetectorConfig(device="cpu"))
        return self._detector

    def _cached(self, kind: str, key: tuple, message: str, build):
        held = self._engines.get(kind)
        if held is None or held[0] != key:
            self.status.emit(message)
            self._engines.pop(kind, None)  # release the old models before loading new ones
            self._engines[kind] = (key, build())
        return self._engines[kind][1]

    def _start_photo(self, key: str, faces: int):
        """Announce a photo and return the cloak's progress callback (seconds per step feed the ETA)."""
        self.photoStarted.emit(key, faces)
        last = [time.perf_counter()]

        def progress(step: int, total: int, _loss: float) -> None:
            now = time.perf_counter()
            self.stepProgress.emit(key, step, total, now - last[0])
            last[0] = now

        return progress

    def _get_protector(self, settings: RunSettings):
        from facecloak.core.attack import preset
        from facecloak.core.protect import Protector

        return self._cached(
            "protector",
            (tuple(settings.ensemble), settings.device),
            "Loading face-recognition models…",
            lambda: Protector(preset("low"), ensemble=list(settings.ensemble) or None, device=settings.device),
        )

    def _get_evaluator(self, settings: RunSettings):
        from facecloak.core.report import ProtectionEvaluator

        def build():
            evaluator = ProtectionEvaluator(list(settings.evaluators) or None, device=settings.device)
            evaluator.models = [CancellableModel(m, self.control.should_cancel) for m in evaluator.models]
            return evaluator

        return self._cached(
            "evaluator",
            (tuple(settings.evaluators), settings.device),
            "Loading the held-out models for the report…",
            build,
        )

    @staticmethod
    def _make_cloak(protector, config):
        """The attack for this run, sharing the protector's loaded models."""
        from facecloak.core.attack import Cloak

        return Cloak(protector.models, config, lpips=protector.cloak.lpips)

    @staticmethod
    def cloak_config(settings: RunSettings, steps: int | None = None):
        from facecloak.core.attack import preset
        from facecloak.core.transforms import RobustnessConfig

        overrides: dict[str, Any] = {
            "robustness": RobustnessConfig(blur=settings.blur, jpeg=settings.jpeg, resize=settings.resize)
        }
        if settings.steps is not None:
            overrides["steps"] = settings.steps
        if settings.dssim_budget is not None:
            overrides["dssim_budget"] = settings.dssim_budget
        config = preset(settings.preset, **overrides)
        if steps is not None:
            config = replace(config, steps=min(steps, config.steps))
        return config

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

    def _load(self, job: PhotoJob):
        from facecloak.core.image import load_image

        photo = load_image(job.path)
        faces = job.faces
        if faces is None:
            faces = self._get_detector().detect(photo)
        enabled = job.enabled if job.enabled is not None else [True] * len(faces)
        chosen = [f for f, on in zip(faces, enabled, strict=False) if on]
        return photo, faces, chosen

    @Slot(object, object)
    def protect(self, jobs: list[PhotoJob], settings: RunSettings) -> None:
        counts: dict[str, int] = {}
        cancelled = False
        if self.control.cancelled:  # cancelled (or the window closed) before the run reached this thread
            self.runFinished.emit({"cancelled": True, "counts": counts})
            return
        try:
            protector = self._get_protector(settings)
            from facecloak.core.attack import CloakCancelled

            config = self.cloak_config(settings)
            cloak = self._make_cloak(protector, config)
        except Exception as err:
            self.failed.emit(f"Cannot start protecting: {_short(err)}")
            self.runFinished.emit({"cancelled": False, "counts": counts, "error": _short(err)})
            return
        for job in jobs:
            if self.control.should_cancel():
                cancelled = True
                break
            try:
                result = self._protect_one(job, settings, protector, cloak, config.steps)
            except CloakCancelled:
                cancelled = True
                break
            except Exception as err:  # one bad photo must not stop the album
                traceback.print_exc()
                result = PhotoResult(job.key, "error", message=f"{job.path.name}: {_short(err)}")
            counts[result.count_as] = counts.get(result.count_as, 0) + 1
            self.photoFinished.emit(job.key, result)
        self.runFinished.emit({"cancelled": cancelled, "counts": counts})

    def _protect_one(self, job: PhotoJob, settings: RunSettings, protector, cloak, steps: int) -> PhotoResult:
        from facecloak.core.image import ImageLoadError, tensor_to_uint8

        start = time.perf_counter()
        try:
            photo, _faces, chosen = self._load(job)
        except ImageLoadError as err:
            return PhotoResult(job.key, "error", message=str(err))
        if not chosen:
            return PhotoResult(job.key, "no face", message="no face found" if not _faces else "no face selected")
        progress = self._start_photo(job.key, len(chosen))
        result = cloak(photo.to(protector.device), chosen, progress, self.control.should_cancel)
        protected = result.photo.cpu()
        pixels = tensor_to_uint8(protected)
        out = PhotoResult(
            job.key,
            "protected",
            pixels,
            faces=chosen,
            face_dssim=tuple(result.face_dssim),
        )
        # Written as soon as it is done; a failed write keeps the pixels so the user can export them elsewhere.
        try:
            out.output = self._save(job, protected, settings)
            out.saved = True
        except Exception as err:
            out.message = f"protected, but not saved: {_short(err)}"
        if settings.measure:
            self._measure(out, photo, protected, list(protector.ensemble_names), settings)
        out.seconds = time.perf_counter() - start
        return out

    @staticmethod
    def _save(job: PhotoJob, protected, settings: RunSettings) -> Path:
        folder = settings.output_folder(job.path)
        if job.keep_both:
            return save_protected_new_name(job.path, protected, folder, settings)
        return save_protected(job.path, protected, folder, settings, overwrite=job.overwrite or None)

    def _measure(self, out: PhotoResult, photo, protected, ensemble: list[str], settings: RunSettings) -> None:
        """The protection report of ``out`` (its error, when it cannot be measured); stops when the run is cancelled."""
        try:
            if self.control.should_cancel():
                raise ReportCancelled("the report was cancelled")
            evaluator = self._get_evaluator(settings)  # says so while it loads the held-out models
            self.measuring.emit(out.key)
            report = evaluator.report(photo, protected, out.faces, ensemble)
            from facecloak.core.report import render_heatmap, render_similarity_bars

            out.report = report
            out.report_images = {
                "heatmap": np.asarray(render_heatmap(report).convert("RGB")),
                "bars": np.asarray(render_similarity_bars(report).convert("RGB")),
            }
            if settings.save_report and out.output is not None:
                from .report_image import save_report_files

                save_report_files(report, out.report_images, out.output)
        except ReportCancelled:
            out.report_error = "not measured: the run was cancelled during the report"
        except ImportError:
            out.report_error = "report unavailable (this version has no protection report module)"
        except Exception as err:
            out.report_error = f"report unavailable: {_short(err)}"

    @Slot(object, object)
    def preview(self, job: PhotoJob, settings: RunSettings) -> None:
        """A fast low-step look at the change (not written anywhere)."""
        from facecloak.core.attack import CloakCancelled
        from facecloak.core.image import tensor_to_uint8

        try:
            protector = self._get_protector(settings)
            config = self.cloak_config(settings, steps=PREVIEW_STEPS)
            photo, _faces, chosen = self._load(job)
            if not chosen:
                self.previewFinished.emit(job.key, {"error": "no face to preview"})
                return
            progress = self._start_photo(job.key, len(chosen))
            result = self._make_cloak(protector, config)(
                photo.to(protector.device), chosen, progress, self.control.should_cancel
            )
            self.previewFinished.emit(job.key, tensor_to_uint8(result.photo.cpu()))
        except CloakCancelled:
            self.previewFinished.emit(job.key, {"error": "preview cancelled"})
        except Exception as err:
            self.previewFinished.emit(job.key, {"error": f"preview failed: {_short(err)}"})

    @Slot(object, object, object)
    def export(self, items: list[ExportItem], folder: Path, settings: RunSettings) -> None:
        """Write every protected photo of the album into ``folder``; never over an original."""
        from facecloak.core.image import uint8_to_tensor

        summary: dict[str, list] = {"exported": [], "skipped": [], "failed": []}
        for item in items:
            if self.control.closing:
                break
            name = item.path.name
            if item.status != "protected" or (item.protected is None and item.output is None):
                why = item.message or ("not protected yet" if item.status in ("queued", "detecting") else item.status)
                summary["skipped"].append((name, why))
                continue
            try:
                target = target_path(item.path, folder, settings)
                if target.resolve() == item.path.resolve():
                    summary["failed"].append((name, "would replace the original; choose another folder"))
                elif item.output is not None and target.resolve() == item.output.resolve() and target.exists():
                    summary["exported"].append((name, str(target)))  # already written there during the run
                elif item.protected is not None:
                    written = save_protected(item.path, uint8_to_tensor(item.protected), folder, settings)
                    summary["exported"].append((name, str(written)))
                elif item.output is not None and item.output.exists():
                    copy_atomic(item.output, target, overwrite=settings.overwrite)
                    summary["exported"].append((name, str(target)))
                else:
                    summary["failed"].append((name, "the protected copy is no longer available; protect it again"))
            except FileExistsError as err:
                summary["skipped"].append((name, _short(err)))
            except Exception as err:
                summary["failed"].append((name, _short(err)))
        self.exportFinished.emit(summary)
