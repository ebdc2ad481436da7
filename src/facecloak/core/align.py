"""Differentiable face alignment from full-resolution photos to each model's crop.

A loss on an embedding of an aligned crop back-propagates to the photo's own pixels: the crop is
an affine warp (``kornia.geometry.warp_affine``) of the photo, computed from the detected
landmarks (similarity transform, Umeyama) or from the detector's box (FaceNet's crop).
Coordinates are pixel centres: (0, 0) is the centre of the top-left pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from .detect import Face

# InsightFace's 112x112 ArcFace template (left eye, right eye, nose, left/right mouth corner).
ARCFACE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) taking src to dst.

    Umeyama (1991). ``src`` and ``dst`` are ``N,2``; returns the ``2,3`` matrix ``M`` with
    ``dst ~= M @ [src, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"umeyama needs two N,2 point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = (s * d).sum() / var_src
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


@dataclass(frozen=True)
class TemplateAlignment:
    """Similarity transform from the five landmarks to a template in the crop's pixel coordinates."""

    size: tuple[int, int]  # (height, width) of the crop
    points: tuple[tuple[float, float], ...]

    def matrix(self, landmarks: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
        del box
        return umeyama(np.asarray(landmarks, dtype=np.float64), np.asarray(self.points, dtype=np.float64))


@dataclass(frozen=True)
class BoxAlignment:
    """FaceNet's crop: the detector box plus a margin, resized to ``size`` (no rotation).

    ``margin`` is in crop pixels, as facenet-pytorch's MTCNN defines it, so the crop covers the
    same part of the head whatever the photo's resolution.
    """

    size: tuple[int, int]
    margin: float = 32.0

    def matrix(self, landmarks: np.ndarray | None, box: np.ndarray) -> np.ndarray:
        del landmarks
        height, width = self.size
        x0, y0, x1, y1 = (float(v) for v in box)
        mx = self.margin * (x1 - x0) / (width - self.margin)
        my = self.margin * (y1 - y0) / (height - self.margin)
        x0, x1, y0, y1 = x0 - mx / 2, x1 + mx / 2, y0 - my / 2, y1 + my / 2
        sx, sy = width / (x1 - x0), height / (y1 - y0)
        # pixel-centre coordinates: photo X (corner X+0.5) -> crop u (corner u+0.5)
        return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])


Alignment = TemplateAlignment | BoxAlignment


def face_matrices(alignment: Alignment, faces: list[Face], landmark_shift: np.ndarray | None = None) -> torch.Tensor:
    """``N,2,3`` float64 photo-to-crop matrices, one per face.

    ``landmark_shift`` (``N,5,2`` pixels) moves the landmarks and box corners before fitting, to
    simulate detector jitter.
    """
    matrices = []
    for i, face in enumerate(faces):
        landmarks = face.landmark_array()
        box = np.asarray(face.box, dtype=np.float64)
        if landmark_shift is not None:
            landmarks = landmarks + landmark_shift[i]
            box = box + np.tile(landmark_shift[i].mean(0), 2)
        matrices.append(alignment.matrix(landmarks, box))
    return torch.as_tensor(np.stack(matrices), dtype=torch.float64)


def _roi_for(matrix: np.ndarray, size: tuple[int, int], photo_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer photo region (y0, y1, x0, x1) that the crop reads from, with a small border."""
    height, width = size
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]
    corners = np.array([[-1, -1, 1], [width, -1, 1], [-1, height, 1], [width, height, 1]], dtype=np.float64)
    pts = corners @ inverse.T
    pad = 2 + 0.02 * (pts.max(0) - pts.min(0)).max()
    x0 = max(0, math.floor(pts[:, 0].min() - pad))
    y0 = max(0, math.floor(pts[:, 1].min() - pad))
    x1 = min(photo_hw[1], math.ceil(pts[:, 0].max() + pad) + 1)
    y1 = min(photo_hw[0], math.ceil(pts[:, 1].max() + pad) + 1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the face lies outside the photo")
    return y0, y1, x0, x1


def warp_crops(
    photo: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int], antialias: bool = True
) -> torch.Tensor:
    """Differentiable crops ``N,3,h,w`` of a ``1,3,H,W`` photo through photo-to-crop ``matrices``.

    Only the region each crop reads is touched. When a face is much larger than the crop, that
    region is first downscaled with an antialiasing filter, so the crop does not alias and the
    gradient reaches every photo pixel of the face rather than a sparse grid of them.
    """
    if photo.dim() != 4 or photo.shape[0] != 1:
        raise ValueError(f"expected a 1,C,H,W photo, got {tuple(photo.shape)}")
    crops = []
    photo_hw = (photo.shape[-2], photo.shape[-1])
    for matrix in matrices.detach().cpu().numpy():
        y0, y1, x0, x1 = _roi_for(matrix, size, photo_hw)
        region = photo[..., y0:y1, x0:x1]
        # photo pixels per crop pixel
        scale = 1.0 / math.sqrt(abs(np.linalg.det(matrix[:, :2])))
        to_region = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
        if antialias and scale > 1.5:
            out_h = max(2, round((y1 - y0) / scale))
            out_w = max(2, round((x1 - x0) / scale))
            region = F.interpolate(region, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
            fy, fx = (y1 - y0) / out_h, (x1 - x0) / out_w
            # downscaled pixel centre u maps to region coordinate fx*u + (fx-1)/2
            to_region = to_region @ np.array([[fx, 0.0, (fx - 1) / 2], [0.0, fy, (fy - 1) / 2], [0.0, 0.0, 1.0]])
        local = matrix @ to_region
        m = torch.as_tensor(local, dtype=photo.dtype, device=photo.device).unsqueeze(0)
        crops.append(warp_affine(region, m, dsize=size, mode="bilinear", padding_mode="zeros", align_corners=True))
    if not crops:
        return photo.new_zeros((0, photo.shape[1], *size))
    return torch.cat(crops, dim=0)


class FaceAligner:
    """Aligned, differentiable crops of every face in a photo for one model's alignment."""

    def __init__(self, alignment: Alignment, antialias: bool = True) -> None:
        self.alignment = alignment
        self.antialias = antialias

    @property
    def size(self) -> tuple[int, int]:
        return self.alignment.size

    def matrices(self, faces: list[Face], landmark_shift: np.ndarray | None = None) -> torch.Tensor:
        return face_matrices(self.alignment, faces, landmark_shift)

    def __call__(
        self, photo: torch.Tensor, faces: list[Face], landmark_shift: np.ndarray | None = None
    ) -> torch.Tensor:
        return warp_crops(photo, self.matrices(faces, landmark_shift), self.size, self.antialias)
