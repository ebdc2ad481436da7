"""Where a face's change lives: the photo region around the face, its working copy, mask and texture allowance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from ..detect import Face
from ..quality import DSSIMTo
from .config import CloakConfig


def face_region_bounds(face: Face, height: int, width: int, margin: float = 0.4) -> tuple[int, int, int, int]:
    """The photo region worked on for a face: its box grown by ``margin`` of its size on every side.

    Returns:
        ``(y0, y1, x0, x1)``, clipped to a ``height`` x ``width`` photo.
    """
    x0, y0, x1, y1 = face.box
    size = max(x1 - x0, y1 - y0)
    grow = margin * size
    return (
        max(0, math.floor(y0 - grow)),
        min(height, math.ceil(y1 + grow)),
        max(0, math.floor(x0 - grow)),
        min(width, math.ceil(x1 + grow)),
    )


def face_crops(face: Face, *photos: torch.Tensor, margin: float = 0.2) -> list[torch.Tensor]:
    """The same face box (grown by ``margin``) cut from photos of one size: where face quality is measured."""
    y0, y1, x0, x1 = face_region_bounds(face, *photos[0].shape[-2:], margin=margin)
    return [photo[..., y0:y1, x0:x1] for photo in photos]


def face_mask(
    face: Face, bounds: tuple[int, int, int, int], size: tuple[int, int], feather: float = 0.08
) -> torch.Tensor:
    """Feathered ellipse over the face (forehead to chin) on the working grid of a region.

    Args:
        face: the face, in photo pixels.
        bounds: ``(y0, y1, x0, x1)`` of the region in the photo.
        size: ``(h, w)`` of the region's working copy.
        feather: sigma of the feather, as a share of the face's width.

    Returns:
        ``1,1,h,w`` float32 in [0, 1], exactly 0 where the feather has faded (and at the region's border).
    """
    y0, y1, x0, x1 = bounds
    h, w = size
    fx, fy = (x1 - x0) / w, (y1 - y0) / h
    bx0, by0, bx1, by1 = face.box
    cx, cy = (bx0 + bx1) / 2 - x0, (by0 + by1) / 2 - y0 - 0.05 * (by1 - by0)
    ax, ay = 0.62 * (bx1 - bx0), 0.68 * (by1 - by0)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * fy
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * fx
    r = ((xs[None, :] - cx) / ax) ** 2 + ((ys[:, None] - cy) / ay) ** 2
    mask = (r <= 1).float()[None, None]
    sigma = max(0.5, feather * (bx1 - bx0) / fx)
    k = 2 * math.ceil(3 * sigma) + 1
    mask = gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="constant")
    # the feather may only fade, never reach outside the region: exact zeros where it is negligible
    mask = mask * (mask > 1e-3)
    return mask.clamp(0, 1)


def texture_allowance(clean: torch.Tensor, mask: torch.Tensor, power: float, ceiling: float = 3.0) -> torch.Tensor:
    """Per-pixel scale of the step and luminance cap, larger where the clean face has local contrast.

    Args:
        clean: ``1,3,h,w`` clean working copy in [0, 1].
        mask: ``1,1,h,w`` face mask.
        power: ``p`` in ``(2 var + C2) ** (p / 2)`` of the clean luminance in SSIM's window; 0 = uniform.
        ceiling: the largest value of the map.

    Returns:
        ``1,1,h,w``, normalised to mean 1 where ``mask`` exceeds 1/2, capped at ``ceiling``; all ones at
        ``power`` 0.
    """
    if power == 0:
        return torch.ones_like(mask)
    luma = clean.mean(dim=1, keepdim=True)
    window, sigma = (11, 11), (1.5, 1.5)
    mean = gaussian_blur2d(luma, window, sigma, border_type="replicate")
    variance = (gaussian_blur2d(luma * luma, window, sigma, border_type="replicate") - mean * mean).clamp_min(0)
    allowance = (2 * variance + 0.03**2) ** (power / 2)
    inside = mask > 0.5
    allowance = allowance / allowance[inside].mean() if inside.any() else torch.ones_like(mask)
    return allowance.clamp(max=ceiling)


@dataclass(frozen=True, eq=False)
class _FaceRegion:
    """One face's working copy: the photo region, its downscale, mask, allowance and DSSIM budget."""

    face: Face
    y0: int
    y1: int
    x0: int
    x1: int
    clean: torch.Tensor  # 1,3,h,w working copy of the region
    mask: torch.Tensor  # 1,1,h,w feathered face mask
    allowance: torch.Tensor  # 1,1,h,w per-pixel scale of the step and luminance cap (mean 1 on the face)
    budget: float  # face DSSIM the working copy may reach (compose holds dssim_budget at the photo's resolution)
    to_clean: DSSIMTo  # face DSSIM of a candidate working copy against the clean one
    to_photo: np.ndarray  # 3x3: working pixel -> photo pixel (pixel centres)

    @property
    def native(self) -> bool:
        """Attacked at the photo's own resolution (not downscaled to the working size)."""
        return tuple(self.clean.shape[-2:]) == (self.y1 - self.y0, self.x1 - self.x0)


def working_region(photo: torch.Tensor, face: Face, config: CloakConfig, device: torch.device) -> _FaceRegion:
    """The working copy of ``face``'s region of a ``1,3,H,W`` photo, on ``device``.

    A face larger than ``config.work_face_size`` is downscaled (antialiased) to that size and gets
    ``gradient_sigma``, ``texture_allocation`` and the upsampled budget; a smaller one is worked at its own
    resolution with the ``native_*`` knobs and ``dssim_budget``.
    """
    height, width = photo.shape[-2:]
    bounds = face_region_bounds(face, height, width)
    y0, y1, x0, x1 = bounds
    region = photo[..., y0:y1, x0:x1]
    scale = min(1.0, config.work_face_size / max(face.width, face.height))
    h, w = max(8, round((y1 - y0) * scale)), max(8, round((x1 - x0) * scale))
    native = (h, w) == (y1 - y0, x1 - x0)
    if not native:
        region = F.interpolate(region, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    fy, fx = (y1 - y0) / h, (x1 - x0) / w
    to_photo = np.array([[fx, 0, (fx - 1) / 2 + x0], [0, fy, (fy - 1) / 2 + y0], [0, 0, 1.0]])
    clean = region.to(device).contiguous()
    mask = face_mask(face, bounds, (h, w)).to(device)
    power = config.native_texture_allocation if native else config.texture_allocation
    allowance = texture_allowance(clean, mask, power)
    budget = config.dssim_budget * (1.0 if native else config.upsampled_budget_factor)
    return _FaceRegion(face, y0, y1, x0, x1, clean, mask, allowance, budget, DSSIMTo(clean, mask), to_photo)
