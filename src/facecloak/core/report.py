"""``ProtectionReport``: how far a protected photo's match rate fell, measured on held-out models only.

Held-out evaluators are zoo models that are *not* in the attack ensemble, nor of the same family. Each face
is measured under three threat models (:data:`THREAT_MODELS`), after each simulated upload degradation
(:mod:`.report_views`):

- **Search**: someone holding a clean photo of you searches a face-search engine's gallery where the protected
  photo sits among N other people's faces. Per evaluator, the largest gallery (N = 10^3..10^6) in which the
  protected photo would still be found: its similarity to a clean photo of you clears the threshold at which one
  stranger in N matches (thresholds: :mod:`.search`).
- **Verification**: someone holding another clean photo of you asks "same person?" at FAR 1e-3.
- **Own original**: the worst case, someone holding this very photo unprotected; never the headline.

Search and Verification are *measured* against the clean versions of other photos of the same person when a
batch or album holds them (``album``, ``references``), and *estimated* for a lone photo (its similarity to its
own original times the typical similarity of two photos of one person, :func:`lone_photo_score`).

JSON (``to_dict``): ``headline`` (the worst held-out evaluator under Search and Verification), ``threat_models``
(each threat's plain sentence), ``search_thresholds`` (per evaluator: the thresholds used and how many impostor
pairs lie above each), per face ``threats`` (one :class:`ThreatCell` per threat and evaluator), ``cells`` (the
Own original grid: evaluator x view, as before), ``references`` (other photos, as before); ``quality``:
``face_dssim_max`` the cloak's own change (protected face vs the original encoded the way the export was,
``reference_encoding`` says which), ``export_dssim_max`` the export's re-encoding loss alone (original face vs
that re-encoded original; None when there was no export), ``ssim``/``psnr`` of the whole photo against the same
reference.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from PIL import Image, ImageDraw, ImageFont

from .attack import CloakCancelled, face_crops, face_region_bounds
from .detect import Face
from .device import select_device
from .perceptual import NOT_MEASURED, LPIPSMeasure, lpips_available
from .quality import dssim, psnr, ssim_map
from .report_views import (
    DEFAULT_VIEWS,
    RESIZE_SIDES,
    degrade,
    face_window,
    report_transforms,
    transform_label,
    window_of,
)
from .search import GALLERY_SIZES, SearchThresholds, largest_gallery_found, search_thresholds
from .transforms import Transform
from .zoo.manifest import load_manifest
from .zoo.model import FaceModel

__all__ = [
    "DEFAULT_VIEWS",
    "LIMITATIONS",
    "RESIZE_SIDES",
    "THREAT_MODELS",
    "Cell",
    "FaceReport",
    "ProtectionEvaluator",
    "ProtectionReport",
    "ReferenceSimilarity",
    "ThreatCell",
    "degraded_embeddings",
    "encode_like",
    "render_heatmap",
    "render_similarity_bars",
    "render_threats",
    "report_transforms",
    "wilson_interval",
]

LIMITATIONS = (
    "Protection is measured against the bundled held-out recognisers only. It does not remove unprotected "
    "photos of you that are already online, does not stop people from recognising you, and cannot promise "
    "anything about future recognition models or systems trained on your protected photos."
)

SEARCH, VERIFICATION, OWN_ORIGINAL = "search", "verification", "own original"
THREAT_MODELS = {
    SEARCH: "Search: someone with a clean photo of you searches a face-search engine where this photo sits among "
    "N other people's faces.",
    VERIFICATION: "Verification: someone with another clean photo of you asks a recogniser whether both show the "
    "same person.",
    OWN_ORIGINAL: "Own original (worst case): someone holding this very photo unprotected compares it with the "
    "protected copy.",
}
REPORT_CHUNK = 8  # crops per forward pass: a cancel is noticed within one pass (under a second on one core)


def _cancel_check(should_cancel: Callable[[], bool] | None) -> Callable[[], None]:
    def check() -> None:
        if should_cancel is not None and should_cancel():
            raise CloakCancelled("the report was cancelled")

    return check


@dataclass(frozen=True)
class Cell:
    """Own original: the protected face after one view vs the clean face of the same photo."""

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
    similarity_before: float  # the clean photo as posted vs the other photo
    similarity_after: float  # the protected photo as posted vs the other photo
    threshold_far_1e3: float
    similarity_after_worst: float | None = None  # the highest over the report's views
    worst_transform: str = ""


@dataclass(frozen=True)
class ThreatCell:
    """One evaluator's answer for one face under one threat model."""

    threat: str  # SEARCH, VERIFICATION or OWN_ORIGINAL
    evaluator: str
    basis: str  # "album" (measured on other photos), "estimate" (lone photo) or "original"
    score: float  # the similarity the verdict rests on: the highest over views (and other photos)
    transform: str  # the view where it is highest
    threshold: float  # the evaluator's FAR 1e-3 threshold
    matched: bool  # verification / own original: score >= threshold; search: found among 1,000 faces
    score_before: float  # the same with the photo unprotected
    found_up_to: int = 0  # search: the largest gallery size (1e3..1e6) that still finds the photo; 0 = none

    @property
    def margin(self) -> float:
        return self.score - self.threshold


