"""Plain data shared by the window and the worker: run settings and the per-photo album entry (no Qt, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Photo states shown as badges on the album strip.
QUEUED = "queued"
DETECTING = "detecting"
PROTECTING = "protecting"
PROTECTED = "protected"
NO_FACE = "no face"
ERROR = "error"

PRESET_NAMES = ("low", "mid", "high")
PREVIEW_STEPS = 4  # the fast look preview: enough steps to see the texture of the change, seconds not minutes


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs from the settings panel, as plain values the worker thread can own."""

    preset: str = "mid"
    steps: int | None = None  # None: the preset's
    dssim_budget: float | None = None  # None: the preset's
    ensemble: tuple[str, ...] = ()  # empty: the manifest's ensemble role
    evaluators: tuple[str, ...] = ()  # empty: the manifest's evaluator role
    blur: bool = True
    jpeg: bool = True
    resize: bool = True
    device: str = "auto"
    output_dir: str = ""  # empty: next to each original
    naming: str = "suffix"  # "suffix" (name_cloaked.jpg) or "same" (same name, other folder)
    suffix: str = "_cloaked"
    format: str = "same"  # "same" | "jpeg" | "png"
    jpeg_quality: int = 0  # 0: estimate from the source photo
    strip_metadata: bool = True
    overwrite: bool = False
    measure: bool = True  # compute the protection report on the held-out models
    save_report: bool = False  # write report JSON + PNG next to each protected photo

    def output_folder(self, source: Path) -> Path:
        return Path(self.output_dir).expanduser() if self.output_dir else source.parent

    def problem(self) -> str:
        """Why these settings cannot run, in one line; empty when they can."""
        if self.naming == "same" and not self.output_dir:
            return "Same-name output needs an output folder other than the photos' own (Settings > Output)."
        if self.naming == "suffix" and not self.suffix.strip():
            return "The file-name suffix is empty: the protected copy would replace the original."
        if self.steps is not None and self.steps < 1:
            return "Steps must be at least 1."
        return ""


@dataclass
class PhotoEntry:
    """One photo of the album as the window tracks it."""

    path: Path
    status: str = QUEUED
    message: str = ""  # error text (tooltip) or a short note
    progress: float = 0.0  # 0..1 while protecting
    faces: list[Any] | None = None  # core Face objects once detected
    enabled: list[bool] = field(default_factory=list)  # per face: protect it or not
    size: tuple[int, int] | None = None  # width, height
    thumbnail: np.ndarray | None = None  # small H,W,3 uint8
    output: Path | None = None  # where the protected copy was written
    report: Any = None  # core ProtectionReport
    report_images: dict[str, np.ndarray] = field(default_factory=dict)  # "heatmap", "bars"
    report_error: str = ""
    face_dssim: tuple[float, ...] = ()
    seconds: float = 0.0
    pinned_protected: np.ndarray | None = None  # kept in memory when it could not be written (never lose it)

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def enabled_faces(self) -> list[Any]:
        if not self.faces:
            return []
        return [f for f, on in zip(self.faces, self.enabled, strict=False) if on]
