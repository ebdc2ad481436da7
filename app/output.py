"""Writing protected photos from the app: one adapter over the core exporter (runs in the worker thread)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .model import RunSettings


def _exporter():
    """The core exporter module, or None while it does not exist yet (then the fallback below is used)."""
    try:
        from facecloak.core import export
    except ImportError:
        return None
    return export


def export_options(settings: RunSettings, overwrite: bool | None = None):
    """The core ``ExportOptions`` for these settings (None without the core exporter)."""
    export = _exporter()
    if export is None:
        return None
    return export.ExportOptions(
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
    export = _exporter()
    if export is not None:
        return export.export_protected(source, protected, out_dir, export_options(settings, overwrite))
    # Fallback until core.export exists: suffix naming, same format, metadata always stripped.
    from PIL import Image

    from facecloak.core.image import tensor_to_uint8
    from facecloak.core.protect import write_image_atomic

    target = target_path(source, out_dir, settings)
    if target.resolve() == source.resolve():
        raise FileExistsError(f"{target.name}: refusing to write over the original")
    write_image_atomic(
        Image.fromarray(tensor_to_uint8(protected)),
        target,
        overwrite=settings.overwrite if overwrite is None else overwrite,
    )
    return target


def target_path(source: Path, out_dir: Path, settings: RunSettings) -> Path:
    """Where :func:`save_protected` would write ``source``'s protected copy."""
    export = _exporter()
    if export is not None:
        return export.export_target(source, out_dir, export_options(settings))
    suffix = "" if settings.naming == "same" else settings.suffix
    return out_dir / f"{source.stem}{suffix}{source.suffix.lower()}"


def copy_atomic(existing: Path, target: Path, overwrite: bool = False) -> None:
    """Copy an already written protected file to ``target`` without ever leaving a half-written file."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target.name} exists (not overwritten)")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".part", dir=target.parent)
    os.close(handle)
    try:
        shutil.copyfile(existing, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
