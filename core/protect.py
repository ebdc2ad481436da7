"""Protect photo files: load, detect, cloak, write a protected copy atomically. Originals are never touched."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .attack import Cloak, CloakConfig, CloakResult
from .detect import DetectorConfig, Face, FaceDetector
from .device import select_device
from .image import ImageLoadError, load_pil, pil_to_tensor, tensor_to_uint8
from .zoo.manifest import load_manifest, load_roles
from .zoo.registry import load_model

ENCODERS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
PHOTO_SUFFIXES = set(ENCODERS)


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


def iter_photos(paths: Iterable[Path]) -> list[Path]:
    """Photo files among ``paths`` (folders searched recursively, symlink loops ignored), sorted, unique."""
    found: dict[Path, None] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for root, _dirs, files in os.walk(path, followlinks=False):
                for name in sorted(files):
                    if Path(name).suffix.lower() in PHOTO_SUFFIXES:
                        found[Path(root) / name] = None
        else:
            found[path] = None
    return sorted(found)


def output_path(photo: Path, out_dir: Path, suffix: str = "_cloaked") -> Path:
    return out_dir / f"{photo.stem}{suffix}{photo.suffix.lower()}"


def write_image_atomic(pixels: Image.Image, target: Path, quality: int = 92, overwrite: bool = False) -> None:
    """Encode next to ``target`` and rename over it, so a crash never leaves a half-written photo."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (not overwritten)")
    target.parent.mkdir(parents=True, exist_ok=True)
    kind = ENCODERS.get(target.suffix.lower(), "PNG")
    options = {"quality": quality, "subsampling": 0} if kind in ("JPEG", "WEBP") else {}
    handle, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            pixels.save(stream, format=kind, **options)  # no exif= : identifying metadata is not copied
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    ) -> PhotoOutcome:
        start = time.perf_counter()
        target = output_path(source, out_dir, suffix)
        if target.resolve() == source.resolve():
            return PhotoOutcome(source, "error", message="output would replace the original; choose another folder")
        if target.exists() and not overwrite:
            return PhotoOutcome(source, "skipped", target, message=f"{target.name} exists")
        try:
            image = load_pil(source)
        except ImageLoadError as err:
            return PhotoOutcome(source, "error", message=str(err))
        photo = pil_to_tensor(image)
        faces = self.detector.detect(photo)
        if not faces:
            return PhotoOutcome(source, "no face", seconds=time.perf_counter() - start, message="no face found")
        result = self.protect_tensor(photo, faces, progress)
        write_image_atomic(Image.fromarray(tensor_to_uint8(result.photo.cpu())), target, overwrite=overwrite)
        return PhotoOutcome(
            source, "protected", target, len(faces), time.perf_counter() - start, face_dssim=tuple(result.face_dssim)
        )
