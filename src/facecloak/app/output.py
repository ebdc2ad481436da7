"""The app's output settings as the core exporter's options and targets (no Qt: used from either thread)."""

from __future__ import annotations

import shutil
from pathlib import Path

from facecloak.core.export import TEMP_MARK, ExportOptions, export_protected, export_target
from facecloak.core.files import replace_atomically

from .model import RunSettings

# What to do with a photo whose protected copy's file name is already taken (asked once per run).
OVERWRITE = "overwrite"
KEEP_BOTH = "keep both"  # write the new copy under a numbered name: x_cloaked (2).jpg
SKIP = "skip"  # leave the photo out of the run


def export_options(settings: RunSettings, overwrite: bool | None = None) -> ExportOptions:
    """The core ``ExportOptions`` for these settings (``overwrite`` None: the settings' own)."""
    return ExportOptions(
        suffix="" if settings.naming == "same" else settings.suffix,
        format=settings.format,
        jpeg_quality=settings.jpeg_quality or None,
        keep_metadata=not settings.strip_metadata,
        overwrite=settings.overwrite if overwrite is None else overwrite,
        same_name=settings.naming == "same",
    )


def target_path(source: Path, out_dir: Path, settings: RunSettings) -> Path:
    """Where the protected copy of ``source`` goes in ``out_dir`` (the numbered name of "keep both" aside)."""
    return export_target(source, out_dir, export_options(settings))


def save_protected(source: Path, protected, out_dir: Path, settings: RunSettings) -> Path:
    """Write ``protected`` (a ``1,3,H,W`` tensor) for ``source`` into ``out_dir``; returns the path written."""
    return export_protected(source, protected, out_dir, export_options(settings))


def copy_atomic(existing: Path, target: Path, overwrite: bool = False) -> None:
    """Copy an already written protected file to ``target`` without ever leaving a half-written file."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target.name} exists (not overwritten)")
    replace_atomically(target, lambda tmp: shutil.copyfile(existing, tmp), prefix=TEMP_MARK)
