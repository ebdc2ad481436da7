"""Image-quality measures of a change, on tensors in [0, 1] (no network weights needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale

from .filters import gaussian_blur

# rows per strip where megapixel images are measured a strip at a time: a few hundred kB per channel, in cache
STRIP_ROWS = 128


def _blur(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    return gaussian_blur(x, window, sigma, border_type="reflect")


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, gaussian window, reflected borders, like kornia's padding="same").

    Separable filtering: the same numbers as ``kornia.metrics.ssim`` at a fraction of its cost on
    megapixel face regions.
    """
    return _ssim_against(a, b, *_local_mean_variance(b, window, sigma), window, sigma)


def _local_mean_variance(x: torch.Tensor, window: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = _blur(x, window, sigma)
    return mean, _blur(x * x, window, sigma) - mean**2


def _ssim_against(
    a: torch.Tensor, b: torch.Tensor, mu_b: torch.Tensor, var_b: torch.Tensor, window: int, sigma: float
) -> torch.Tensor:
    c1, c2 = 0.01**2, 0.03**2
    mu_a = _blur(a, window, sigma)
    var_a = _blur(a * a, window, sigma) - mu_a**2
    cov = _blur(a * b, window, sigma) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _weighted_dssim(smap: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return _dssim_total(smap, weight) / _dssim_normaliser(smap, weight)


def _dssim_total(smap: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per image, the sum of ``(1 - SSIM) / 2`` over the map, each pixel weighted by ``weight`` when given."""
    d = (1 - smap) / 2
    return (d if weight is None else d * weight).sum(dim=(1, 2, 3))


def _dssim_normaliser(smap: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | int:
    """What :func:`_dssim_total` of the whole map is divided by to make it a (weighted) mean."""
    return smap[0].numel() if weight is None else weight.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def dssim(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None, window: int = 11) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2 on luminance, averaged with an optional ``B,1,H,W`` weight.

    Differentiable; Fawkes quotes its budgets (0.004 / 0.012 / 0.017) in this measure.
    """
    return DSSIMTo(b, weight, window)(a)


class DSSIMTo:
    """:func:`dssim` of many candidates against one fixed ``reference``: the reference's luminance, local
    mean and variance are computed once (searching for the largest change within a budget measures the
    same face several times, at up to megapixels)."""

    def __init__(
        self, reference: torch.Tensor, weight: torch.Tensor | None = None, window: int = 11, sigma: float = 1.5
    ) -> None:
        self.luma = rgb_to_grayscale(reference)
        self.weight, self.window, self.sigma = weight, window, sigma
        # strip by strip: on a face of several megapixels the filters' intermediate images would be most of the memory
        self.mean, self.variance = torch.empty_like(self.luma), torch.empty_like(self.luma)
        for top, bottom, start, stop in row_strips(self.luma.shape[-2], STRIP_ROWS, window // 2):
            mean, variance = _local_mean_variance(self.luma[..., top:bottom, :], window, sigma)
            self.mean[..., start:stop, :] = mean[..., start - top : stop - top, :]
            self.variance[..., start:stop, :] = variance[..., start - top : stop - top, :]

    def __call__(self, candidate: torch.Tensor) -> torch.Tensor:
        luma = rgb_to_grayscale(candidate)
        smap = _ssim_against(luma, self.luma, self.mean, self.variance, self.window, self.sigma)
        return _weighted_dssim(smap, self.weight)

    def of_rows(self, candidate_rows: Callable[[int, int], torch.Tensor], rows: int = STRIP_ROWS) -> torch.Tensor:
        """The same measure of a candidate given by ``candidate_rows(top, bottom)``, its rows ``[top, bottom)``,
        taken a strip of ``rows`` rows at a time.

        On a face of several megapixels the whole candidate and its SSIM maps never exist at once: a fraction of
        the memory, and strips that stay in the CPU's cache (about 2x faster on 4 MP).
        """
        halo = self.window // 2  # rows a strip's SSIM reads beyond itself
        total = torch.zeros(self.luma.shape[0], dtype=self.luma.dtype, device=self.luma.device)
        for top, bottom, start, stop in row_strips(self.luma.shape[-2], rows, halo):
            luma = rgb_to_grayscale(candidate_rows(top, bottom))
            ref = (t[..., top:bottom, :] for t in (self.luma, self.mean, self.variance))
            smap = _ssim_against(luma, *ref, self.window, self.sigma)[..., start - top : stop - top, :]
            total += _dssim_total(smap, None if self.weight is None else self.weight[..., start:stop, :])
        return total / _dssim_normaliser(self.luma, self.weight)


def row_strips(height: int, rows: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """``(top, bottom, start, stop)`` per strip of ``rows`` rows: the strip is ``[start, stop)``, read with up to
    ``halo`` neighbouring rows each side, ``[top, bottom)``. A filter of radius ``halo`` run on ``[top, bottom)``
    gives the whole image's values on ``[start, stop)``, borders included."""
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        yield max(0, start - halo), min(height, stop + halo), start, stop


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = F.mse_loss(a, b, reduction="none").mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    return 1 - 2 * dssim(a, b, window=window)


def haarpsi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """HaarPSI perceptual similarity (1 = identical), from piq; needs images of at least 32 px a side."""
    from piq import haarpsi as piq_haarpsi

    return piq_haarpsi(a.clamp(0, 1), b.clamp(0, 1), reduction="none", data_range=1.0)