FaceEmbeddings = dict[str, torch.Tensor]  # evaluator name -> clean embedding of one face


@dataclass
class FaceReport:
    face: Face
    cells: list[Cell]
    references: list[ReferenceSimilarity] = field(default_factory=list)
    face_dssim: float = 0.0  # protected face vs the original encoded like the export
    clean_embeddings: FaceEmbeddings = field(default_factory=dict, repr=False)  # not serialised
    threats: list[ThreatCell] = field(default_factory=list)
    export_dssim: float | None = None  # the original face vs that re-encoded original: the export's own loss
    others: int = 0  # other clean photos of this person measured against

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
    quality: dict[str, float | str | None]
    search_thresholds: dict[str, dict] = field(default_factory=dict)  # evaluator -> SearchThresholds.to_dict()
    # the effort that protected the photo: {"steps": steps the attack ran, "device": where}; empty when unknown
    # (a copy measured by `facecloak report`, or protected by an earlier run)
    attack: dict[str, int | str] = field(default_factory=dict)

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
        """Own original: the cell where the protected face is closest to (or furthest above) its threshold."""
        cells = self.cells
        return max(cells, key=lambda c: c.margin_after) if cells else None

    def threat_cells(self, threat: str) -> list[ThreatCell]:
        return [t for f in self.faces for t in f.threats if t.threat == threat]

    def worst(self, threat: str) -> ThreatCell | None:
        """The held-out evaluator (and face) where protection is weakest under ``threat``."""
        cells = self.threat_cells(threat)
        if threat == SEARCH:
            return max(cells, key=lambda t: (t.found_up_to, t.margin), default=None)
        return max(cells, key=lambda t: t.margin, default=None)

    @property
    def basis(self) -> str:
        """ "album" when Search and Verification were measured on other photos of the person, else "estimate"."""
        return "album" if any(t.basis == "album" for t in self.threat_cells(VERIFICATION)) else "estimate"

    @property
    def headline(self) -> str:
        """The worst held-out evaluator under Search and Verification, in plain words."""
        if not self.faces:
            return "No face was protected in this photo."
        if not self.threat_cells(SEARCH):
            return "Search and Verification not estimated: no measured thresholds for the held-out recognisers."
        return f"{search_sentence(self)} {verification_sentence(self)}"

    @property
    def summary(self) -> str:
        if not self.faces:
            return "No face was protected in this photo."
        return f"{self.headline} {basis_sentence(self)} {own_original_sentence(self)}"

    def to_dict(self) -> dict:
        return {
            "headline": self.headline,
            "threat_models": THREAT_MODELS,
            "basis": self.basis,
            "evaluators": self.evaluators,
            "ensemble": self.ensemble,
            "attack": self.attack,
            "transforms": self.transforms,
            "quality": self.quality,
            "match_rate_before": self.match_rate_before,
            "match_rate_after": self.match_rate_after,
            "summary": self.summary,
            "search_thresholds": self.search_thresholds,
            "faces": [
                {
                    "face": f.face.to_dict(),
                    "face_dssim": f.face_dssim,
                    "export_dssim": f.export_dssim,
                    "others": f.others,
                    "threats": [asdict(t) for t in f.threats],
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
                threats=[ThreatCell(**t) for t in f.get("threats", [])],
                export_dssim=f.get("export_dssim"),
                others=f.get("others", 0),
            )
            for f in data["faces"]
        ]
        thresholds = data.get("search_thresholds", {})
        return cls(
            data["evaluators"],
            data["ensemble"],
            data["transforms"],
            faces,
            data["quality"],
            thresholds,
            attack=data.get("attack", {}),
        )


# -- the sentences people read ---------------------------------------------------------------------------------


def _after(t: ThreatCell) -> str:
    return "" if t.transform == "none" else f" after {t.transform}"


def search_verdict(report: ProtectionReport) -> str:
    """How the worst held-out recogniser fares under Search (a sentence without the threat's name)."""
    cells = report.threat_cells(SEARCH)
    worst = report.worst(SEARCH)
    n = len({t.evaluator for t in cells})
    if worst is None or worst.found_up_to == 0:
        return f"None of {n} held-out recognisers would find this photo among 1,000 other faces."
    finding = len({t.evaluator for t in cells if t.matched})
    text = f"{finding} of {n} held-out recognisers would still find this photo among 1,000 other faces"
    if worst.found_up_to > GALLERY_SIZES[0]:
        return f"{text}; the worst, {worst.evaluator}{_after(worst)}, even among {worst.found_up_to:,}."
    return f"{text} (worst: {worst.evaluator}{_after(worst)})."


def verification_verdict(report: ProtectionReport) -> str:
    cells = report.threat_cells(VERIFICATION)
    worst = report.worst(VERIFICATION)
    n = len({t.evaluator for t in cells})
    linked = len({t.evaluator for t in cells if t.matched})
    if worst is None or linked == 0:
        return f"None of {n} held-out recognisers links it to another photo of you."
    return (
        f"{linked} of {n} held-out recognisers still link it to another photo of you (worst: "
        f"{worst.evaluator}{_after(worst)}, similarity {worst.score:.2f}, threshold {worst.threshold:.2f})."
    )


def own_original_verdict(report: ProtectionReport) -> str:
    cells = report.threat_cells(OWN_ORIGINAL)
    n = len({t.evaluator for t in cells})
    matched = len({t.evaluator for t in cells if t.matched})
    worst = report.worst(OWN_ORIGINAL)
    if worst is None:
        return ""
    if matched == 0:
        return f"Not matched by any of {n} held-out recognisers, after every degradation measured."
    return f"Matched by {matched} of {n} held-out recognisers (worst: {worst.evaluator}{_after(worst)})."


def search_sentence(report: ProtectionReport) -> str:
    return f"Search: {search_verdict(report)}"


def verification_sentence(report: ProtectionReport) -> str:
    return f"Verification: {verification_verdict(report)}"


def own_original_sentence(report: ProtectionReport) -> str:
    verdict = own_original_verdict(report)
    return f"Worst case (own original): {verdict[:1].lower()}{verdict[1:]}" if verdict else ""


def effort_sentence(report: ProtectionReport) -> str:
    """What protected the photo, e.g. ``Protected in 30 steps on NVIDIA H200 (CUDA, 150 GB).``; empty when unknown."""
    steps, device = report.attack.get("steps"), report.attack.get("device")
    if not steps:
        return ""
    return f"Protected in {steps} step{'' if steps == 1 else 's'}" + (f" on {device}." if device else ".")


def basis_sentence(report: ProtectionReport) -> str:
    if report.basis == "album":
        others = max(f.others for f in report.faces)
        return f"Measured against {others} other photo(s) of this person."
    return (
        "Estimated for a lone photo: its similarity to its own original times the typical similarity of two "
        "photos of one person on LFW; give other photos of this person to measure it."
    )


# -- measuring -------------------------------------------------------------------------------------------------


def lone_photo_score(own: float, genuine_median: float) -> float:
    """Similarity to *another* clean photo of the person, estimated from a lone photo.

    On the unit sphere, if the protective change is unrelated to how two photos of a person differ, the cosine
    to another photo is about the product of the cosine to the photo's own original and the typical cosine of
    two photos of one person (``genuine_median``).
    """
    return own * genuine_median


def degraded_embeddings(model: FaceModel, photo: torch.Tensor, face: Face, transforms: list[Transform]) -> torch.Tensor:
    """Embeddings ``T,D`` of one face after each transform, applied to the face's photo region.

    Resizing the region by the photo's factor is, locally, the same as resizing the whole photo; blurs
    and JPEG act on photo pixels as an upload pipeline would. (The report computes the same numbers once per
    transform for all evaluators: :mod:`.report_views`.)
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


def encode_like(photo: torch.Tensor, written: Path) -> tuple[torch.Tensor, str] | None:
    """``photo`` encoded the way the file ``written`` was (JPEG: its own quantisation tables and subsampling;
    lossless formats: 8-bit), decoded again, and how; None for formats whose encoder settings cannot be read.
    """
    from .image import tensor_to_uint8, uint8_to_tensor

    try:
        with Image.open(written) as image:
            fmt, mode = image.format, image.mode
            qtables = getattr(image, "quantization", None)
            sampling = _jpeg_sampling(image) if fmt == "JPEG" else -1
    except OSError:
        return None
    pixels = Image.fromarray(tensor_to_uint8(photo.detach().cpu()))
    if mode in ("L", "LA", "I;16", "I"):
        pixels = pixels.convert("L")
    if fmt == "JPEG" and qtables:
        buffer = io.BytesIO()
        pixels.save(buffer, format="JPEG", qtables=qtables, subsampling=sampling)
        decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        how = f"JPEG with the export's quantisation tables, subsampling {_SAMPLING_NAMES.get(sampling, sampling)}"
    elif fmt in ("PNG", "TIFF", "BMP"):
        decoded = pixels.convert("RGB")
        how = f"{fmt} (lossless: 8-bit)"
    else:
        return None
    return uint8_to_tensor(np.array(decoded)).to(photo.device), how


_SAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def _jpeg_sampling(image: Image.Image) -> int:
    from PIL import JpegImagePlugin

    sampling = JpegImagePlugin.get_sampling(image)
    return sampling if sampling in _SAMPLING_NAMES else 2


def photo_ssim(
    a: torch.Tensor, b: torch.Tensor, window: int = 11, check: Callable[[], None] | None = None, rows: int = 512
) -> float:
    """SSIM of two photos (luminance, as :func:`quality.ssim`), computed only where they differ.

    Wherever a pixel's window holds identical pixels in both photos its SSIM is exactly 1, so the map is needed
    only around the differing pixels; on a 12 MP photo with a cloaked face that is a small part of it. Computed
    ``rows`` rows at a time, calling ``check`` before each strip (a cancel is noticed on the largest photos too).
    """
    differs = (a != b).any(dim=1)[0]
    if not bool(differs.any()):
        return 1.0
    changed_rows, changed_cols = differs.any(dim=1).nonzero(), differs.any(dim=0).nonzero()
    h, w = differs.shape
    r = window // 2
    # every pixel whose window touches a difference, and the pixels those windows read
    y0, y1 = max(0, int(changed_rows[0]) - r), min(h, int(changed_rows[-1]) + 1 + r)
    x0, x1 = max(0, int(changed_cols[0]) - r), min(w, int(changed_cols[-1]) + 1 + r)
    rx0, rx1 = max(0, x0 - r), min(w, x1 + r)
    total, counted = 0.0, 0
    for top in range(y0, y1, rows):
        if check is not None:
            check()
        bottom = min(y1, top + rows)
        ry0, ry1 = max(0, top - r), min(h, bottom + r)
        smap = ssim_map(*(rgb_to_grayscale(x[..., ry0:ry1, rx0:rx1]) for x in (a, b)), window)
        inner = smap[..., top - ry0 : bottom - ry0, x0 - rx0 : x1 - rx0]
        total += float(inner.double().sum())
        counted += inner.numel()
    return (total + (h * w - counted)) / (h * w)


class ProtectionEvaluator:
    """Measures protection on held-out evaluators; refuses any model of the ensemble's families."""

    def __init__(self, evaluators: Sequence[str] | None = None, device: str = "auto") -> None:
        from .zoo.manifest import Roles
        from .zoo.registry import cache_status, load_model

        manifest = load_manifest()
        names = list(evaluators or Roles.load().evaluators)
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

    def thresholds(self) -> dict[str, SearchThresholds]:
        """Each evaluator's Search thresholds (those it has)."""
        manifest = load_manifest()
        found = {
            m.name: search_thresholds(m.name, manifest[m.name].verification.threshold_far_1e3) for m in self.models
        }
        return {name: t for name, t in found.items() if t is not None}

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
        *,
        should_cancel: Callable[[], bool] | None = None,
        full_sweep: bool = False,
        export_file: Path | None = None,
    ) -> ProtectionReport:
        """The report of ``protected`` against ``clean``.

        ``references`` (with ``reference_faces``) are other clean photos of the same person; ``album`` holds
        clean embeddings of faces from other photos (``embed_face``), of which those that the evaluators take
        for the same person are compared too: Search and Verification are then measured on them, the realistic
        link, instead of estimated. ``full_sweep`` measures every view of the grid (:func:`report_transforms`)
        instead of :data:`DEFAULT_VIEWS`. ``export_file``: the file ``protected`` was read from; the original
        is encoded the same way for the face DSSIM, so the export's own re-encoding loss is counted apart.
        ``should_cancel`` is polled before each degradation and each forward pass (well under a second apart);
        when it returns True the report stops with :class:`~facecloak.core.attack.CloakCancelled`.
        """
        from .zoo.manifest import check_disjoint

        check_disjoint(list(ensemble), [m.name for m in self.models])
        check = _cancel_check(should_cancel)
        check()
        clean, protected = clean.to(self.device), protected.to(self.device)
        hw = (clean.shape[-2], clean.shape[-1])
        transforms = report_transforms(hw, full=full_sweep)
        labels = [transform_label(t, hw) for t in transforms]
        given = []
        for ref, ref_face in zip(references or [], reference_faces or [], strict=False):
            check()
            given.append(self.embed_face(ref, ref_face))
        check()
        encoded = encode_like(clean, export_file) if export_file is not None else None
        reference = encoded[0] if encoded else clean
        thresholds = self.thresholds()
        measure = self._lpips_measure() if faces else None
        face_reports, face_lpips = [], []
        for face in faces:
            anchors, views = self._face_embeddings(clean, protected, face, transforms, check)
            others = given + [entry for entry in album if self.same_person(entry, anchors)]
            face_reports.append(self._face_report(face, anchors, views, others, labels, thresholds))
            face_protected, face_reference, face_clean = face_crops(face, protected, reference, clean)
            check()
            face_reports[-1].face_dssim = float(dssim(face_protected, face_reference)[0])
            if encoded:
                check()
                face_reports[-1].export_dssim = float(dssim(face_reference, face_clean)[0])
            if measure is not None:
                face_lpips.append(float(measure(face_protected, face_reference)[0]))
        check()
        quality = _quality(protected, reference, face_reports, face_lpips, encoded[1] if encoded else None, check)
        tables = {name: t.to_dict() for name, t in thresholds.items()}
        return ProtectionReport([m.name for m in self.models], list(ensemble), labels, face_reports, quality, tables)

    def _face_embeddings(
        self, clean: torch.Tensor, protected: torch.Tensor, face: Face, transforms: list[Transform], check
    ) -> tuple[FaceEmbeddings, dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Clean anchors, and per evaluator the views' embeddings: (clean ``T,D``, protected ``T,D``, protected
        as posted on the whole photo ``D``). Each transform degrades the face's window once for every evaluator."""
        where = face_window(face, (clean.shape[-2], clean.shape[-1]), [m.aligner for m in self.models])
        windows = torch.cat([window_of(clean, where.window), window_of(protected, where.window)])
        degraded = []
        for t in transforms:  # each photo on its own: a cancel waits for one degradation of one window at most
            parts = []
            for i, photo in enumerate((clean, protected)):
                check()
                parts.append(degrade([photo], t, where, windows[i : i + 1]))
            degraded.append(torch.cat(parts))
        anchors, views = {}, {}
        sources = [(clean, face), (protected, face)]
        sources += [(view[i : i + 1], where.face) for i in (0, 1) for view in degraded]
        for model in self.models:
            emb = _embed(model, sources, check)
            n = len(transforms)
            anchors[model.name] = emb[0]
            views[model.name] = (emb[2 : 2 + n], emb[2 + n :], emb[1])
        return anchors, views

    def _face_report(
        self,
        face: Face,
        anchors: FaceEmbeddings,
        views: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        others: list[FaceEmbeddings],
        labels: list[str],
        thresholds: dict[str, SearchThresholds],
    ) -> FaceReport:
        manifest = load_manifest()
        cells, refs, threats = [], [], []
        for model in self.models:
            v = manifest[model.name].verification
            anchor = anchors[model.name]
            before, after, posted = views[model.name]
            own_before, own_after = before @ anchor, after @ anchor
            cells += [
                Cell(model.name, label, float(b), float(a), v.threshold_far_1e3, v.threshold_far_1e2)
                for label, b, a in zip(labels, own_before, own_after, strict=True)
            ]
            worst = int(own_after.argmax())
            threats.append(
                ThreatCell(
                    OWN_ORIGINAL, model.name, "original", float(own_after[worst]), labels[worst],
                    v.threshold_far_1e3, bool(own_after[worst] >= v.threshold_far_1e3), float(own_before.max()),
                )
            )  # fmt: skip
            if others:
                other = torch.stack([o[model.name] for o in others])  # R,D
                refs += _references(model.name, other, anchor, posted, after, labels, v.threshold_far_1e3)
                linked = _linked_scores(after @ other.T, before @ other.T, "album")
            else:
                linked = _lone_scores(own_after, own_before, thresholds.get(model.name))
            if linked is not None:
                threats += _link_threats(model.name, *linked, labels, v.threshold_far_1e3, thresholds.get(model.name))
        return FaceReport(face, cells, refs, 0.0, anchors, threats, None, len(others))


