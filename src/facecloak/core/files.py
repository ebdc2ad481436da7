"""Whole-file replacement that readers never see half done and that concurrent writers never collide in."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# The process's umask, read once at import (reading it means setting it): temp files get the permissions an
# ordinary open() would have given the file.
UMASK = os.umask(0o022)
os.umask(UMASK)


def replace_atomically(path: Path, write: Callable[[Path], object], prefix: str = "") -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    The temporary name is unique to this call (two processes writing the same file each get their own), the
    rename is atomic (readers see the old file or the new one) and a failed write leaves nothing behind.
    ``prefix`` is inserted into the temporary name (e.g. a mark that lets a later run clean up after a kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}{prefix}.", suffix=".part", dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(handle, 0o666 & ~UMASK)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
