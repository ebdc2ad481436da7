"""Full-resolution pixels of the album's photos for the preview: the few most recently used stay in memory.

The album can hold hundreds of 12 MP photos; only :data:`PIXEL_CACHE` photos' pixels (original and protected) are
kept, the rest reload from disk when shown. Fast-look previews are kept apart and never evicted: they exist
nowhere else. Protected pixels that could not be written live on the album entry (``pinned_protected``), not here.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .model import PROTECTED, PhotoEntry

PIXEL_CACHE = 6  # photos whose full-resolution pixels stay in memory
CLEAN, PROTECTED_PIXELS = "clean", "protected"


class PixelCache:
    """``put(key, clean=..., protected=...)``, ``get(key, kind)``, ``load(entry)``; least recently used go first."""

    def __init__(self, capacity: int = PIXEL_CACHE) -> None:
        self.capacity = capacity
        self._slots: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.previews: dict[str, np.ndarray] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def put(self, key: str, **images: np.ndarray | None) -> None:
        """Keep ``images`` (by kind; None is ignored) for ``key`` and make it the most recently used."""
        slot = self._slots.setdefault(key, {})
        slot.update({kind: pixels for kind, pixels in images.items() if pixels is not None})
        self._slots.move_to_end(key)
        while len(self._slots) > self.capacity:
            self._slots.popitem(last=False)

    def get(self, key: str, kind: str) -> np.ndarray | None:
        return self._slots.get(key, {}).get(kind)

    def forget(self, key: str, kind: str | None = None) -> None:
        """Drop one kind of ``key``'s pixels, or all of them and its preview."""
        if kind is None:
            self._slots.pop(key, None)
            self.previews.pop(key, None)
        else:
            self._slots.get(key, {}).pop(kind, None)

    def clear(self) -> None:
        self._slots.clear()
        self.previews.clear()

    def load(self, entry: PhotoEntry) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """Original and protected pixels of ``entry`` (reloading evicted ones from disk, PIL, no torch) and why
        one that should be there could not be read ("" when nothing went wrong)."""
        from facecloak.core.image import load_pil

        clean, protected = self.get(entry.key, CLEAN), self.get(entry.key, PROTECTED_PIXELS)
        if protected is None:
            protected = entry.pinned_protected
        problem = ""
        try:
            if clean is None and entry.faces is not None:
                clean = np.asarray(load_pil(entry.path))
            if protected is None and entry.status == PROTECTED and entry.output and entry.output.exists():
                protected = np.asarray(load_pil(entry.output))
        except Exception as err:  # a photo that vanished or changed on disk: say so, show what there is
            problem = str(err) or type(err).__name__
        self.put(entry.key, clean=clean, protected=protected)
        return clean, protected, problem
