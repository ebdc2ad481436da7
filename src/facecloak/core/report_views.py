"""The degraded views of a face that the report measures, computed once per transform and cheaply.

A view is the photo after one upload degradation (blur, JPEG, resize), as a recogniser would see it. The
report's semantics are those of :func:`degraded_embeddings`: each transform acts on the face's *frame* (its
box grown by its own size on every side), and each evaluator aligns its crop from the degraded frame.

Three things make the views cheap without changing a number:

- every evaluator reads the same degraded pixels, so each transform runs once per face, not once per model;
- only the *window* the aligners read is degraded: the union of every evaluator's crop region, grown by
  :data:`WINDOW_PAD` pixels (more than any blur's reach and JPEG's block context) and placed on the frame's
  16-pixel JPEG grid. Blurs and JPEG give the frame's pixels there; at the frame's edges the window's edges are
  the frame's, so borders are padded alike;
- a resize is computed on the frame's grid (down with antialiasing, back up bilinearly, as
  ``torch.nn.functional.interpolate`` does) but only for the window's rows and columns, through the separable
  weights of both steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .align import _roi_for
from .attack import face_region_bounds
from .detect import Face
from .filters import separable_filter
from .transforms import Transform, evaluation_transforms

RESIZE_SIDES = (1080, 720)
FRAME_MARGIN = 1.0  # the frame: the face box grown by this share of its size on every side
WINDOW_PAD = 32  # pixels around the aligners' regions: blur radius (<= 5) and JPEG's 16 px blocks + upsampling
JPEG_GRID = 16  # 4:2:0 JPEG works on 16x16 blocks from the top-left corner of what it encodes

# The default views: the photo as posted, one JPEG, one resize, and the blurs that most often undid protection in
# the benchmark's tables (box and motion at 9 px; median at 5 px, a fraction of the cost of larger medians).
# ``full_sweep`` (``--full-sweep``) measures every view of the grid.
DEFAULT_VIEWS = ("none", "jpeg q75", "box k9", "motion k9", "median k5", "resize 720px")


def transform_label(t: Transform, photo_hw: tuple[int, int]) -> str:
    if t.kind == "resize":
        return f"resize {round(max(photo_hw) * t.scale)}px"
    return t.name


def report_transforms(photo_hw: tuple[int, int], full: bool = True) -> list[Transform]:
    """The report's views: every blur, JPEG and resize to 1080/720 px long side (only those that shrink the
    photo) when ``full``, else the :data:`DEFAULT_VIEWS` among them."""
    grid = evaluation_transforms()
    long_side = max(photo_hw)
    grid += [Transform("resize", scale=side / long_side) for side in RESIZE_SIDES if side < long_side]
    if full:
        return grid
    return [t for t in grid if transform_label(t, photo_hw) in DEFAULT_VIEWS]


@dataclass(frozen=True)
class FaceWindow:
    """Where a face's views are computed: ``frame`` (the transforms' extent) and ``window`` (what is degraded),
    both ``(y0, y1, x0, x1)`` in photo pixels, and the face in window coordinates."""

    frame: tuple[int, int, int, int]
    window: tuple[int, int, int, int]
    face: Face

    @property
    def frame_hw(self) -> tuple[int, int]:
        return self.frame[1] - self.frame[0], self.frame[3] - self.frame[2]


def shift_face(face: Face, dy: int, dx: int) -> Face:
    """The face in the coordinates of a region whose top-left corner is at ``(dy, dx)``."""
    return Face(
        box=(face.box[0] - dx, face.box[1] - dy, face.box[2] - dx, face.box[3] - dy),
        score=face.score,
        landmarks=tuple((x - dx, y - dy) for x, y in face.landmarks),
    )


def face_window(face: Face, photo_hw: tuple[int, int], aligners: Sequence) -> FaceWindow:
    """The frame of ``face`` and the window of it that ``aligners`` (each with ``matrices`` and ``size``) read."""
    fy0, fy1, fx0, fx1 = face_region_bounds(face, *photo_hw, margin=FRAME_MARGIN)
    framed = shift_face(face, fy0, fx0)
    frame_hw = (fy1 - fy0, fx1 - fx0)
    rois = [_roi_for(a.matrices([framed])[0].numpy(), a.size, frame_hw) for a in aligners]
    y0 = max(0, min(r[0] for r in rois) - WINDOW_PAD) // JPEG_GRID * JPEG_GRID
    x0 = max(0, min(r[2] for r in rois) - WINDOW_PAD) // JPEG_GRID * JPEG_GRID
    y1 = min(frame_hw[0], max(r[1] for r in rois) + WINDOW_PAD)
    x1 = min(frame_hw[1], max(r[3] for r in rois) + WINDOW_PAD)
    window = (fy0 + y0, fy0 + y1, fx0 + x0, fx0 + x1)
    return FaceWindow((fy0, fy1, fx0, fx1), window, shift_face(face, window[0], window[2]))


def window_of(photo: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    y0, y1, x0, x1 = box
    return photo[..., y0:y1, x0:x1]


def degrade(photos: Sequence[torch.Tensor], t: Transform, where: FaceWindow, windows: torch.Tensor | None = None):
    """``t`` applied to the face's frame of each ``1,3,H,W`` photo, read at the window: ``B,3,h,w``.

    ``windows``: the photos' windows already stacked (``B,3,h,w``), to save copying them for each transform.
    """
    if t.kind == "resize":
        return torch.cat([windowed_resize(photo, t.scale, where) for photo in photos])
    pixels = windows if windows is not None else torch.cat([window_of(photo, where.window) for photo in photos])
    if t.kind == "identity":
        return pixels
    if t.kind in ("box", "motion") and not (t.kind == "motion" and t.angle):
        return _separable_blur(pixels, t)
    return t(pixels, differentiable=False)


def _separable_blur(pixels: torch.Tensor, t: Transform) -> torch.Tensor:
    """kornia's box blur, and its motion blur at angle 0 (one row of ``1/k``), as two 1-d passes: the same
    numbers (to float rounding) at a fraction of the cost of its 2-d convolution on megapixel windows."""
    taps = (1.0 / t.kernel,) * t.kernel
    return separable_filter(pixels, taps, taps if t.kind == "box" else (1.0,), border_type="reflect")


# -- resize on the frame's grid, computed for the window only ------------------------------------------------


Band = tuple[torch.Tensor, torch.Tensor]  # (indices n,K, weights n,K): output i = sum_k w[i,k] * input[idx[i,k]]


def _band(spans: list[tuple[int, np.ndarray]]) -> Band:
    """Sparse rows of a resampling matrix, each a run of weights from a first input index, as a band."""
    width = max(len(taps) for _, taps in spans)
    index = np.zeros((len(spans), width), dtype=np.int64)
    weight = np.zeros((len(spans), width))
    for r, (lo, taps) in enumerate(spans):
        index[r] = lo + np.minimum(np.arange(width), len(taps) - 1)
        weight[r, : len(taps)] = taps
    return torch.from_numpy(index), torch.from_numpy(weight)


def _down_band(in_size: int, out_size: int, rows: range) -> Band:
    """Rows ``rows`` of the antialiased bilinear downscale ``in_size -> out_size``, with PyTorch's weights."""
    scale = in_size / out_size
    support, inv = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    spans = []
    for i in rows:
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv))
        spans.append((lo, taps / taps.sum() if taps.sum() else taps))
    return _band(spans)


