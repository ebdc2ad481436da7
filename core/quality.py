"""Image-quality measures of a change, on tensors in [0, 1] (no network weights needed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.filters import gaussian_blur2d


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, gaussian window, reflected borders, like kornia's padding="same").

    Separable filtering: the same numbers as ``kornia.metrics.ssim`` at a fraction of its cost on
    megapixel face regions.
    """
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur2d(x, (window, window), (sigma, sigma), border_type="reflect", separable=True)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def dssim(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None, window: int = 11) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2 on luminance, averaged with an optional ``B,1,H,W`` weight.

    Differentiable; Fawkes quotes its budgets (0.004 / 0.012 / 0.017) in this measure.
    """
    smap = ssim_map(rgb_to_grayscale(a), rgb_to_grayscale(b), window)
    d = (1 - smap) / 2
    if weight is None:
        return d.mean(dim=(1, 2, 3))
    return (d * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = F.mse_loss(a, b, reduction="none").mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    return 1 - 2 * dssim(a, b, window=window)


def haarpsi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """HaarPSI perceptual similarity (1 = identical), from piq; needs images of at least 32 px a side."""
    from piq import haarpsi as piq_haarpsi

    return piq_haarpsi(a.clamp(0, 1), b.clamp(0, 1), reduction="none", data_range=1.0)
