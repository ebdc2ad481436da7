"""Protect photo files: load, detect, cloak, write a protected copy atomically. Originals are never touched."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .attack import Cloak, CloakConfig, CloakResult
from .detect import DetectorConfig, Face, FaceDetector
from .device import select_device
from .export import ExportError, ExportOptions, export_protected, export_target
from .image import (
    PHOTO_SUFFIXES,
    ImageLoadError,
    SourcePhoto,
    display_name,
    display_path,
    open_photo,
    pil_to_tensor,
)
from .zoo.manifest import load_manifest, load_roles
from .zoo.registry import load_model


def default_ensemble() -> list[str]:
    return list(load_roles()["ensemble"])


def default_evaluators() -> list[str]:
    return list(load_roles()["evaluators"])


def check_disjoint(ensemble: Sequence[str], evaluators: Sequence[str]) -> None:
    """Refuse a report computed on the attack's own models or their families (it would overstate protection)."""
    manifest = load_manifest()
    shared = {manifest[n].family for n in ensemble} & {manifest[n].family for n in evaluators}
    if shared:
        raise ValueError(f"ensemble and evaluators share model families {sorted(shared)}: the report would lie")


@dataclass(frozen=True)
class FoundPhoto:
    """A photo file and the given folder it was found under (None when it was given as a file itself)."""

    path: Path
    root: Path | None = None


def find_photos(
    paths: Iterable[Path],
    on_error: Callable[[Path, str], None] | None = None,
    exclude: Path | None = None,
) -> list[FoundPhoto]:
    """Photo files among ``paths`` (folders searched recursively, symlink loops ignored), sorted, unique.

    Each knows the given folder it came from, so the output can mirror the album's subfolders. A photo found
    under two given folders belongs to the first. ``on_error(folder, message)`` hears about folders that
    cannot be listed; photos under ``exclude`` (the output folder, when it lies inside an album) are left out.
    """
    found: dict[Path, Path | None] = {}
    skip = os.path.realpath(exclude) if exclude is not None else None

    def walk_error(err: OSError) -> None:
        if on_error is not None:
            where = Path(err.filename) if err.filename else Path("?")
            on_error(where, f"{display_path(where)}: cannot list folder ({err.strerror or err})")

    for path in paths:
        path = Path(path)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False, onerror=walk_error):
                if skip is not None:
                    dirs[:] = [d for d in dirs if os.path.realpath(Path(root) / d) != skip]
                    if os.path.realpath(root) == skip:
                        continue
                for name in sorted(files):
                    if Path(name).suffix.lower() in PHOTO_SUFFIXES:
                        found.setdefault(Path(root) / name, path)
        else:
            found.setdefault(path, None)
    return [FoundPhoto(p, found[p]) for p in sorted(found)]


def iter_photos(
    paths: Iterable[Path],
    on_error: Callable[[Path, str], None] | None = None,
    exclude: Path | None = None,
) -> list[Path]:
    """The paths of :func:`find_photos`: photo files among ``paths``, sorted, unique."""
    return [photo.path for photo in find_photos(paths, on_error, exclude)]


@dataclass(frozen=True)
class PhotoOutcome:
    source: Path
    status: str  # "protected", "no face", "skipped", "error"
    output: Path | None = None
    faces: int = 0
    seconds: float = 0.0
    message: str = ""
    face_dssim: tuple[float, ...] = ()


class Protector:
    """Loads the detector and the ensemble once, then protects photos one after another."""

    def __init__(
        self,
        config: CloakConfig,
        ensemble: Sequence[str] | None = None,
        device: str = "auto",
        detector: DetectorConfig | None = None,
    ) -> None:
        self.device = select_device(device)
        self.config = config
        self.ensemble_names = list(ensemble or default_ensemble())
        self.models = [load_model(name, self.device) for name in self.ensemble_names]
        self.detector = FaceDetector(detector or DetectorConfig(device="cpu"))
        self.cloak = Cloak(self.models, config)

    def protect_tensor(
        self,
        photo: torch.Tensor,
        faces: Sequence[Face] | None = None,
        progress: Callable[[int, int, float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> CloakResult:
        faces = list(self.detector.detect(photo) if faces is None else faces)
        return self.cloak(photo.to(self.device), faces, progress, should_cancel)

    def protect_file(
        self,
        source: Path,
        out_dir: Path,
        suffix: str = "_cloaked",
        overwrite: bool = False,
        progress: Callable[[int, int, float], None] | None = None,
        options: ExportOptions | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> PhotoOutcome:
        """Protect one photo file into ``out_dir`` (``options`` wins over ``suffix``/``overwrite``)."""
        return self.protect_path(
            source, out_dir, options or ExportOptions(suffix=suffix, overwrite=overwrite), progress, should_cancel
        ).outcome

    def protect_path(
        self,
        source: Path,
        out_dir: Path,
        options: ExportOptions,
        progress: Callable[[int, int, float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> ProtectedPhoto:
        """Load, detect, cloak and export one photo; every expected failure becomes an outcome, not a raise."""
        start = time.perf_counter()
        source = Path(source)
        target = export_target(source, out_dir, options)
        try:
            same = os.path.realpath(target) == os.path.realpath(source)
        except OSError:
            same = False
        if same:
            return ProtectedPhoto(
                PhotoOutcome(source, "error", message="output would replace the original; choose another folder")
            )
        if target.exists() and not options.overwrite:
            return ProtectedPhoto(PhotoOutcome(source, "skipped", target, message=f"{display_name(target)} exists"))
        try:
            photo = open_photo(source)
        except ImageLoadError as err:
            return ProtectedPhoto(PhotoOutcome(source, "error", message=str(err)))
        clean = pil_to_tensor(photo.rgb)
        faces = self.detector.detect(clean)
        if not faces:
            outcome = PhotoOutcome(source, "no face", seconds=time.perf_counter() - start, message="no face found")
            return ProtectedPhoto(outcome, photo, clean)
        result = self.protect_tensor(clean, faces, progress, should_cancel)
        try:
            written = export_protected(source, result.photo.cpu(), out_dir, options, photo=photo)
        except FileExistsError as err:
            return ProtectedPhoto(PhotoOutcome(source, "skipped", target, message=str(err)), photo, clean, faces)
        except (ExportError, ImageLoadError) as err:
            return ProtectedPhoto(PhotoOutcome(source, "error", message=str(err)), photo, clean, faces)
        outcome = PhotoOutcome(
            source, "protected", written, len(faces), time.perf_counter() - start, face_dssim=tuple(result.face_dssim)
        )
        return ProtectedPhoto(outcome, photo, clean, list(faces), result)


@dataclass
class ProtectedPhoto:
    """What protecting one file produced: the outcome, and for reports the clean photo, faces and result."""

    outcome: PhotoOutcome
    photo: SourcePhoto | None = None
    clean: torch.Tensor | None = None
    faces: list[Face] | None = None
    result: CloakResult | None = None
