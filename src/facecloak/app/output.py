"""Writing protected photos from the app: one adapter over the core exporter (runs in the worker thread)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from facecloak.core.export import TEMP_MARK, ExportError, ExportOptions, export_protected, export_target
from facecloak.core.files import replace_atomically
from facecloak.core.image import display_name, open_photo

from .model import RunSettings

# What to do with a photo whose protected copy's file name is already taken (asked once per run).
OVERWRITE = "overwrite"
KEEP_BOTH = "keep both"  # write the new copy under a numbered name: x_cloaked (2).jpg
SKIP = "skip"  # leave the photo out of the run
MAX_NUMBERED = 999  # x_cloaked (2).jpg … x_cloaked (999).jpg


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


def numbered_options(settings: RunSettings, number: int) -> ExportOptions:
    """Options naming the copy ``<usual stem> (number).<ext>``, never overwriting."""
    usual = export_options(settings, overwrite=False)
    return replace(usual, suffix=f"{usual.suffix} ({number})", same_name=False)


def save_protected_new_name(source: Path, protected, out_dir: Path, settings: RunSettings) -> Path:
    """Write the copy under its usual name if free, else the first free ``x_cloaked (2).jpg``, ``(3)``…

    Never replaces a file: the no-clobber write itself claims the name (it fails if the name appeared since it
    was checked, and the next number is tried), so a file that appears meanwhile is never overwritten.
    """
    source = Path(source)
    photo = open_photo(source)  # decoded once for every name tried
    for number in range(1, MAX_NUMBERED + 1):
        options = export_options(settings, overwrite=False) if number == 1 else numbered_options(settings, number)
        target = export_target(source, out_dir, options)
        if target.exists() or target.resolve() == source.resolve():
            continue
        try:
            return export_protected(source, protected, out_dir, options, photo=photo)
        except FileExistsError:
            continue
    raise ExportError(f"{display_name(source)}: no free name for its protected copy in {display_name(out_dir)}")


def copy_atomic(existing: Path, target: Path, overwrite: bool = False) -> None:
    """Copy an already written protected file to ``target`` without ever leaving a half-written file."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target.name} exists (not overwritten)")
    replace_atomically(target, lambda tmp: shutil.copyfile(existing, tmp), prefix=TEMP_MARK)
