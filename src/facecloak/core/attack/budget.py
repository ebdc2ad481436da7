"""Keeping the change within its caps and its DSSIM budget, and placing it on the photo.

All on ``1,C,h,w`` float tensors in [0, 1] (changes in [-1, 1]); luminance is the mean of the three channels,
chroma the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..quality import STRIP_ROWS, DSSIMTo, row_strips
from .region import _FaceRegion


def _project(
    delta: torch.Tensor, clean: torch.Tensor, allowance: torch.Tensor, epsilon: float, chroma_epsilon: float
) -> torch.Tensor:
    """``delta`` with its luminance within ``epsilon * allowance``, its chroma within ``chroma_epsilon``, and
    ``clean + delta`` within [0, 1]."""
    luma = delta.mean(dim=1, keepdim=True)
    chroma = delta - luma
    cap = epsilon * allowance
    luma = torch.maximum(torch.minimum(luma, cap), -cap)
    chroma = chroma.clamp(-chroma_epsilon, chroma_epsilon)
    return _fit_in_range(clean, luma, chroma)


def _fit_in_range(clean: torch.Tensor, luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """``luma + chroma``, with the luma moved so every channel stays in [0, 1].

    Clipping channels one by one would turn part of the luminance change into a colour change on bright or
    dark skin, the blotches the chroma cap exists to prevent.
    """
    base = clean + chroma
    # in place where the tensors are our own: this runs on megapixel face regions
    low = base.amin(dim=1, keepdim=True).neg_()
    high = base.amax(dim=1, keepdim=True).neg_().add_(1)
    luma = luma.clamp(max=high).clamp_(min=low)
    return base.add_(luma).clamp_(0, 1).sub_(clean)


def _budget_scale(change: torch.Tensor, clean: torch.Tensor, to_clean: DSSIMTo, budget: float) -> tuple[float, float]:
    """Largest ``gamma <= 1`` (within 2% of the budget) with face DSSIM of ``clean + gamma * change`` within
    ``budget`` (measured by ``to_clean``, built on ``clean`` and the face's weight); and that DSSIM."""
    return _largest_within(lambda gamma: float(to_clean(change.mul(gamma).add_(clean).clamp_(0, 1))[0]), budget)


def _largest_within(measure: Callable[[float], float], budget: float) -> tuple[float, float]:
    """Largest ``gamma`` in [0, 1] (within 2% of the budget) with ``measure(gamma) <= budget``; and that measure.

    DSSIM of a small change grows about as ``gamma**2``, so the search interpolates in ``gamma**2`` between
    the closest values under and over the budget: two or three measures instead of a bisection's eight.
    """
    value = measure(1.0)
    if value <= budget:
        return 1.0, value
    lo, lo_value, hi, hi_value = 0.0, 0.0, 1.0, value
    for _ in range(6):
        squared = lo**2 + (budget - lo_value) * (hi**2 - lo**2) / max(hi_value - lo_value, 1e-12)
        # stay strictly inside the bracket so every measure narrows it
        gamma = min(max(math.sqrt(max(squared, 0.0)), lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
        current = measure(gamma)
        if current <= budget:
            lo, lo_value = gamma, current
            if current >= 0.98 * budget:
                break
        else:
            hi, hi_value = gamma, current
    return lo, lo_value


def project_into_budget(
    delta: torch.Tensor, region: _FaceRegion, epsilon: float, chroma_epsilon: float
) -> torch.Tensor:
    """``delta`` projected onto the caps (:func:`_project`), then scaled so the masked change stays within the
    region's working DSSIM budget."""
    delta = _project(delta, region.clean, region.allowance, epsilon, chroma_epsilon)
    gamma, _ = _budget_scale(delta * region.mask, region.clean, region.to_clean, region.budget)
    return delta * gamma


def _largest_within_on_device(
    measure: Callable[[torch.Tensor], torch.Tensor],
    budget: float,
    like: torch.Tensor,
    spreads: tuple[float, ...] = (0.3, 0.05, 0.01),
    count: int = 8,
) -> torch.Tensor:
    """:func:`_largest_within` without reading a value back: a 0-dim tensor ``gamma`` in [0, 1] on ``like``'s device.

    ``measure(gammas)`` takes a 1-D tensor of scales and returns their measures, all in one batch. As the host's
    search, each round interpolates in ``gamma**2`` between the closest scales under and over the budget; it then
    measures ``count`` scales around that estimate at once (``gamma**2`` within +-30%, then 5%, then 1%) and keeps
    the closest under and over. ``gamma`` is 1 when the whole change fits, else the largest scale measured within the
    budget (0 at worst).
    """
    one = torch.ones(1, dtype=like.dtype, device=like.device)
    full = measure(one)[0]
    lo, lo_value, hi, hi_value = one[0] * 0, one[0] * 0, one[0], full  # the bracket, in gamma**2
    steps = torch.linspace(-1, 1, count, dtype=like.dtype, device=like.device)
    for spread in spreads:
        estimate = lo + (budget - lo_value) * (hi - lo) / (hi_value - lo_value).clamp_min(1e-12)
        squares = torch.minimum(torch.maximum(estimate * (1 + spread * steps), lo), hi)
        values = measure(squares.sqrt())
        within = values <= budget
        lo, lo_value = torch.where(within, squares, lo).amax(), torch.where(within, values, lo_value).amax()
        hi, hi_value = torch.where(within, hi, squares).amin(), torch.where(within, hi_value, values).amin()
    return torch.where(full <= budget, one[0], lo.sqrt())


def project_into_budget_on_device(
    delta: torch.Tensor, region: _FaceRegion, epsilon: float, chroma_epsilon: float
) -> torch.Tensor:
    """:func:`project_into_budget` for the batched attack: the same caps, and the budget scale found by
    :func:`_largest_within_on_device`, so nothing waits for the device."""
    delta = _project(delta, region.clean, region.allowance, epsilon, chroma_epsilon)
    change = delta * region.mask

    def measure(gammas: torch.Tensor) -> torch.Tensor:
        return region.to_clean((region.clean + gammas.view(-1, 1, 1, 1) * change).clamp_(0, 1))

    return delta * _largest_within_on_device(measure, region.budget, delta)


class _BilinearUpsampler:
    """Windows of ``F.interpolate(images, size, mode="bilinear", align_corners=False)`` without the rest: a face's
    change is upsampled onto megapixels of photo a strip of rows at a time."""

    def __init__(self, images: torch.Tensor, size: tuple[int, int], cols: range) -> None:
        self.images, self.size = images, size
        x0, x1, fx = self._taps(images.shape[-1], size[1], cols)
        # columns first, once, on the few rows of the small image; then rows strip by strip (contiguous copies)
        self.columns = torch.lerp(images.index_select(-1, x0), images.index_select(-1, x1), fx)

    def _taps(self, n_in: int, n_out: int, span: range) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = torch.arange(span.start, span.stop, dtype=torch.float64, device=self.images.device)
        source = ((positions + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
        first = source.long().clamp_(max=n_in - 1)
        return first, (first + 1).clamp_(max=n_in - 1), (source - first).to(self.images.dtype)

    def rows(self, span: range) -> torch.Tensor:
        y0, y1, fy = self._taps(self.images.shape[-2], self.size[0], span)
        return torch.lerp(self.columns.index_select(-2, y0), self.columns.index_select(-2, y1), fy[:, None])


def compose(
    photo: torch.Tensor, regions: Sequence[_FaceRegion], deltas: Sequence[torch.Tensor], budget: float
) -> tuple[torch.Tensor, list[float]]:
    """Upsample each face's change onto the photo, quantise, and hold the DSSIM budget at full size.

    Only the face's own pixels are touched (and measured): the rest of the photo keeps its exact 8-bit values.

    Args:
        photo: ``1,3,H,W`` clean photo in [0, 1] (not modified).
        regions: the faces' working regions.
        deltas: per region, its ``1,3,h,w`` change at working resolution.
        budget: face DSSIM each face may reach at the photo's resolution.

    Returns:
        The protected photo (8-bit values) and each face's DSSIM.
    """
    out = photo.detach().clone()
    return out, [_place_change(out, region, delta, budget) for region, delta in zip(regions, deltas, strict=True)]


def _place_change(out: torch.Tensor, region: _FaceRegion, delta: torch.Tensor, budget: float) -> float:
    """Add ``region``'s change to ``out`` in place, scaled into the DSSIM budget; returns the face DSSIM.

    Faces of several megapixels are worked a strip of rows at a time (memory, and the CPU's cache).
    """
    size = (region.y1 - region.y0, region.x1 - region.x0)
    small = torch.cat([delta.detach() * region.mask, region.mask], dim=1).to(out.device, out.dtype)
    support = region.mask[0, 0] > 0
    rows, cols = torch.nonzero(support.any(dim=1)).flatten(), torch.nonzero(support.any(dim=0)).flatten()
    if len(rows) == 0:
        return 0.0
    # the photo rows and columns that bilinear upsampling carries the support to (a working pixel reaches
    # one pixel further), plus half an SSIM window so the measure sees the edges of the change
    fy, fx = size[0] / small.shape[-2], size[1] / small.shape[-1]
    r0, r1 = max(0, math.floor((int(rows[0]) - 1) * fy) - 6), min(size[0], math.ceil((int(rows[-1]) + 2) * fy) + 6)
    c0, c1 = max(0, math.floor((int(cols[0]) - 1) * fx) - 6), min(size[1], math.ceil((int(cols[-1]) + 2) * fx) + 6)
    clean = out[..., region.y0 + r0 : region.y0 + r1, region.x0 + c0 : region.x0 + c1]
    change = clean.new_empty(clean.shape)
    mask = clean.new_empty((1, 1, *clean.shape[-2:]))
    upsampler = _BilinearUpsampler(small, size, range(c0, c1))
    for _, _, top, bottom in row_strips(r1 - r0, STRIP_ROWS, halo=0):
        both = upsampler.rows(range(r0 + top, r0 + bottom))
        mask[..., top:bottom, :] = both[:, 3:]
        luma = both[:, :3].mean(dim=1, keepdim=True)
        change[..., top:bottom, :] = _fit_in_range(clean[..., top:bottom, :], luma, both[:, :3] - luma)

    def changed_rows(top: int, bottom: int, gamma: float) -> torch.Tensor:
        x = change[..., top:bottom, :].mul(gamma).add_(clean[..., top:bottom, :]).clamp_(0, 1)
        return x.mul_(255).round_().div_(255)

    to_clean = DSSIMTo(clean, mask)
    gamma, value = _largest_within(
        lambda g: float(to_clean.of_rows(lambda a, b: changed_rows(a, b, g), STRIP_ROWS)[0]), budget
    )
    for _, _, top, bottom in row_strips(r1 - r0, STRIP_ROWS, halo=0):
        clean[..., top:bottom, :] = changed_rows(top, bottom, gamma)
    return value
