"""Album warm starts: a face seen earlier in the session lends its change to the next photo of that person.

Changes are carried in a canonical face frame (the ArcFace template at twice its size, with a margin large
enough for the whole face mask), so a change learnt on one photo lands on the same features of the next.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.geometry.transform import warp_affine

from ..align import ARCFACE_112, umeyama
from ..zoo.manifest import load_manifest
from ..zoo.model import FaceModel
from .region import _FaceRegion

CANONICAL_SIZE = 320
CANONICAL_POINTS = tuple((2 * x + 48, 2 * y + 48) for x, y in ARCFACE_112)


def _canonical_matrix(region: _FaceRegion) -> np.ndarray:
    """3x3: working pixel -> canonical face frame."""
    photo_to_canonical = umeyama(region.face.landmark_array(), np.asarray(CANONICAL_POINTS))
    return np.vstack([photo_to_canonical, [0, 0, 1]]) @ region.to_photo


def to_canonical(change: torch.Tensor, region: _FaceRegion) -> torch.Tensor:
    """``1,3,h,w`` change on ``region``'s working grid -> ``1,3,S,S`` in the canonical frame (S = 320)."""
    m = torch.as_tensor(_canonical_matrix(region)[:2][None], dtype=change.dtype, device=change.device)
    return warp_affine(change, m, dsize=(CANONICAL_SIZE, CANONICAL_SIZE), align_corners=True)


def from_canonical(canonical: torch.Tensor, region: _FaceRegion) -> torch.Tensor:
    """``1,3,S,S`` canonical change -> ``region``'s working grid, confined to its face mask."""
    inverse = np.linalg.inv(_canonical_matrix(region))[:2][None]
    m = torch.as_tensor(inverse, dtype=canonical.dtype, device=canonical.device)
    return warp_affine(canonical, m, dsize=tuple(region.clean.shape[-2:]), align_corners=True) * region.mask


class AlbumMemory:
    """Changes already computed in this session, keyed by the clean face's embedding on one ensemble model.

    Args:
        model: the model whose embeddings key the memory; its FAR 1e-3 threshold (from the manifest, else 0.5)
            decides "same person".
        capacity: how many faces are remembered (the oldest are forgotten first). Default: 64.
    """

    def __init__(self, model: FaceModel, capacity: int = 64) -> None:
        spec = load_manifest().get(model.name)
        verification = spec.verification if spec else None
        self.threshold = verification.threshold_far_1e3 if verification else 0.5
        self.capacity = capacity
        self.entries: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # key, change, similarity reached

    def lookup(self, embedding: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """The change of the closest remembered face of the same person, and the ensemble similarity that
        face's attack ended at; None when no remembered face is the same person."""
        best, best_sim = None, self.threshold
        for key, change, reached in self.entries:
            sim = float(key.flatten() @ embedding.flatten().to(key))
            if sim >= best_sim:
                best, best_sim = (change, reached), sim
        return best

    def remember(self, embedding: torch.Tensor, change: torch.Tensor, reached: float) -> None:
        """Keep ``change`` (canonical frame) under ``embedding``; ``reached``: the ensemble's mean similarity on
        the attack's last step."""
        self.entries.append((embedding.detach().flatten().float().cpu(), change, reached))
        del self.entries[: -self.capacity]

    def clear(self) -> None:
        self.entries.clear()
