"""Separable blurs whose input gradient costs what their forward pass costs.

kornia's ``gaussian_blur2d`` gives the same numbers (see the tests). Without gradients it accumulates shifted
slices of the image on the CPU, which is fast; with gradients it runs ``F.conv2d`` with a one-dimensional
kernel per channel, and torch's CPU convolution backward for such inputs is an order of magnitude slower than
the forward pass (1x11 kernel on a 340x250 image: 0.4 ms forward, 5 ms backward). The attack differentiates
through blurs on every step (the DSSIM term's SSIM windows, blurred views), so here both passes accumulate
slices: the input gradient of a valid correlation with fixed taps is the gradient added back at each tap's
offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel1d


class _ValidCorrelation1d(torch.autograd.Function):
    """``out[i] = sum_j taps[j] * x[i + j]`` along ``axis`` (output shorter by ``len(taps) - 1``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, taps: tuple[float, ...], axis: int) -> torch.Tensor:
        ctx.taps, ctx.axis, ctx.size = taps, axis, x.shape[axis]
        size = x.shape[axis] - len(taps) + 1
        out = x.narrow(axis, 0, size) * taps[0]
        for offset, tap in enumerate(taps[1:], start=1):
            out.add_(x.narrow(axis, offset, size), alpha=tap)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        shape = list(grad.shape)
        shape[ctx.axis] = ctx.size
        grad_x = grad.new_zeros(shape)
        size = grad.shape[ctx.axis]
        for offset, tap in enumerate(ctx.taps):
            grad_x.narrow(ctx.axis, offset, size).add_(grad, alpha=tap)
        return grad_x, None, None


def separable_filter(
    images: torch.Tensor, taps_x: tuple[float, ...], taps_y: tuple[float, ...], border_type: str = "reflect"
) -> torch.Tensor:
    """Correlate ``B,C,H,W`` images with odd-length taps along x then y; same-size output, borders padded by
    ``border_type`` (as ``kornia.filters.filter2d_separable``)."""
    if len(taps_x) % 2 == 0 or len(taps_y) % 2 == 0:
        raise ValueError(f"expected odd numbers of taps, got {len(taps_x)} and {len(taps_y)}")
    rx, ry = len(taps_x) // 2, len(taps_y) // 2
    out = _ValidCorrelation1d.apply(F.pad(images, (rx, rx, 0, 0), mode=border_type), taps_x, -1)
    return _ValidCorrelation1d.apply(F.pad(out, (0, 0, ry, ry), mode=border_type), taps_y, -2)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float, border_type: str = "reflect") -> torch.Tensor:
    """``kornia.filters.gaussian_blur2d(images, (k, k), (sigma, sigma), border_type)``."""
    taps = tuple(get_gaussian_kernel1d(kernel_size, float(sigma), dtype=torch.float64)[0].tolist())
    return separable_filter(images, taps, taps, border_type)
