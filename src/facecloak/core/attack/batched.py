"""Pieces of the batched attack (:mod:`.execution`) that replace a host round trip of the CPU's way."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from ..transforms import Transform

# output rows of a median blur computed at once: the k*k window copies stay a few tens of MB on large faces
MEDIAN_STRIP_ROWS = 64


def warp_views(images: torch.Tensor, matrices: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Crops ``V,3,h,w`` of ``V`` views of one face, in one warp.

    Args:
        images: ``V,3,H,W`` views of the face's working copy.
        matrices: ``V,3,3`` float64, working pixel -> crop pixel per view (views differ by landmark jitter).
        size: ``(h, w)`` of the crops.

    As :func:`~facecloak.core.align.warp_crops` does, a face much larger than the crop is first downscaled with an
    antialiasing filter, here the whole working copy by the first view's scale rather than each crop's own region;
    the matrices travel to the device without waiting for it.
    """
    height, width = images.shape[-2:]
    scale = 1.0 / math.sqrt(abs(np.linalg.det(matrices[0, :2, :2])))  # working pixels per crop pixel
    to_source = np.eye(3)
    if scale > 1.5:
        out_h, out_w = max(2, round(height / scale)), max(2, round(width / scale))
        images = F.interpolate(images, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
        fy, fx = height / out_h, width / out_w
        # downscaled pixel centre u maps to working coordinate fx*u + (fx-1)/2
        to_source = np.array([[fx, 0.0, (fx - 1) / 2], [0.0, fy, (fy - 1) / 2], [0.0, 0.0, 1.0]])
    local = np.ascontiguousarray((matrices @ to_source)[:, :2], dtype=np.float32)
    m = torch.from_numpy(local).to(device=images.device, non_blocking=True)
    return warp_affine(images, m, dsize=size, mode="bilinear", padding_mode="zeros", align_corners=True)


def median_blur(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median blur of ``B,C,H,W`` images with edge pixels repeated, on their own device, differentiable.

    On 8-bit values (the attack's images are quantised) the same values as OpenCV's median that the CPU's way
    runs; the gradient goes to one pixel holding the median, as there, though not always the same one on ties.
    """
    r = kernel // 2
    padded = F.pad(images, (r, r, r, r), mode="replicate")
    height = images.shape[-2]
    strips = []
    for top in range(0, height, MEDIAN_STRIP_ROWS):
        bottom = min(height, top + MEDIAN_STRIP_ROWS)
        windows = padded[..., top : bottom + 2 * r, :].unfold(2, kernel, 1).unfold(3, kernel, 1)
        strips.append(windows.flatten(-2).median(dim=-1).values)
    return torch.cat(strips, dim=2) if len(strips) > 1 else strips[0]


def apply_view(view: Transform, image: torch.Tensor) -> torch.Tensor:
    """``view(image)``, with the median blur on the device instead of through OpenCV on the host."""
    if view.kind == "median":
        return median_blur(image, view.kernel)
    return view(image)
