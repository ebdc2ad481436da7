"""Writing protected photos from the app: one adapter over the core exporter (runs in the worker thread)."""

from __future__ import annotations

import shutil
from pathlib import Path

from facecloak.core.export import TEMP_MARK, ExportOptions, export_protected, export_target
from facecloak.core.files import replace_atomically

from .model import RunSettings


def export_options(settings: RunSettings, overwrite: bool | None = None) -> ExportOptions:
    """The core ``ExportOptions`` for these settings."""
    return ExportOptions(
        suffix="" if settings.naming == "same" else settings.suffix,
        format=settings.format,
        jpeg_quality=settings.jpeg_quality or None,
        keep_metadata=not settings.strip_metadata,
        overwrite=settings.overwrite if overwrite is None else overwrite,
        same_name=settings.naming == "same",
    )


def save_protected(
    source: Path, protected, out_dir: Path, settings: RunSettings, overwrite: bool | None = None
) -> Path:
    """Write ``protected`` (a ``1,3,H,W`` tensor) for ``source`` into ``out_dir``; returns the path written."""
    return export_protected(source, protected, out_dir, export_options(settings, overwrite))


def target_path(source: Path, out_dir: Path, settings: RunSettings) -> Path:
    """Where :func:`save_protected` would write ``source``'s protected copy."""
    return export_target(source, out_dir, export_options(settings))


def copy_atomic(existing: Path, target: Path, overwrite: bool = False) -> None:
    """Copy an already written protected file to ``target`` without ever leaving a half-written file."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target.name} exists (not overwritten)")
    replace_atomically(target, lambda tmp: shutil.copyfile(existing, tmp), prefix=TEMP_MARK)