def _up_band(in_size: int, out_size: int, rows: range) -> Band:
    """Rows ``rows`` of the bilinear upscale ``in_size -> out_size`` (align_corners=False, as PyTorch)."""
    scale = in_size / out_size
    spans = []
    for i in rows:
        real = max(scale * (i + 0.5) - 0.5, 0.0)
        lo = min(math.floor(real), in_size - 1)
        frac = min(max(real - lo, 0.0), 1.0)
        spans.append((lo, np.array([1.0 - frac, frac]) if lo < in_size - 1 else np.array([1.0])))
    return _band(spans)


def _apply(band: Band, values: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Resample the rows of ``values`` (``...,n,W``); band indices are ``offset`` ahead of its row numbers."""
    index, weight = band
    weight = weight.to(values.device, values.dtype)
    index = (index - offset).to(values.device)
    out = values.index_select(-2, index[:, 0]) * weight[:, :1]
    for k in range(1, index.shape[1]):
        out.add_(values.index_select(-2, index[:, k]) * weight[:, k : k + 1])
    return out


def _apply_2d(rows: Band, columns: Band, values: torch.Tensor, row0: int, column0: int) -> torch.Tensor:
    """Resample rows, then columns (as rows of the transposed values: contiguous gathers)."""
    by_rows = _apply(rows, values, row0)
    return _apply(columns, by_rows.transpose(-1, -2).contiguous(), column0).transpose(-1, -2)


def windowed_resize(photo: torch.Tensor, scale: float, where: FaceWindow) -> torch.Tensor:
    """The window of ``Transform("resize", scale)`` applied to the face's frame of ``photo`` (down, back up)."""
    fh, fw = where.frame_hw
    small_h, small_w = max(8, round(fh * scale)), max(8, round(fw * scale))
    fy, fx = where.frame[0], where.frame[2]
    up_y = _up_band(small_h, fh, range(where.window[0] - fy, where.window[1] - fy))
    up_x = _up_band(small_w, fw, range(where.window[2] - fx, where.window[3] - fx))
    sy0, sy1 = int(up_y[0].min()), int(up_y[0].max()) + 1  # the small image's rows and columns read
    sx0, sx1 = int(up_x[0].min()), int(up_x[0].max()) + 1
    down_y, down_x = _down_band(fh, small_h, range(sy0, sy1)), _down_band(fw, small_w, range(sx0, sx1))
    y0, y1 = int(down_y[0].min()), int(down_y[0].max()) + 1  # the frame's rows and columns read
    x0, x1 = int(down_x[0].min()), int(down_x[0].max()) + 1
    source = photo[..., fy + y0 : fy + y1, fx + x0 : fx + x1]
    small = _apply_2d(down_y, down_x, source, y0, x0)
    return _apply_2d(up_y, up_x, small, sy0, sx0).contiguous()