def _references(
    name: str,
    other: torch.Tensor,
    anchor: torch.Tensor,
    posted: torch.Tensor,
    after: torch.Tensor,
    labels: list[str],
    threshold: float,
) -> list[ReferenceSimilarity]:
    """The protected face (as posted, and its worst view) against each other clean photo ``other`` (``R,D``)."""
    link = after @ other.T  # T,R
    return [
        ReferenceSimilarity(
            name, i, float(other[i] @ anchor), float(other[i] @ posted), threshold,
            float(link[:, i].max()), labels[int(link[:, i].argmax())],
        )
        for i in range(len(other))
    ]  # fmt: skip


LinkScores = tuple[torch.Tensor, float, str]  # per view score (T), the unprotected score, basis


def _linked_scores(after: torch.Tensor, before: torch.Tensor, basis: str) -> LinkScores:
    """Per view, the protected face's best score against the other photos (``T,R``); the same unprotected."""
    return after.max(dim=1).values, float(before.max()), basis


def _lone_scores(
    own_after: torch.Tensor, own_before: torch.Tensor, table: SearchThresholds | None
) -> LinkScores | None:
    """A lone photo's scores against another photo of the person, estimated (None without a same-person median)."""
    if table is None or table.genuine_median is None:
        return None
    genuine = table.genuine_median
    return lone_photo_score(own_after, genuine), float(lone_photo_score(own_before.max(), genuine)), "estimate"


