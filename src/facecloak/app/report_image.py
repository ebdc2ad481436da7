"""The report as plain words, as one picture and as files next to the photo (PIL only: usable from any thread)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# What Pillow's built-in font cannot draw (it would show a box), in the words it can.
_ASCII = {"→": "->", "←": "<-", "…": "...", "×": "x", "≤": "<=", "≥": ">=", "—": "-", "–": "-", "’": "'", "“": '"'}
_ASCII["”"] = '"'

THREAT_TITLES = {"search": "Search", "verification": "Verification", "own original": "Own original (worst case)"}


def ascii_text(text: str) -> str:
    """``text`` with every character the built-in font lacks replaced by an ASCII spelling (else ``?``)."""
    out = "".join(_ASCII.get(ch, ch) for ch in text)
    return "".join(ch if ch.isascii() else "?" for ch in out)


def _has_threats(report: Any) -> bool:
    return bool(getattr(report, "faces", None)) and hasattr(report, "threat_cells")


def headline(report: Any) -> str:
    """The worst held-out recogniser under Search and Verification (the realistic threats), in plain words."""
    if _has_threats(report):
        return report.headline
    before, after = report.match_rate_before, report.match_rate_after
    return f"Match rate on held-out recognisers: {before:.0%} before → {after:.0%} after"


def short_headline(report: Any) -> str:
    """The headline in a few words for the panel: how many held-out recognisers find and link the photo."""
    if not _has_threats(report) or not report.threat_cells("search"):
        return headline(report)
    search, verification = report.threat_cells("search"), report.threat_cells("verification")
    n = len({t.evaluator for t in search})
    found = len({t.evaluator for t in search if t.matched})
    linked = len({t.evaluator for t in verification if t.matched})
    largest = max(t.found_up_to for t in search)
    reach = f" (one even among {largest:,})" if largest > 1000 else ""
    text = (
        f"found by a face search among 1,000 faces by {found} of {n} held-out recognisers{reach}; "
        f"linked to another photo of you by {linked} of {n}."
    )
    return f"Estimated: {text}" if report.basis == "estimate" else text[:1].upper() + text[1:]


def basis(report: Any) -> str:
    """What Search and Verification rest on (other photos of the person, or an estimate for a lone photo), and the
    effort that protected the photo."""
    from facecloak.core.report import basis_sentence, effort_sentence

    rests_on = basis_sentence(report) if _has_threats(report) else ""
    effort = effort_sentence(report) if hasattr(report, "attack") else ""
    return " ".join(filter(None, (rests_on, effort)))


def worst_case(report: Any) -> str:
    """Own original, the worst case, named: who still matches, and the match rate before and after."""
    worst = report.worst_after
    if worst is None:
        return "Worst case: no face measured."
    rates = f"match rate {report.match_rate_before:.0%} before → {report.match_rate_after:.0%} after"
    if _has_threats(report):
        from facecloak.core.report import own_original_sentence

        return f"{own_original_sentence(report)} Against its own original: {rates}."
    verdict = "still matched" if worst.matched_after else "not matched"
    return (
        f"Worst case: {worst.evaluator} after {worst.transform}: similarity {worst.similarity_after:.2f} "
        f"(threshold {worst.threshold_far_1e3:.2f}, {verdict}); {rates}"
    )


def threat_lines(report: Any) -> list[tuple[str, str]]:
    """(title, plain words) per threat model: what it is, and how the worst held-out recogniser fares."""
    if not _has_threats(report):
        return []
    from facecloak.core.report import (
        THREAT_MODELS,
        own_original_verdict,
        search_verdict,
        verification_verdict,
    )

    verdicts = {"search": search_verdict, "verification": verification_verdict, "own original": own_original_verdict}
    lines = []
    for threat, verdict in verdicts.items():
        if threat != "own original" and not report.threat_cells(threat):
            continue  # not measured nor estimated: the headline says so
        meaning = THREAT_MODELS[threat].split(": ", 1)[1]
        lines.append((THREAT_TITLES[threat], f"{meaning} {verdict(report)}"))
    return lines


def quality_line(report: Any) -> str:
    q = report.quality or {}
    parts = []
    if q.get("face_dssim_max") is not None:
        parts.append(f"face DSSIM {q['face_dssim_max']:.4f} (the protection's own change)")
    if q.get("export_dssim_max") is not None:
        parts.append(f"the saved file's own re-encoding: face DSSIM {q['export_dssim_max']:.4f}")
    if q.get("ssim") is not None:
        parts.append(f"SSIM {q['ssim']:.4f}")
    if q.get("psnr") is not None:
        parts.append(f"PSNR {q['psnr']:.1f} dB")
    if q.get("lpips") is not None:
        parts.append(f"LPIPS {q['lpips']:.3f}")
    return "Image quality: " + (", ".join(parts) if parts else "not measured")


def report_figures(report: Any, images: dict[str, np.ndarray], width: int) -> list[Image.Image]:
    """The report's figures drawn for ``width`` pixels: threat models, the Own original grid, the bars.

    Drawn from the report itself where the engine is at hand (readable at that width), else the pictures given.
    """
    try:
        from facecloak.core.report import render_heatmap, render_similarity_bars, render_threats
    except ImportError:
        return [Image.fromarray(images[k]) for k in ("heatmap", "bars") if k in images]
    figures = [render_threats(report, width)] if _has_threats(report) else []
    columns = max(1, len(getattr(report, "transforms", [])))
    cell = max(20, min(34, (width - 190) // columns))
    return [*figures, render_heatmap(report, cell), render_similarity_bars(report, width)]


def page_lines(report: Any, limitations: str = "") -> tuple[list[str], list[str]]:
    """The text of the report picture, ASCII only: the body lines and the foot (limitations)."""
    lines = [headline(report), basis(report)]
    for title, sentence in threat_lines(report):
        lines += textwrap.wrap(f"{title}: {sentence}", 100)
    lines.append(quality_line(report))
    lines = [ascii_text(line) for line in lines if line]
    foot = [ascii_text(line) for line in textwrap.wrap(limitations, 110)] if limitations else []
    return lines, foot


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def compose_report_image(report: Any, images: dict[str, np.ndarray], limitations: str = "") -> Image.Image:
    """Headline, threat models, quality, the figures and the limitations stacked on a white page."""
    width = 900
    body, foot = page_lines(report, limitations)
    wrapped = []
    for line in body[:1]:
        wrapped += textwrap.wrap(line, 80)  # the headline, in larger type
    pictures = report_figures(report, images, width - 40)
    width = max([width, *(p.width + 40 for p in pictures)])
    big, font, small = _font(18), _font(15), _font(13)
    height = 20 + 26 * len(wrapped) + 20 * (len(body) - 1) + 10 + sum(p.height + 14 for p in pictures)
    height += 18 * len(foot) + 20
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    y = 20
    for line in wrapped:
        draw.text((20, y), line, fill=(20, 20, 20), font=big)
        y += 26
    for line in body[1:]:
        draw.text((20, y), line, fill=(20, 20, 20), font=font)
        y += 20
    y += 10
    for picture in pictures:
        page.paste(picture.convert("RGB"), (20, y))
        y += picture.height + 14
    for line in foot:
        draw.text((20, y), line, fill=(90, 90, 90), font=small)
        y += 18
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
