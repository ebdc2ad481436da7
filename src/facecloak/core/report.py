"""``ProtectionReport``: how far a protected photo's match rate fell, measured on held-out models only.

For each face and each evaluator (a zoo model that is *not* in the attack ensemble, nor of the same
family), the cosine similarity between the clean face and the protected face, after each simulated
upload degradation, is compared with the evaluator's LFW thresholds at FAR 1e-3 and 1e-2. The
"before" column is the clean photo put through the same degradation: what a recogniser would match
without protection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image, ImageDraw

from .attack import face_crops, face_region_bounds
from .detect import Face
from .device import select_device
from .perceptual import NOT_MEASURED, LPIPSMeasure, lpips_available
from .quality import dssim, psnr, ssim
from .transforms import Transform, evaluation_transforms
from .zoo.manifest import load_manifest
from .zoo.model import FaceModel

LIMITATIONS = (
    "Protection is measured against the bundled held-out recognisers only. It does not remove unprotected "
    "photos of you that are already online, does not stop people from recognising you, and cannot promise "
    "anything about future recognition models or systems trained on your protected photos."
)

RESIZE_SIDES = (1080, 720)


@dataclass(frozen=True)
class Cell:
    evaluator: str
    transform: str
    similarity_before: float  # degraded clean photo vs clean photo
    similarity_after: float  # degraded protected photo vs clean photo
    threshold_far_1e3: float
    threshold_far_1e2: float

    @property
    def matched_before(self) -> bool:
        return self.similarity_before >= self.threshold_far_1e3

    @property
    def matched_after(self) -> bool:
        return self.similarity_after >= self.threshold_far_1e3

    @property
    def matched_after_loose(self) -> bool:
        return self.similarity_after >= self.threshold_far_1e2

    @property
    def margin_after(self) -> float:
        """How far above (positive) or below the FAR 1e-3 threshold the protected face scores."""
        return self.similarity_after - self.threshold_far_1e3


@dataclass(frozen=True)
class ReferenceSimilarity:
    """Protected face vs another clean photo of the same person (the scraper's real threat)."""

    evaluator: str
    reference: int
    similarity_before: float
    similarity_after: float
    threshold_far_1e3: float


FaceEmbeddings = dict[str, torch.Tensor]  # evaluator name -> clean embedding of one face


@dataclass
class FaceReport:
    face: Face
    cells: list[Cell]
    references: list[ReferenceSimilarity] = field(default_factory=list)
    face_dssim: float = 0.0
    clean_embeddings: FaceEmbeddings = field(default_factory=dict, repr=False)  # not serialised

    @property
    def linked_after(self) -> int:
        """Other photos of this person that a held-out model still links the protected face to."""
        return len({r.reference for r in self.references if r.similarity_after >= r.threshold_far_1e3})


@dataclass
class ProtectionReport:
    evaluators: list[str]
    ensemble: list[str]
    transforms: list[str]
    faces: list[FaceReport]
    quality: dict[str, float | None]

    @property
    def cells(self) -> list[Cell]:
        return [c for f in self.faces for c in f.cells]

    @property
    def match_rate_before(self) -> float:
        cells = self.cells
        return sum(c.matched_before for c in cells) / len(cells) if cells else 0.0

    @property
    def match_rate_after(self) -> float:
        cells = self.cells
        return sum(c.matched_after for c in cells) / len(cells) if cells else 0.0

    @property
    def worst_after(self) -> Cell | None:
        """The cell where the protected face is closest to (or furthest above) its match threshold."""
        cells = self.cells
        return max(cells, key=lambda c: c.margin_after) if cells else None

    @property
    def summary(self) -> str:
        return self._matches_summary() + self._links_summary()

    def _links_summary(self) -> str:
        others = {(i, r.reference) for i, f in enumerate(self.faces) for r in f.references}
        if not others:
            return ""
        linked = sum(f.linked_after for f in self.faces)
        return f" Linked by a held-out recogniser to {linked} of {len(others)} other photos of this person."

    def _matches_summary(self) -> str:
        if not self.faces:
            return "No face was protected in this photo."
        n = len(self.evaluators)
        still = {c.evaluator for c in self.cells if c.transform == "none" and c.matched_after}
        any_degraded = {c.evaluator for c in self.cells if c.transform != "none" and c.matched_after}
        if not still and not any_degraded:
            return f"Not matched by {n} of {n} held-out recognisers, also after JPEG, blur and resizing."
        if not still:
            worst = self.worst_after
            return (
                f"Not matched by {n} of {n} held-out recognisers as posted, but {len(any_degraded)} of them "
                f"match again after some degradations (worst: {worst.evaluator} after {worst.transform})."
            )
        return (
            f"Still matched by {len(still)} of {n} held-out recognisers ({', '.join(sorted(still))}): "
            "this photo is not protected against them; try a stronger preset."
        )

    def to_dict(self) -> dict:
        return {
            "evaluators": self.evaluators,
            "ensemble": self.ensemble,
            "transforms": self.transforms,
            "quality": self.quality,
            "match_rate_before": self.match_rate_before,
            "match_rate_after": self.match_rate_after,
            "summary": self.summary,
            "faces": [
                {
                    "face": f.face.to_dict(),
                    "face_dssim": f.face_dssim,
                    "cells": [asdict(c) for c in f.cells],
                    "references": [asdict(r) for r in f.references],
                }
                for f in self.faces
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> ProtectionReport:
        faces = [
            FaceReport(
                face=Face.from_dict(f["face"]),
                cells=[Cell(**c) for c in f["cells"]],
                references=[ReferenceSimilarity(**r) for r in f.get("references", [])],
                face_dssim=f.get("face_dssim", 0.0),
            )
            for f in data["faces"]
        ]
        return cls(data["evaluators"], data["ensemble"], data["transforms"], faces, data["quality"])


def report_transforms(photo_hw: tuple[int, int]) -> list[Transform]:
    """The report's grid: blurs, JPEG and resizes to 1080/720 px long side (only those that shrink the photo)."""
    grid = evaluation_transforms()
    long_side = max(photo_hw)
    grid += [Transform("resize", scale=side / long_side) for side in RESIZE_SIDES if side < long_side]
    return grid


def _transform_label(t: Transform, photo_hw: tuple[int, int]) -> str:
    if t.kind == "resize":
        return f"resize {round(max(photo_hw) * t.scale)}px"
    return t.name


def degraded_embeddings(model: FaceModel, photo: torch.Tensor, face: Face, transforms: list[Transform]) -> torch.Tensor:
    """Embeddings ``T,D`` of one face after each transform, applied to the face's photo region.

    Resizing the region by the photo's factor is, locally, the same as resizing the whole photo; blurs
    and JPEG act on photo pixels as an upload pipeline would.
    """
    height, width = photo.shape[-2:]
    y0, y1, x0, x1 = face_region_bounds(face, height, width, margin=1.0)
    region = photo[..., y0:y1, x0:x1]
    shifted = Face(
        box=(face.box[0] - x0, face.box[1] - y0, face.box[2] - x0, face.box[3] - y0),
        score=face.score,
        landmarks=tuple((x - x0, y - y0) for x, y in face.landmarks),
    )
    crops = [model.aligner(t(region, differentiable=False), [shifted]) for t in transforms]
    return model(torch.cat(crops))


class ProtectionEvaluator:
    """Measures protection on held-out evaluators; refuses any model of the ensemble's families."""

    def __init__(self, evaluators: Sequence[str] | None = None, device: str = "auto") -> None:
        from .protect import default_evaluators
        from .zoo.registry import cache_status, load_model

        manifest = load_manifest()
        names = list(evaluators or default_evaluators())
        self.device = select_device(device)
        self.models: list[FaceModel] = []
        for name in names:
            if not cache_status(manifest[name]).ready:
                continue  # a missing evaluator is reported by name, never silently replaced
            if manifest[name].verification is None:
                raise ValueError(f"{name} has no measured thresholds: run 'facecloak bench lfw --write-manifest'")
            self.models.append(load_model(name, self.device))
        self.missing = [n for n in names if n not in {m.name for m in self.models}]
        self._lpips: LPIPSMeasure | None = None  # loaded once, on the first report that can use it

    def _lpips_measure(self) -> LPIPSMeasure | None:
        if self._lpips is None and lpips_available():
            self._lpips = LPIPSMeasure(self.device)
        return self._lpips

    @torch.no_grad()
    def embed_face(self, photo: torch.Tensor, face: Face) -> FaceEmbeddings:
        """One face's embedding on every evaluator (to compare later photos of an album against)."""
        photo = photo.to(self.device)
        return {m.name: m(m.aligner(photo, [face]))[0] for m in self.models}

    def same_person(self, a: FaceEmbeddings, b: FaceEmbeddings) -> bool:
        """Most evaluators match the two faces at FAR 1e-3: grouping an album by clean-embedding similarity."""
        manifest = load_manifest()
        votes = [float(a[name] @ b[name]) >= manifest[name].verification.threshold_far_1e3 for name in a if name in b]
        return bool(votes) and sum(votes) * 2 > len(votes)

    @torch.no_grad()
    def report(
        self,
        clean: torch.Tensor,
        protected: torch.Tensor,
        faces: Sequence[Face],
        ensemble: Sequence[str],
        references: Sequence[torch.Tensor] | None = None,
        reference_faces: Sequence[Face] | None = None,
        album: Sequence[FaceEmbeddings] = (),
    ) -> ProtectionReport:
        """The report of ``protected`` against ``clean``.

        ``references`` (with ``reference_faces``) are other clean photos of the same person; ``album``
        holds clean embeddings of faces from other photos (``embed_face``), of which those that the
        evaluators take for the same person are compared too: the scraper's real threat is linking the new
        photo to older ones.
        """
        from .protect import check_disjoint

        check_disjoint(list(ensemble), [m.name for m in self.models])
        manifest = load_manifest()
        clean = clean.to(self.device)
        protected = protected.to(self.device)
        hw = (clean.shape[-2], clean.shape[-1])
        transforms = report_transforms(hw)
        labels = [_transform_label(t, hw) for t in transforms]
        given = [
            self.embed_face(ref, ref_face)
            for ref, ref_face in zip(references or [], reference_faces or [], strict=False)
        ]
        face_reports = []
        measure = self._lpips_measure() if faces else None
        face_lpips: list[float] = []
        for face in faces:
            anchors = self.embed_face(clean, face)
            others = given + [entry for entry in album if self.same_person(entry, anchors)]
            cells, refs = [], []
            for model in self.models:
                v = manifest[model.name].verification
                anchor = anchors[model.name]
                before = degraded_embeddings(model, clean, face, transforms) @ anchor
                after = degraded_embeddings(model, protected, face, transforms) @ anchor
                cells += [
                    Cell(model.name, label, float(b), float(a), v.threshold_far_1e3, v.threshold_far_1e2)
                    for label, b, a in zip(labels, before, after, strict=True)
                ]
                protected_emb = model(model.aligner(protected, [face]))[0]
                refs += [
                    ReferenceSimilarity(
                        model.name, i, float(other[model.name] @ anchor), float(other[model.name] @ protected_emb),
                        v.threshold_far_1e3,
                    )
                    for i, other in enumerate(others)
                ]  # fmt: skip
            face_protected, face_clean = face_crops(face, protected, clean)
            face_d = float(dssim(face_protected, face_clean)[0])
            if measure is not None:
                face_lpips.append(float(measure(face_protected, face_clean)[0]))
            face_reports.append(FaceReport(face, cells, refs, face_d, anchors))
        quality = {
            "ssim": float(ssim(protected, clean)[0]),
            "psnr": float(psnr(protected, clean)[0]),
            "face_dssim_max": max((f.face_dssim for f in face_reports), default=0.0),
            "lpips": max(face_lpips) if face_lpips else None,
            "perceptual_measure": "DSSIM (structural, no network weights)"
            + (", LPIPS (alex) on the face" if face_lpips else f"; {NOT_MEASURED}"),
        }
        return ProtectionReport([m.name for m in self.models], list(ensemble), labels, face_reports, quality)


# -- pictures for people ------------------------------------------------------------------------------


def _colour(margin: float) -> tuple[int, int, int]:
    """Green well below the threshold, amber near it, red above (still matched)."""
    t = max(-1.0, min(1.0, margin / 0.25))
    if t >= 0:
        return (200, int(90 - 60 * t), 60)
    return (int(230 + 25 * t), int(170 - 30 * t), 60) if t > -0.4 else (60, int(150 - 30 * t), 90)


def render_heatmap(report: ProtectionReport, cell: int = 26) -> Image.Image:
    """Evaluator x transform grid of the first face: each cell coloured by margin to the FAR 1e-3 threshold."""
    if not report.faces:
        return Image.new("RGB", (320, 40), (40, 40, 40))
    cells = report.faces[0].cells
    rows, cols = report.evaluators, report.transforms
    left, top = 150, 110
    img = Image.new("RGB", (left + cell * len(cols) + 10, top + cell * len(rows) + 30), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    by_key = {(c.evaluator, c.transform): c for c in cells}
    for j, label in enumerate(cols):
        x = left + j * cell + cell // 2
        text = Image.new("RGBA", (top - 6, 14), (0, 0, 0, 0))
        ImageDraw.Draw(text).text((0, 0), label, fill=(30, 30, 30))
        rotated = text.rotate(90, expand=True)
        img.paste(rotated, (x - 7, 4), rotated)
    for i, name in enumerate(rows):
        y = top + i * cell
        draw.text((6, y + cell // 2 - 6), name, fill=(30, 30, 30))
        for j, label in enumerate(cols):
            c = by_key.get((name, label))
            if c is None:
                continue
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=_colour(c.margin_after))
            if c.matched_after:
                draw.text((x + cell // 2 - 3, y + cell // 2 - 6), "x", fill=(255, 255, 255))
    draw.text((6, top + cell * len(rows) + 8), "x = still matched at FAR 1e-3; green = not matched", fill=(60, 60, 60))
    return img


def render_similarity_bars(report: ProtectionReport, width: int = 420) -> Image.Image:
    """Per evaluator, clean-vs-protected similarity (no degradation) against its threshold."""
    rows = [c for c in (report.faces[0].cells if report.faces else []) if c.transform == "none"]
    bar_h, left = 22, 150
    img = Image.new("RGB", (width, 30 + len(rows) * (bar_h * 2 + 10)), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    scale = width - left - 20

    def x_of(v: float) -> int:
        return left + int(max(0.0, min(1.0, v)) * scale)

    draw.text((left, 6), "cosine similarity to the clean face (| = match threshold)", fill=(60, 60, 60))
    for i, c in enumerate(rows):
        y = 26 + i * (bar_h * 2 + 10)
        draw.text((6, y + bar_h // 2), c.evaluator, fill=(30, 30, 30))
        draw.rectangle([left, y, x_of(c.similarity_before), y + bar_h - 3], fill=(150, 150, 160))
        colour = (200, 60, 60) if c.matched_after else (60, 150, 90)
        draw.rectangle([left, y + bar_h, x_of(c.similarity_after), y + 2 * bar_h - 3], fill=colour)
        t = x_of(c.threshold_far_1e3)
        draw.line([t, y - 2, t, y + 2 * bar_h], fill=(20, 20, 20), width=2)
        draw.text((x_of(c.similarity_after) + 4, y + bar_h + 4), f"{c.similarity_after:.2f}", fill=(30, 30, 30))
    return img


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