def _link_threats(
    name: str,
    per_view: torch.Tensor,
    before: float,
    basis: str,
    labels: list[str],
    threshold: float,
    table: SearchThresholds | None,
) -> list[ThreatCell]:
    """Verification and Search from the protected face's scores against other photos of the person (worst view)."""
    worst = int(per_view.argmax())
    score, label = float(per_view[worst]), labels[worst]
    cells = [ThreatCell(VERIFICATION, name, basis, score, label, threshold, score >= threshold, before)]
    if table is not None:
        found = largest_gallery_found(score, table.estimates)
        cells.append(ThreatCell(SEARCH, name, basis, score, label, threshold, found >= 1000, before, found))
    return cells


def _embed(model: FaceModel, sources: list[tuple[torch.Tensor, Face]], check: Callable[[], None]) -> torch.Tensor:
    """Embeddings of one face in each photo of ``sources``, aligned and run :data:`REPORT_CHUNK` at a time,
    checking for a cancel before each pass."""
    out = []
    for start in range(0, len(sources), REPORT_CHUNK):
        check()
        crops = [model.aligner(photo, [face]) for photo, face in sources[start : start + REPORT_CHUNK]]
        out.append(model(torch.cat(crops)))
    return torch.cat(out)


def _quality(
    protected: torch.Tensor,
    reference: torch.Tensor,
    faces: list[FaceReport],
    face_lpips: list[float],
    encoding: str | None,
    check: Callable[[], None] | None = None,
) -> dict[str, float | str | None]:
    exports = [f.export_dssim for f in faces if f.export_dssim is not None]
    return {
        "ssim": photo_ssim(protected, reference, check=check),
        "psnr": float(psnr(protected, reference)[0]),
        "face_dssim_max": max((f.face_dssim for f in faces), default=0.0),
        "export_dssim_max": max(exports) if exports else None,
        "reference_encoding": encoding or "none: measured against the original as loaded",
        "lpips": max(face_lpips) if face_lpips else None,
        "perceptual_measure": "DSSIM (structural, no network weights)"
        + (", LPIPS (alex) on the face" if face_lpips else f"; {NOT_MEASURED}"),
    }


