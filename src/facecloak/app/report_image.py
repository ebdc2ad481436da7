"""The report as one picture and as files next to the photo (PIL only: usable from any thread)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def headline(report: Any) -> str:
    before, after = report.match_rate_before, report.match_rate_after
    return f"Match rate on held-out recognisers: {before:.0%} before → {after:.0%} after"


def worst_case(report: Any) -> str:
    worst = report.worst_after
    if worst is None:
        return "Worst case: no face measured."
    verdict = "still matched" if worst.matched_after else "not matched"
    return (
        f"Worst case: {worst.evaluator} after {worst.transform}: similarity {worst.similarity_after:.2f} "
        f"(threshold {worst.threshold_far_1e3:.2f}, {verdict})"
    )


def quality_line(report: Any) -> str:
    q = report.quality or {}
    parts = []
    if q.get("ssim") is not None:
        parts.append(f"SSIM {q['ssim']:.4f}")
    if q.get("psnr") is not None:
        parts.append(f"PSNR {q['psnr']:.1f} dB")
    if q.get("face_dssim_max") is not None:
        parts.append(f"face DSSIM {q['face_dssim_max']:.4f}")
    if q.get("lpips") is not None:
        parts.append(f"LPIPS {q['lpips']:.3f}")
    return "Image quality: " + (", ".join(parts) if parts else "not measured")


def compose_report_image(report: Any, images: dict[str, np.ndarray], limitations: str = "") -> Image.Image:
    """Headline, worst case, quality, heatmap, bars and the limitations line stacked on a white page."""
    lines = [headline(report), worst_case(report), quality_line(report), *textwrap.wrap(report.summary, 100)]
    pictures = [Image.fromarray(images[k]) for k in ("heatmap", "bars") if k in images]
    foot = textwrap.wrap(limitations, 110) if limitations else []
    width = max([820, *(p.width + 40 for p in pictures)])
    line_h = 18
    height = 20 + line_h * len(lines) + 10 + sum(p.height + 14 for p in pictures) + line_h * len(foot) + 20
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    y = 20
    for line in lines:
        draw.text((20, y), line, fill=(20, 20, 20))
        y += line_h
    y += 10
    for picture in pictures:
        page.paste(picture, (20, y))
        y += picture.height + 14
    for line in foot:
        draw.text((20, y), line, fill=(90, 90, 90))
        y += line_h
    return page


def report_paths(output: Path) -> tuple[Path, Path]:
    """``photo_cloaked.report.json`` and ``.report.png`` next to a protected photo."""
    return output.with_name(output.stem + ".report.json"), output.with_name(output.stem + ".report.png")


def save_report_files(report: Any, images: dict[str, np.ndarray], output: Path) -> tuple[Path, Path]:
    try:
        from facecloak.core.report import LIMITATIONS
    except ImportError:
        LIMITATIONS = ""
    from facecloak.core.export import TEMP_MARK
    from facecloak.core.files import replace_atomically

    json_path, png_path = report_paths(output)
    text = report.to_json()
    page = compose_report_image(report, images, LIMITATIONS)
    # each file appears whole or not at all, like the protected photo itself
    replace_atomically(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"), prefix=TEMP_MARK)
    replace_atomically(png_path, lambda tmp: page.save(tmp, format="PNG"), prefix=TEMP_MARK)
    return json_path, png_path
