"""What happens to a photo on its way to a face-recognition system: blur, JPEG, resizing.

Transforms act on ``B,3,H,W`` tensors in [0, 1]. The attack samples them differentiably
(expectation over transformation); the protection report applies the same kinds for evaluation,
with Pillow's real JPEG encoder instead of the differentiable codec.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import kornia.filters as KF
import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from PIL import Image

from .filters import gaussian_blur

KINDS = ("identity", "gaussian", "median", "box", "motion", "jpeg", "resize")


@dataclass(frozen=True)
class Transform:
    """One degradation. ``kernel`` for blurs; ``sigma`` gaussian; ``angle`` motion (degrees);
    ``quality`` JPEG; ``scale`` resize factor (down, then back up to the original size)."""

    kind: str = "identity"
    kernel: int = 0
    sigma: float = 0.0
    angle: float = 0.0
    quality: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind in ("gaussian", "median", "box", "motion") and (self.kernel < 3 or self.kernel % 2 == 0):
            raise ValueError(f"{self.kind} blur needs an odd kernel >= 3, got {self.kernel}")

    @property
    def name(self) -> str:
        if self.kind == "identity":
            return "none"
        if self.kind == "gaussian":
            return f"gaussian k{self.kernel}" + (f" s{self.sigma:g}" if self.sigma else "")
        if self.kind in ("median", "box"):
            return f"{self.kind} k{self.kernel}"
        if self.kind == "motion":
            return f"motion k{self.kernel}" + (f" {self.angle:.0f}deg" if self.angle else "")
        if self.kind == "jpeg":
            return f"jpeg q{self.quality}"
        return f"resize x{self.scale:.2f}"

    def __call__(self, images: torch.Tensor, differentiable: bool = True) -> torch.Tensor:
        return apply_transform(images, self, differentiable)


def _sigma_for(kernel: int) -> float:
    # OpenCV's rule for a gaussian kernel without an explicit sigma
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def apply_transform(images: torch.Tensor, t: Transform, differentiable: bool = True) -> torch.Tensor:
    if t.kind == "identity":
        return images
    if t.kind == "gaussian":
        sigma = t.sigma or _sigma_for(t.kernel)
        return gaussian_blur(images, t.kernel, sigma)
    if t.kind == "median":
        if differentiable:
            return median_blur_8bit(images, t.kernel)
        return opencv_median(images, t.kernel)
    if t.kind == "box":
        return KF.box_blur(images, (t.kernel, t.kernel))
    if t.kind == "motion":
        return KF.motion_blur(images, t.kernel, float(t.angle), 0.0)
    if t.kind == "jpeg":
        if differentiable:
            quality = torch.full((images.shape[0],), float(t.quality), device=images.device, dtype=images.dtype)
            return jpeg_codec_differentiable(images.clamp(0, 1), quality)
        return pillow_jpeg(images, t.quality)
    # resize: down by `scale` (antialiased, as image hosts do), then back up for the recogniser
    height, width = images.shape[-2:]
    small = (max(8, round(height * t.scale)), max(8, round(width * t.scale)))
    down = F.interpolate(images, size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False)


def opencv_median(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median blur of 8-bit pixels with OpenCV: kornia's numbers away from the border, at a fraction of the
    time and memory on megapixel regions (kornia unfolds k*k copies of the image). Not differentiable."""
    import cv2

    out = []
    for image in images.detach().clamp(0, 1):
        array = np.ascontiguousarray(image.mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
        out.append(torch.from_numpy(cv2.medianBlur(array, kernel)).permute(2, 0, 1).float().div(255))
    return torch.stack(out).to(images.device, images.dtype)


class _Median8bit(torch.autograd.Function):
    """Median blur of 8-bit values with OpenCV, and its exact gradient: each output pixel's gradient goes to
    the one pixel of its window that holds the median (as ``torch.median`` routes it).

    kornia's ``median_blur`` unfolds ``k*k`` copies of the image; at k=11 on a 270x250 face region its
    forward and backward took 1.7 s here, this takes a few tens of milliseconds.
    """

    @staticmethod
    def forward(ctx, images: torch.Tensor, kernel: int) -> torch.Tensor:
        levels = images.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        out = opencv_median(levels.float().div(255), kernel).mul(255).round().to(torch.uint8)
        ctx.save_for_backward(levels, out)
        ctx.kernel = kernel
        return out.to(images.dtype).div(255)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        levels, out = ctx.saved_tensors
        k, r = ctx.kernel, ctx.kernel // 2
        height, width = levels.shape[-2:]
        # OpenCV's median repeats the edge pixels
        padded = F.pad(levels.float(), (r, r, r, r), mode="replicate").to(torch.uint8)
        grad_padded = torch.zeros(padded.shape, dtype=grad.dtype, device=grad.device)
        unassigned = torch.ones_like(out, dtype=torch.bool)
        for dy in range(k):
            for dx in range(k):
                hit = unassigned & (padded[..., dy : dy + height, dx : dx + width] == out)
                if hit.any():
                    grad_padded[..., dy : dy + height, dx : dx + width] += grad * hit
                    unassigned &= ~hit
        return _fold_replicated(_fold_replicated(grad_padded, r, -1), r, -2), None


def _fold_replicated(padded: torch.Tensor, r: int, axis: int) -> torch.Tensor:
    """Undo a replicate padding of ``r`` along ``axis`` for a gradient: the copies' gradient goes to the edge."""
    size = padded.shape[axis] - 2 * r
    out = padded.narrow(axis, r, size).clone()
    out.narrow(axis, 0, 1).add_(padded.narrow(axis, 0, r).sum(dim=axis, keepdim=True))
    out.narrow(axis, size - 1, 1).add_(padded.narrow(axis, r + size, r).sum(dim=axis, keepdim=True))
    return out


def median_blur_8bit(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Differentiable median blur of images on the 8-bit grid (the attack's images are quantised)."""
    return _Median8bit.apply(images, kernel)


def pillow_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip through Pillow (4:2:0, as most uploads), not differentiable."""
    out = []
    for image in images.detach().clamp(0, 1):
        array = image.mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1).float().div(255))
    return torch.stack(out).to(images.device, images.dtype)


@dataclass(frozen=True)
class RobustnessConfig:
    """Which degradations the attack must survive, and their ranges (expectation over transformation)."""

    blur: bool = True
    jpeg: bool = True
    resize: bool = True
    landmark_jitter: float = 0.03  # detector jitter, as a fraction of the inter-ocular distance
    kernels: tuple[int, ...] = (3, 5, 7, 9, 11)
    gaussian_sigma: tuple[float, float] = (0.5, 3.0)
    jpeg_quality: tuple[int, int] = (50, 95)
    resize_scale: tuple[float, float] = (0.35, 1.0)

    def kinds(self) -> list[str]:
        kinds = ["identity"]
        if self.blur:
            kinds += ["gaussian", "median", "box", "motion"]
        if self.jpeg:
            kinds.append("jpeg")
        if self.resize:
            kinds.append("resize")
        return kinds


def sample_transforms(rng: random.Random, count: int, config: RobustnessConfig) -> list[Transform]:
    """``count`` transforms drawn at random: each kind equally likely, without replacement until every enabled
    kind (the untouched image among them) has been drawn, then again from all of them."""
    kinds = config.kinds()
    chosen: list[str] = []
    pool: list[str] = []
    for _ in range(count):
        if not pool:
            pool = list(kinds)
        chosen.append(pool.pop(_uniform_index(rng, len(pool))))
    return [_sample_one(rng, kind, config) for kind in chosen]


def _uniform_index(rng: random.Random, n: int) -> int:
    """An index in ``range(n)``, each equally likely, from one ``rng.uniform`` draw."""
    return min(n - 1, max(0, math.ceil(rng.uniform(0, float(n))) - 1))


def _sample_one(rng: random.Random, kind: str, config: RobustnessConfig) -> Transform:
    if kind == "identity":
        return Transform()
    if kind == "jpeg":
        return Transform("jpeg", quality=rng.randint(*config.jpeg_quality))
    if kind == "resize":
        lo, hi = config.resize_scale
        # uniform in log-scale: small factors are as likely as mild ones
        return Transform("resize", scale=math.exp(rng.uniform(math.log(lo), math.log(hi))))
    kernel = rng.choice(config.kernels)
    if kind == "gaussian":
        return Transform("gaussian", kernel=kernel, sigma=rng.uniform(*config.gaussian_sigma))
    if kind == "motion":
        return Transform("motion", kernel=kernel, angle=rng.uniform(0, 180))
    return Transform(kind, kernel=kernel)


def evaluation_transforms(kernels: tuple[int, ...] = (3, 5, 7, 9, 11)) -> list[Transform]:
    """The grid of the protection report: each blur at each kernel, JPEG 95/85/75/50."""
    grid = [Transform()]
    for kind in ("gaussian", "median", "box", "motion"):
        grid += [Transform(kind, kernel=k) for k in kernels]
    grid += [Transform("jpeg", quality=q) for q in (95, 85, 75, 50)]
    return grid