# -- pictures for people ------------------------------------------------------------------------------
# Drawn with Pillow's built-in font at a size readable at the report panel's width; labels are ASCII only
# (the built-in font has no arrows or other symbols: they would show as boxes).

INK, MUTED, PAPER = (30, 30, 30), (90, 90, 90), (250, 250, 250)
RED, GREEN, AMBER, GREY = (200, 60, 60), (60, 150, 90), (230, 160, 60), (200, 200, 205)


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, entries: list[tuple[tuple[int, int, int], str]], font) -> int:
    """Colour swatches with their meaning on one line from ``(x, y)``; returns the line's height."""
    for colour, text in entries:
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=colour)
        draw.text((x + 20, y), text, fill=INK, font=font)
        x += 20 + _text_width(font, text) + 18
    return 22


def _colour(margin: float) -> tuple[int, int, int]:
    """Green well below the threshold, amber near it, red above (still matched)."""
    t = max(-1.0, min(1.0, margin / 0.25))
    if t >= 0:
        return (200, int(90 - 60 * t), 60)
    return (int(230 + 25 * t), int(170 - 30 * t), 60) if t > -0.4 else (60, int(150 - 30 * t), 90)


def render_heatmap(report: ProtectionReport, cell: int = 30) -> Image.Image:
    """Own original (worst case): evaluator x view grid of the first face, coloured by margin to FAR 1e-3."""
    if not report.faces:
        return Image.new("RGB", (320, 40), PAPER)
    font, small = _font(14), _font(12)
    cells = report.faces[0].cells
    rows, cols = report.evaluators, report.transforms
    left = 16 + max((_text_width(font, r) for r in rows), default=100)
    top = 34 + max((_text_width(small, c) for c in cols), default=60)
    width = max(left + cell * len(cols) + 16, 560)
    img = Image.new("RGB", (width, top + cell * len(rows) + 62), PAPER)
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), "Own original (worst case): each view vs this photo's original", fill=INK, font=font)
    by_key = {(c.evaluator, c.transform): c for c in cells}
    for j, label in enumerate(cols):
        x = left + j * cell + cell // 2
        text = Image.new("RGBA", (top - 34, 16), (0, 0, 0, 0))
        ImageDraw.Draw(text).text((0, 0), label, fill=INK, font=small)
        rotated = text.rotate(90, expand=True)
        img.paste(rotated, (x - 8, 30), rotated)
    for i, name in enumerate(rows):
        y = top + i * cell
        draw.text((8, y + cell // 2 - 8), name, fill=INK, font=font)
        for j, label in enumerate(cols):
            c = by_key.get((name, label))
            if c is None:
                continue
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=_colour(c.margin_after))
            if c.matched_after:
                draw.text((x + cell // 2 - 4, y + cell // 2 - 9), "x", fill=(255, 255, 255), font=font)
    y = top + cell * len(rows) + 10
    legend = [(_colour(-0.25), "not matched"), (_colour(-0.05), "near the threshold"), (_colour(0.1), "x matched")]
    y += _legend(draw, 8, y, legend, small)
    draw.text((8, y), "matched = similarity at or above the recogniser's FAR 1e-3 threshold", fill=MUTED, font=small)
    return img


def render_similarity_bars(report: ProtectionReport, width: int = 560) -> Image.Image:
    """Own original, as posted: per evaluator, similarity to the original before and after against its threshold."""
    rows = [c for c in (report.faces[0].cells if report.faces else []) if c.transform == "none"]
    font, small = _font(14), _font(12)
    bar_h = 18
    left = 16 + max((_text_width(font, c.evaluator) for c in rows), default=100)
    img = Image.new("RGB", (width, 58 + len(rows) * (bar_h * 2 + 14) + 26), PAPER)
    draw = ImageDraw.Draw(img)
    scale = width - left - 50

    def x_of(v: float) -> int:
        return left + int(max(0.0, min(1.0, v)) * scale)

    draw.text((8, 6), "Similarity to this photo's original (| = match threshold)", fill=INK, font=font)
    for i, c in enumerate(rows):
        y = 34 + i * (bar_h * 2 + 14)
        draw.text((8, y + bar_h // 2), c.evaluator, fill=INK, font=font)
        draw.rectangle([left, y, x_of(c.similarity_before), y + bar_h - 3], fill=GREY)
        colour = RED if c.matched_after else GREEN
        draw.rectangle([left, y + bar_h, x_of(c.similarity_after), y + 2 * bar_h - 3], fill=colour)
        t = x_of(c.threshold_far_1e3)
        draw.line([t, y - 2, t, y + 2 * bar_h], fill=INK, width=2)
        draw.text((x_of(c.similarity_after) + 4, y + bar_h), f"{c.similarity_after:.2f}", fill=INK, font=small)
    y = 34 + len(rows) * (bar_h * 2 + 14)
    _legend(draw, 8, y, [(GREY, "unprotected"), (GREEN, "protected, not matched"), (RED, "protected, matched")], small)
    return img


def render_threats(report: ProtectionReport, width: int = 560) -> Image.Image:
    """The three threat models per evaluator (worst face): Search by gallery size, Verification, Own original."""
    font, small = _font(14), _font(12)
    names = report.evaluators
    left = 16 + max((_text_width(font, n) for n in names), default=100)
    box, gap = 44, 6
    columns = [f"{n // 1000:,}k" if n < 1_000_000 else "1M" for n in GALLERY_SIZES] + ["verif.", "own"]
    width = max(width, left + len(columns) * (box + gap) + 16)
    img = Image.new("RGB", (width, 80 + len(names) * (box // 2 + 8) + 50), PAPER)
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), "Search: found among N faces | Verification | Own original", fill=INK, font=font)
    for j, label in enumerate(columns):
        draw.text((left + j * (box + gap) + 4, 32), label, fill=MUTED, font=small)
    for i, name in enumerate(names):
        y = 52 + i * (box // 2 + 8)
        draw.text((8, y + 2), name, fill=INK, font=font)
        verdicts = _search_verdicts(report, name)
        verdicts += [_linked(_worst_of(report, VERIFICATION, name)), _linked(_worst_of(report, OWN_ORIGINAL, name))]
        for j, verdict in enumerate(verdicts):
            x = left + j * (box + gap)
            colour = GREY if verdict is None else RED if verdict else GREEN
            draw.rectangle([x, y, x + box, y + box // 2], fill=colour)
    y = 52 + len(names) * (box // 2 + 8) + 6
    y += _legend(draw, 8, y, [(RED, "found / linked"), (GREEN, "not found"), (GREY, "not estimated")], small)
    basis = "measured on other photos of you" if report.basis == "album" else "estimated from this photo alone"
    draw.text((8, y), f"Search and Verification {basis}; worst view and face.", fill=MUTED, font=small)
    return img


def _worst_of(report: ProtectionReport, threat: str, evaluator: str) -> ThreatCell | None:
    cells = [t for t in report.threat_cells(threat) if t.evaluator == evaluator]
    return max(cells, key=lambda t: (t.found_up_to, t.margin), default=None)


def _search_verdicts(report: ProtectionReport, evaluator: str) -> list[bool | None]:
    """Per gallery size: found (True), not found (False), or not estimated (None: no threshold for that size)."""
    cell = _worst_of(report, SEARCH, evaluator)
    if cell is None:
        return [None] * len(GALLERY_SIZES)
    table = report.search_thresholds.get(evaluator, {}).get("estimates", [])
    known = {round(1 / e["far"]) for e in table if e.get("threshold") is not None}
    return [True if cell.found_up_to >= n else (False if n in known else None) for n in GALLERY_SIZES]


def _linked(cell: ThreatCell | None) -> bool | None:
    return None if cell is None else cell.matched


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
