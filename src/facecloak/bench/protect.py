"""``facecloak bench protect``: protection measured on a labelled photo set, held-out evaluators only.

Per identity (seeded split), one photo is protected (the gallery photo a user would post) and up to
``probes`` other photos stay clean (what an adversary already has). Threat models:

- **Search**: a clean probe searches a gallery of N real distractor faces (``lfw_rest/`` and the ``lfw/``
  identities outside the sample, about 13,000) holding the protected photo: is it outscored (measured, N up
  to the distractors held), and is it below the threshold at FAR 1/N (N = 10^3..10^6, estimated on every
  impostor pair of the distractors; stored in the user cache for the per-photo report)?
- **Verification** (B): protected vs clean same-person pairs scoring below the FAR 1e-3 threshold;
- **Own original**: the protected photo against its own clean version (the worst case, never the headline);
- (A) identification, protected gallery vs clean probes: rank-1 / rank-5 of protected identities;
- (C) reverse identification: clean gallery, protected photo as the probe.

Every cell comes with n and a 95% Wilson interval; the headline is the worst held-out cell under Search and
Verification. Ensemble (white-box) numbers are reported apart. The photos come from ``--data`` (default:
``lfw/`` and ``people/`` of ``$FACECLOAK_DATA``); ``--results`` names the results page to update.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.attack import Cloak, face_crops, face_region_bounds, preset
from ..core.detect import Face, FaceDetector
from ..core.device import configure_cpu_threads
from ..core.image import PHOTO_SUFFIXES, ImageLoadError, load_image
from ..core.perceptual import NOT_MEASURED, LPIPSMeasure, lpips_available
from ..core.protect import build_config
from ..core.quality import haarpsi, psnr, ssim
from ..core.report import wilson_interval
from ..core.report_views import degrade, face_window, window_of
from ..core.transforms import Transform
from ..core.zoo.manifest import load_manifest
from ..core.zoo.registry import load_model
from .common import (
    DATA_ENV,
    BenchInputError,
    add_data_argument,
    add_labelled_data_argument,
    add_results_argument,
    check_results_page,
    data_folders,
    machine_line,
    portable_path,
    reports_input_errors,
    this_command,
    write_json,
    write_section,
)
from .verification import DetectionCache


def bench_transforms(long_side: int) -> list[tuple[str, Transform]]:
    """Issue 3's list: none, JPEG q75, resize to 720 px long side, four blurs at k5 and k9.

    Photos already smaller than 720 px (LFW's 250 px) are halved instead: the row is labelled "resize".
    """
    out = [("none", Transform()), ("jpeg q75", Transform("jpeg", quality=75))]
    out.append(("resize", Transform("resize", scale=720 / long_side if long_side > 720 else 0.5)))
    for kind in ("gaussian", "median", "box", "motion"):
        for k in (5, 9):
            out.append((f"{kind} k{k}", Transform(kind, kernel=k)))
    return out


# -- the Search gallery: real distractor faces ---------------------------------------------------------------

DISTRACTOR_FOLDERS = ("lfw_rest", "lfw")  # lfw_rest/: 4,848 identities disjoint from lfw/


def distractor_photos(data: Path, exclude: set[str]) -> list[Path]:
    """Every photo of ``lfw_rest/`` and of the ``lfw/`` identities not in ``exclude`` (the benchmark's own)."""
    photos = []
    for folder in DISTRACTOR_FOLDERS:
        root = data / folder
        if not root.is_dir():
            continue
        for person in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude):
            photos += sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    return photos


class EmbeddingCache:
    """One model's embeddings of distractor photos, kept in the user cache (``distractors/<model>.pt``).

    Keyed by the photo's path below the data folder, and tied to the model's cached weights (a rebuilt model
    starts afresh). Written atomically every few hundred new faces, so an interrupted run resumes.
    """

    SAVE_EVERY = 512

    def __init__(self, model_name: str, root: Path | None = None) -> None:
        from ..core.zoo.cache import cache_root, weights_path

        self.path = (root or cache_root() / "distractors") / f"{model_name}.pt"
        stat = weights_path(model_name).stat()
        self.signature = f"{stat.st_size}:{stat.st_mtime_ns}"
        self.entries: dict[str, torch.Tensor] = {}
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError):
            stored = None
        if isinstance(stored, dict) and stored.get("signature") == self.signature:
            keys, values = stored["keys"], stored["embeddings"]
            self.entries = {k: values[i] for i, k in enumerate(keys)}

    def save(self) -> None:
        from ..core.files import replace_atomically

        keys = list(self.entries)
        values = torch.stack([self.entries[k] for k in keys]) if keys else torch.zeros(0)
        data = {"signature": self.signature, "keys": keys, "embeddings": values}
        replace_atomically(self.path, lambda tmp: torch.save(data, tmp))

    @torch.no_grad()
    def embed(self, model, photos: list[Path], faces: list[Face], data: Path, batch: int = 32) -> torch.Tensor:
        """``N,D`` embeddings of ``photos`` (one face each), computing only those not cached yet."""
        keys = [p.relative_to(data).as_posix() for p in photos]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        unsaved = 0
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            crops = torch.cat([model.aligner(load_image(photos[i]), [faces[i]]) for i in chunk])
            for i, emb in zip(chunk, model(crops), strict=True):
                self.entries[keys[i]] = emb.detach().cpu().clone()
            unsaved += len(chunk)
            if unsaved >= self.SAVE_EVERY:
                self.save()
                unsaved = 0
        if unsaved:
            self.save()
        if not keys:
            return torch.zeros(0, model.embedding_dim)
        return torch.stack([self.entries[k] for k in keys])


def detect_distractors(photos: list[Path], cache: DetectionCache, detector: FaceDetector) -> tuple[list, list]:
    """The photos with a detectable face, and that face (detections kept in the benchmark's cache)."""
    kept, faces = [], []
    for i, path in enumerate(photos):
        try:
            face = cache.get(path, detector)
        except ImageLoadError:
            face = None
        if face is not None:
            kept.append(path)
            faces.append(face)
        if (i + 1) % 500 == 0:
            cache.save()
            print(f"distractors: {i + 1}/{len(photos)} photos detected", flush=True)
    cache.save()
    return kept, faces


def protected_views(protected: torch.Tensor, face: Face, transforms: list[tuple[str, Transform]], models: list):
    """The protected face after each transform, degraded once for every model (the report's views: the same
    numbers as :func:`~facecloak.core.report.degraded_embeddings`), each with the face in its coordinates."""
    where = face_window(face, (protected.shape[-2], protected.shape[-1]), [m.aligner for m in models])
    windows = window_of(protected, where.window)
    return [(degrade([protected], t, where, windows), where.face) for _, t in transforms]


@dataclass
class Identity:
    name: str
    gallery: Path
    probes: list[Path]


def split_identities(root: Path, count: int, probes: int, seed: int) -> list[Identity]:
    rng = random.Random(seed)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    usable = []
    for folder in folders:
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if len(photos) >= 2:
            usable.append((folder.name, photos))
    rng.shuffle(usable)
    chosen = []
    for name, photos in usable[:count]:
        photos = photos[:]
        rng.shuffle(photos)
        chosen.append(Identity(name, photos[0], photos[1 : 1 + probes]))
    return chosen


def resolve_roles(args: argparse.Namespace) -> tuple[list[str], list[str]] | None:
    """Ensemble and held-out evaluators (manifest defaults), checked disjoint and measured; None if unusable."""
    from ..core.zoo.manifest import Roles, check_disjoint

    roles = Roles.load()
    ensemble_names = args.ensemble or list(roles.ensemble)
    evaluator_names = args.evaluators or list(roles.evaluators)
    check_disjoint(ensemble_names, evaluator_names)
    manifest = load_manifest()
    for name in evaluator_names:
        if manifest[name].verification is None:
            print(
                f"{name} has no thresholds: run 'facecloak bench lfw --models {name} --manifest MODELS_JSON'",
                file=sys.stderr,
            )
            return None
    return ensemble_names, evaluator_names


@reports_input_errors
def run_protect_benchmark(args: argparse.Namespace) -> int:
    configure_cpu_threads()
    manifest = load_manifest()
    roles = resolve_roles(args)
    if roles is None:
        return 2
    ensemble_names, evaluator_names = roles
    folders, root = data_folders(args.data, ("lfw", "people"))
    check_results_page(args.results)
    overrides = {"steps": args.steps} if args.steps is not None else {}
    if args.dssim_budget is not None:
        overrides["dssim_budget"] = args.dssim_budget
    if args.epsilon is not None:
        overrides["epsilon"] = args.epsilon / 255
    if args.quick:  # end-to-end check for CI: a few identities, a couple of steps, one view
        overrides = {"steps": min(args.steps or 2, 2), "views_per_step": 1}
        args.identities, args.probes, folders = min(args.identities, 4), min(args.probes, 2), folders[:1]
    config = build_config(args.preset, knobs=overrides, device="cpu")  # the models below load on the CPU
    ensemble = [load_model(n) for n in ensemble_names]
    evaluators = [load_model(n) for n in evaluator_names]
    cloak = Cloak(ensemble, config)
    detector = FaceDetector()
    cache = DetectionCache()

    identities: list[Identity] = []
    for folder in folders:
        if not folder.is_dir():
            print(f"skipping {folder}: not found", file=sys.stderr)
            continue
        count = args.identities if "lfw" in folder.name or args.quick else 10_000
        identities += split_identities(folder, count, args.probes, args.seed)
    if not identities:
        print("no identities with 2+ photos found", file=sys.stderr)
        return 2

    models = ensemble + evaluators
    names = [m.name for m in models]
    t_labels: list[str] | None = None
    # per model: gallery embeddings clean [N,D], protected per transform {label: [N,D]}, probes [(identity, emb)]
    clean_gallery = {n: [] for n in names}
    protected_gallery: dict[str, dict[str, list[torch.Tensor]]] = {n: {} for n in names}
    probe_embs = {n: [] for n in names}
    probe_owner: list[int] = []
    quality = {"face_dssim": [], "face_haarpsi": [], "ssim": [], "psnr": []}
    lpips = LPIPSMeasure() if lpips_available() else None
    if lpips is not None:
        quality["face_lpips"] = []
    seconds_per_face: list[float] = []
    kept: list[Identity] = []
    started = time.perf_counter()
    for idx, ident in enumerate(identities):
        try:
            photo = load_image(ident.gallery)
        except ImageLoadError as err:
            print(f"skipping {ident.name}: {err}", file=sys.stderr)
            continue
        face = cache.get(ident.gallery, detector)
        probe_faces = [(p, cache.get(p, detector)) for p in ident.probes]
        probe_faces = [(p, f) for p, f in probe_faces if f is not None]
        if face is None or not probe_faces:
            continue
        t0 = time.perf_counter()
        result = cloak(photo, [face])
        seconds_per_face.append(time.perf_counter() - t0)
        protected = result.photo
        quality["face_dssim"].append(result.face_dssim[0])
        face_protected, face_clean = face_crops(face, protected, photo)
        quality["face_haarpsi"].append(float(haarpsi(face_protected, face_clean)[0]))
        if lpips is not None:
            quality["face_lpips"].append(float(lpips(face_protected, face_clean)[0]))
        quality["ssim"].append(float(ssim(protected, photo)[0]))
        if args.crops is not None and len(kept) < 4:
            save_crop(args.crops / f"{args.preset}-{ident.name}.png", photo, protected, face)
        quality["psnr"].append(float(psnr(protected, photo)[0]))
        transforms = bench_transforms(max(photo.shape[-2:]))
        t_labels = t_labels or [label for label, _ in transforms]
        position = len(kept)
        kept.append(ident)
        with torch.no_grad():
            views = protected_views(protected, face, transforms, models)
            for model in models:
                clean_gallery[model.name].append(model(model.aligner(photo, [face]))[0])
                embs = model(torch.cat([model.aligner(view, [where]) for view, where in views]))
                for (label, _), emb in zip(transforms, embs, strict=True):
                    protected_gallery[model.name].setdefault(label, []).append(emb)
                for p, f in probe_faces:
                    probe_embs[model.name].append(model(model.aligner(load_image(p), [f]))[0])
        probe_owner += [position] * len(probe_faces)
        elapsed = time.perf_counter() - started
        print(
            f"[{idx + 1}/{len(identities)}] {ident.name}: {seconds_per_face[-1]:.1f} s, face DSSIM "
            f"{result.face_dssim[0]:.4f}, {elapsed / (idx + 1) * (len(identities) - idx - 1):.0f} s left",
            flush=True,
        )
    cache.save()
    if not kept:
        print("no identity had a detectable face in its photos", file=sys.stderr)
        return 2
    labels = t_labels or []
    owners = torch.tensor(probe_owner)
    results = []
    for model in models:
        v = manifest[model.name].verification
        threshold = v.threshold_far_1e3 if v else float("nan")
        role = "ensemble (white-box)" if model.name in ensemble_names else "held-out"
        clean_g = torch.stack(clean_gallery[model.name])
        probes = torch.stack(probe_embs[model.name])
        base_sim = probes @ clean_g.T  # [P, N]
        base_rank1 = float((base_sim.argmax(1) == owners).float().mean())
        base_tar = float((base_sim[torch.arange(len(owners)), owners] >= threshold).float().mean())
        for label in labels:
            prot_g = torch.stack(protected_gallery[model.name][label])
            sim_a = probes @ prot_g.T  # (A) clean probes against the protected gallery
            rank1 = int((sim_a.argmax(1) == owners).sum())
            top5 = sim_a.topk(min(5, sim_a.shape[1]), dim=1).indices
            rank5 = int((top5 == owners[:, None]).any(1).sum())
            genuine = sim_a[torch.arange(len(owners)), owners]
            below = int((genuine < threshold).sum())  # (B) verification pairs no longer matching
            own = (prot_g * clean_g).sum(1)  # own original: the protected photo vs its own clean version
            own_below = int((own < threshold).sum())
            # (C) protected photo as the probe against the clean gallery of every identity
            sim_c = prot_g @ clean_g.T
            rank1_c = int((sim_c.argmax(1) == torch.arange(len(kept))).sum())
            n_p, n_i = len(owners), len(kept)
            results.append(
                {
                    "model": model.name,
                    "role": role,
                    "transform": label,
                    "n_pairs": n_p,
                    "n_identities": n_i,
                    "verification_protected": below / n_p,
                    "verification_ci": wilson_interval(below, n_p),
                    "own_protected": own_below / n_i,
                    "own_ci": wilson_interval(own_below, n_i),
                    "rank1_A": rank1 / n_p,
                    "rank1_A_ci": wilson_interval(rank1, n_p),
                    "rank5_A": rank5 / n_p,
                    "rank1_C": rank1_c / n_i,
                    "rank1_C_ci": wilson_interval(rank1_c, n_i),
                    "baseline_rank1": base_rank1,
                    "baseline_tar_far_1e3": base_tar,
                    "threshold_far_1e3": threshold,
                }
            )
    held_out = [m for m in evaluators if m.name not in ensemble_names]
    search_rows, tables = [], {}
    if args.distractors != 0:
        exclude = {ident.name for ident in kept}
        search_rows, tables = measure_search(
            args, root, held_out, exclude, cache, detector, probe_embs, owners, clean_gallery, protected_gallery, labels
        )
    summary = {
        "preset": args.preset,
        "overrides": {} if args.quick else overrides,
        "config": {k: (v if isinstance(v, int | float | str) else str(v)) for k, v in config.__dict__.items()},
        "ensemble": ensemble_names,
        "attack_perceptual_terms": cloak.perceptual_terms,
        "evaluators": evaluator_names,
        "identities": len(kept),
        "data": [str(d) for d in folders],
        "seconds_per_face_mean": float(np.mean(seconds_per_face)),
        "seconds_per_face_median": float(np.median(seconds_per_face)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "quality_mean": {k: float(np.mean(v)) for k, v in quality.items()},
        "quality_max_face_dssim": float(np.max(quality["face_dssim"])),
        "cells": results,
        "search": search_rows,
        "search_thresholds": tables,
    }
    print_and_write(summary, args, root)
    return 0


def distractor_gallery(
    data: Path, exclude: set[str], limit: int | None, seed: int, cache: DetectionCache, detector: FaceDetector
) -> tuple[list[Path], list[Face], list[int]]:
    """Distractor photos with a face (at most ``limit``, a seeded sample), their faces and identity numbers."""
    photos = distractor_photos(data, exclude)
    if limit is not None and limit < len(photos):
        photos = sorted(random.Random(seed).sample(photos, limit))
    kept, faces = detect_distractors(photos, cache, detector)
    names = {name: i for i, name in enumerate(sorted({p.parent.name for p in kept}))}
    return kept, faces, [names[p.parent.name] for p in kept]


def search_thresholds_of(model_name: str, gallery: torch.Tensor, identities: list[int], source: str):
    """The evaluator's Search thresholds (FAR 1e-3..1e-6) from every impostor pair of the distractor gallery."""
    from ..core.search import SearchThresholds, genuine_scores, impostor_thresholds

    estimates = impostor_thresholds(gallery, identities)
    genuine = genuine_scores(gallery, identities)
    median = float(genuine.median()) if len(genuine) else None
    return SearchThresholds(model_name, tuple(estimates), median, len(gallery), source)


def search_cells(
    model_name: str,
    label: str,
    probes: torch.Tensor,
    targets: torch.Tensor,
    clean_targets: torch.Tensor,
    gallery: torch.Tensor,
    thresholds,
    seed: int,
) -> list[dict]:
    """Search rows of one evaluator and view: per gallery size, the share of (clean probe, protected photo) pairs
    where the protected photo is *not* found: not first among N real distractors (measured, N <= the gallery;
    a gallery smaller than 1,000 is measured at its own size), and below the FAR 1/N threshold (estimated from
    impostor pairs); the same for the unprotected photo."""
    from ..core.search import GALLERY_SIZES, ranks

    order = torch.randperm(len(gallery), generator=torch.Generator().manual_seed(seed))
    by_far = {e.gallery_size: e for e in thresholds.estimates}
    n = len(probes)
    rows = []
    sizes = GALLERY_SIZES if len(gallery) >= GALLERY_SIZES[0] else (len(gallery), *GALLERY_SIZES)
    for size in sizes:
        row = {"model": model_name, "transform": label, "gallery_size": size, "n_pairs": n}
        if size <= len(gallery):
            sample = gallery[order[:size]]
            missed = int((ranks(probes, targets, sample) > 1).sum())
            row.update(rank_protected=missed / n, rank_ci=wilson_interval(missed, n))
            row["rank_baseline"] = float((ranks(probes, clean_targets, sample) > 1).float().mean())
        estimate = by_far.get(size)
        if estimate is not None and estimate.threshold is not None:
            below = int(((probes * targets).sum(1) < estimate.threshold).sum())
            row.update(threshold=estimate.threshold, pairs_above=estimate.pairs_above)
            row.update(threshold_protected=below / n, threshold_ci=wilson_interval(below, n))
            row["threshold_baseline"] = float(((probes * clean_targets).sum(1) < estimate.threshold).float().mean())
        if "rank_protected" in row or "threshold" in row:  # a size neither measured nor estimated says nothing
            rows.append(row)
    return rows


def measure_search(
    args: argparse.Namespace,
    root: Path | None,
    evaluators: list,
    exclude: set[str],
    cache: DetectionCache,
    detector: FaceDetector,
    probe_embs: dict[str, list[torch.Tensor]],
    owners: torch.Tensor,
    clean_gallery: dict[str, list[torch.Tensor]],
    protected_gallery: dict[str, dict[str, list[torch.Tensor]]],
    labels: list[str],
) -> tuple[list[dict], dict[str, dict]]:
    """The Search table: the protected photos among real distractor faces, and the thresholds at FAR 1e-3..1e-6
    measured on the distractors' impostor pairs (stored in the user cache for the per-photo report)."""
    from ..core.search import save_search_thresholds

    data = args.distractor_data or root
    if data is None or not any((data / f).is_dir() for f in DISTRACTOR_FOLDERS):
        print(f"Search table skipped: no {' or '.join(DISTRACTOR_FOLDERS)} folder in {data}", file=sys.stderr)
        return [], {}
    limit = 100 if args.quick else args.distractors
    photos, faces, identities = distractor_gallery(data, exclude, limit, args.seed, cache, detector)
    source = f"{this_command(root)} ({len(photos)} distractor faces)"
    rows, measured = [], []
    for model in evaluators:
        print(f"Search: embedding {len(photos)} distractors for {model.name}", flush=True)
        gallery = EmbeddingCache(model.name).embed(model, photos, faces, data)
        thresholds = search_thresholds_of(model.name, gallery, identities, source)
        measured.append(thresholds)
        probes = torch.stack(probe_embs[model.name])
        clean_targets = torch.stack(clean_gallery[model.name])[owners]
        for label in labels:
            targets = torch.stack(protected_gallery[model.name][label])[owners]
            rows += search_cells(model.name, label, probes, targets, clean_targets, gallery, thresholds, args.seed)
    if measured and not args.quick:  # the per-photo report's thresholds on this machine from now on
        save_search_thresholds(measured)
    return rows, {t.evaluator: t.to_dict() for t in measured}


def _knob(name: str, value: float) -> str:
    """A knob's value as people read it: the caps in 8-bit levels."""
    return f"{value * 255:.3g}/255" if name == "epsilon" else f"{value:.4g}"


_DATASET_NAMES = {"lfw": "LFW", "people": "`people/`"}

# What the table's columns mean; "protected" is (B).
PROTECTION_LEGEND = (
    "(B) Verification: protected = share of protected-vs-clean same-person pairs that no longer match: cosine",
    "below the evaluator's FAR 1e-3 threshold (higher is better); Own original: protected = the same against the",
    "protected photo's own clean version (the worst case: whoever holds it needs no protected copy);",
    "(A) rank-1 = clean probes still finding the protected photo's identity first (lower is better);",
    "(C) rank-1 = protected photo as probe finding its owner in a clean gallery (lower is better).",
    "Baselines are the same numbers with the photo unprotected. 95% Wilson intervals in brackets; n = pairs.",
)


def dataset_label(folders: list[str]) -> str:
    """The photo sets as headings name them: ``LFW``, ```people/```, or the folder's name."""
    return " + ".join(_DATASET_NAMES.get(Path(f).name, f"`{Path(f).name}/`") for f in folders)


def protection_heading(preset_name: str, overrides: dict, folders: list[str], identities: int, quick: bool) -> str:
    """E.g. ``### `mid` preset, LFW (50 identities)``: the preset, any knob it was run with, and the photo set."""
    knobs = "".join(f", {k} {_knob(k, v)}" for k, v in overrides.items())
    label = f"{dataset_label(folders)} ({identities} identities)"
    return f"### `{preset_name}` preset{knobs}, {label}" + (" (quick)" if quick else "")


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _ci(interval: tuple[float, float] | list[float]) -> str:
    lo, hi = interval
    return f"[{lo * 100:.0f}-{hi * 100:.0f}]"


def _search_order(row: dict) -> tuple[float, float]:
    """Worst Search row first: the fewest not found first among real faces, then below the threshold."""
    return row.get("rank_protected", 2.0), row.get("threshold_protected", 2.0)


def headline_lines(summary: dict) -> list[str]:
    """The worst held-out evaluator under Search (10^4 real faces, else the largest measured) and Verification;
    Own original as the worst case, never the headline."""
    held = [c for c in summary["cells"] if c["role"] == "held-out"]
    verification = min(held, key=lambda c: c["verification_protected"])
    own = min(held, key=lambda c: c["own_protected"])
    measured = [r for r in summary.get("search", []) if "rank_protected" in r]
    if measured:
        size = max(r["gallery_size"] for r in measured)
        search = min((r for r in measured if r["gallery_size"] == size), key=_search_order)
        search_text = (
            f"Search among {size:,} real faces: {_pct(search['rank_protected'])} of (clean probe, protected photo) "
            f"pairs not found first {_ci(search['rank_ci'])} ({search['model']}, {search['transform']})"
        )
    else:
        search_text = "Search not measured (no distractor faces)"
    return [
        f"- **Headline (worst held-out cell)**: {search_text}; Verification at FAR 1e-3: "
        f"{_pct(verification['verification_protected'])} of protected/clean pairs no longer match "
        f"{_ci(verification['verification_ci'])} ({verification['model']}, {verification['transform']}).",
        f"- Own original (worst case, not the headline): {_pct(own['own_protected'])} of protected photos no longer "
        f"match their own clean version {_ci(own['own_ci'])} ({own['model']}, {own['transform']}).",
    ]


def search_table(summary: dict) -> list[str]:
    """Per held-out evaluator and gallery size: the photo as posted and its worst view."""
    rows = summary.get("search", [])
    if not rows:
        return []
    lines = [
        "",
        "Search: a clean probe of the person against a gallery of N other people's faces holding the protected "
        "photo. *Not first* = the protected photo is outscored by a real distractor (measured for N up to the "
        "distractors held); *below threshold* = its similarity is under the threshold at FAR 1/N (estimated from "
        "impostor pairs, last table). Higher is better; the clean columns are the same with the photo unprotected.",
        "",
        "| model | threat | gallery N | transform | not first (protected) | below FAR 1/N threshold (protected) "
        "| clean: not first | clean: below | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keyed: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        keyed.setdefault((r["model"], r["gallery_size"]), []).append(r)
    for (model, size), group in keyed.items():
        as_posted = next(r for r in group if r["transform"] == "none")
        worst = min(group, key=_search_order)
        for r in [as_posted] + ([worst] if worst is not as_posted else []):
            first = f"{_pct(r['rank_protected'])} {_ci(r['rank_ci'])}" if "rank_protected" in r else "-"
            below = f"{_pct(r['threshold_protected'])} {_ci(r['threshold_ci'])}" if "threshold" in r else "-"
            clean_first = _pct(r["rank_baseline"]) if "rank_baseline" in r else "-"
            clean_below = _pct(r["threshold_baseline"]) if "threshold_baseline" in r else "-"
            lines.append(
                f"| {model} | Search | {size:,} | {r['transform']} | {first} | {below} | {clean_first} "
                f"| {clean_below} | {r['n_pairs']} |"
            )
    return lines


def thresholds_table(summary: dict) -> list[str]:
    tables = summary.get("search_thresholds", {})
    if not tables:
        return []
    lines = [
        "",
        "Search thresholds from every impostor pair of the distractor faces (two photos of different people): the "
        "similarity at which a share FAR of them match, how many pairs lie at or above it, and the median "
        "similarity of two photos of one person (the lone-photo estimate of the per-photo report).",
        "",
        "| model | FAR (gallery N) | threshold | impostor pairs above | impostor pairs | same-person median |",
        "|---|---|---|---|---|---|",
    ]
    for model, table in tables.items():
        median = table.get("genuine_median")
        for e in table["estimates"]:
            threshold = "too few pairs" if e["threshold"] is None else f"{e['threshold']:.4f}"
            lines.append(
                f"| {model} | {e['far']:.0e} ({round(1 / e['far']):,}) | {threshold} | {e['pairs_above']:,} "
                f"| {e['pairs_total']:,} | {'-' if median is None else f'{median:.3f}'} |"
            )
    return lines


def print_and_write(summary: dict, args: argparse.Namespace, root: Path | None) -> None:
    cells = summary["cells"]
    held = [c for c in cells if c["role"] == "held-out"]
    q = summary["quality_mean"]
    sources = ", ".join(f"`{portable_path(d, root)}`" for d in summary["data"])
    distractors = max((t["faces"] for t in summary.get("search_thresholds", {}).values()), default=0)
    lines = [
        protection_heading(
            summary["preset"], summary.get("overrides", {}), summary["data"], summary["identities"], args.quick
        ),
        "",
        f"Command: `{this_command(root)}` ({machine_line()}).",
        f"{summary['identities']} identities from {sources}; one protected photo each, clean probes",
        f"of the same people; {distractors:,} distractor faces of other people for Search. Attack ensemble: "
        f"{', '.join(summary['ensemble'])}. Held-out evaluators (never attacked):",
        f"{', '.join(summary['evaluators'])}. The attack's perceptual terms: "
        f"{summary.get('attack_perceptual_terms', 'face DSSIM')}.",
        "",
        *headline_lines(summary),
        f"- Quality: face DSSIM mean {q['face_dssim']:.4f} (max {summary['quality_max_face_dssim']:.4f}), "
        f"face HaarPSI {q['face_haarpsi']:.4f}, photo SSIM {q['ssim']:.4f}, PSNR {q['psnr']:.1f} dB; "
        + (f"face LPIPS {q['face_lpips']:.4f}." if q.get("face_lpips") is not None else f"{NOT_MEASURED}."),
        f"- Speed: {summary['seconds_per_face_median']:.1f} s per face (median, attack only), peak RSS "
        f"{summary['peak_rss_mb']:.0f} MB.",
        *search_table(summary),
        "",
        *PROTECTION_LEGEND,
        "",
        "| model | role | transform | (B) Verification: protected | Own original: protected | (A) rank-1 "
        "| (A) rank-5 | (C) rank-1 | clean rank-1 | clean TAR | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in held + [c for c in cells if c["role"] != "held-out"]:  # held-out rows first: they are the result
        lines.append(
            f"| {c['model']} | {c['role']} | {c['transform']} | {_pct(c['verification_protected'])} "
            f"{_ci(c['verification_ci'])} | {_pct(c['own_protected'])} {_ci(c['own_ci'])} | {_pct(c['rank1_A'])} "
            f"| {_pct(c['rank5_A'])} | {_pct(c['rank1_C'])} | {_pct(c['baseline_rank1'])} "
            f"| {_pct(c['baseline_tar_far_1e3'])} | {c['n_pairs']} |"
        )
    lines += thresholds_table(summary)
    table = "\n".join(lines)
    print("\n" + table)
    if args.quick:
        print("(a --quick run checks the benchmark end to end; its numbers are not written to a results page)")
    else:
        write_section(args.results, protection_key(summary), table)
    if args.output:
        write_json(args.output, summary)


def protection_key(summary: dict) -> str:
    """The results-page section of a run: preset, knobs and photo folders (one section per combination)."""
    folders = "+".join(Path(d).name for d in summary["data"])
    tweaks = "".join(f"-{k}{_knob(k, v)}" for k, v in summary.get("overrides", {}).items()).replace("/", "_")
    return f"protect-{summary['preset']}{tweaks}-{folders}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_labelled_data_argument(parser)
    parser.add_argument(
        "--identities",
        type=int,
        default=50,
        help="identities to use from a folder whose name has lfw in it (default: 50; other folders: all)",
    )
    parser.add_argument("--probes", type=int, default=3, help="clean photos per identity (default: 3)")
    parser.add_argument("--preset", default="mid", choices=["low", "mid", "high"], help="preset (default: mid)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the preset's)")
    parser.add_argument(
        "--dssim-budget",
        type=float,
        default=None,
        help="override the preset's face DSSIM budget (default: the preset's)",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="override the luminance cap, in 8-bit levels (default: the preset's)",
    )
    parser.add_argument("--ensemble", nargs="+", default=None, help="attack models (default: the manifest's)")
    parser.add_argument("--evaluators", nargs="+", default=None, help="held-out models (default: the manifest's)")
    parser.add_argument(
        "--distractors",
        type=int,
        default=None,
        metavar="N",
        help="distractor faces for the Search table, a seeded sample (default: all of lfw_rest/ and the lfw/ "
        "identities outside the sample, about 12,000; 0 skips the Search table)",
    )
    parser.add_argument(
        "--distractor-data",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder holding lfw_rest/ and lfw/ for the distractors (default: ${DATA_ENV})",
    )
    parser.add_argument("--seed", type=int, default=0, help="which identities and photos (default: 0)")
    parser.add_argument(
        "--quick", action="store_true", help="a handful of identities and few steps, never written (CI; default: off)"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the summary as JSON here (default: none)")
    parser.add_argument(
        "--crops", type=Path, default=None, help="save original/protected/difference crops here (default: none)"
    )
    add_results_argument(parser)


def save_crop(path: Path, clean: torch.Tensor, protected: torch.Tensor, face: Face) -> None:
    """Original | protected | difference amplified 10x, of the face at 100% (no resampling)."""
    from PIL import Image

    from ..core.image import tensor_to_uint8

    y0, y1, x0, x1 = face_region_bounds(face, *clean.shape[-2:], margin=0.25)
    a = clean[..., y0:y1, x0:x1]
    b = protected[..., y0:y1, x0:x1]
    diff = ((b - a) * 10 + 0.5).clamp(0, 1)
    strip = torch.cat([a, b, diff], dim=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tensor_to_uint8(strip)).save(path)


@reports_input_errors
def run_album_benchmark(args: argparse.Namespace) -> int:
    """Album warm starts: seconds per face and protection for the 2nd..Nth photo of a person, cold vs warm."""
    configure_cpu_threads()
    manifest = load_manifest()
    roles = resolve_roles(args)
    if roles is None:
        return 2
    ensemble_names, evaluator_names = roles
    [folder], root = data_folders([args.data] if args.data else None, ("people",))
    if not folder.is_dir():
        raise BenchInputError(f"{folder} not found: pass --data with a folder of people, one subfolder each")
    check_results_page(args.results)
    ensemble = [load_model(n) for n in ensemble_names]
    evaluators = [load_model(n) for n in evaluator_names]
    detector = FaceDetector()
    people = sorted(p for p in folder.iterdir() if p.is_dir())[: args.people]
    rows: dict[str, dict[str, list[float]]] = {
        "cold": {"seconds": [], "protected": [], "steps": []},
        "warm": {"seconds": [], "protected": [], "steps": []},
    }
    measured = 0  # people with 2+ photos with a face
    for person in people:
        photos = sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)[: args.photos]
        loaded = []
        for path in photos:
            photo = load_image(path)
            faces = detector.detect(photo)
            if faces:
                loaded.append((photo, faces[:1]))
        if len(loaded) < 2:
            continue
        measured += 1
        for mode in ("cold", "warm"):
            cloak = Cloak(ensemble, preset(args.preset, warm_start=mode == "warm"))
            for i, (photo, faces) in enumerate(loaded):
                t0 = time.perf_counter()
                result = cloak(photo, faces)
                seconds = time.perf_counter() - t0
                if i == 0:
                    continue  # the first photo of an album is never warm
                with torch.no_grad():
                    below = []
                    for model in evaluators:
                        clean = model(model.aligner(photo, faces))[0]
                        prot = model(model.aligner(result.photo, faces))[0]
                        below.append(float(clean @ prot) < manifest[model.name].verification.threshold_far_1e3)
                rows[mode]["seconds"].append(seconds)
                rows[mode]["steps"].append(len(result.steps))
                rows[mode]["protected"].append(float(np.mean(below)))
            print(
                f"{person.name} {mode}: {np.mean(rows[mode]['seconds'][-len(loaded) + 1 :]):.1f} s per face", flush=True
            )
    if not rows["cold"]["seconds"]:
        print("no person with 2+ photos with a face", file=sys.stderr)
        return 2
    cold, warm = rows["cold"], rows["warm"]
    config = preset(args.preset)
    warm_rule = f"at least {config.warm_start_step_share:.0%} of the steps" + (
        ", then until the ensemble is as far from the face as on the earlier photo"
        if config.warm_start_until_matched
        else ""
    )
    lines = [
        album_heading(args.preset, str(folder), measured),
        "",
        f"Command: `{this_command(root)}` ({machine_line()}). Photos 2..N of each person in "
        f"`{portable_path(folder, root)}`, preset `{args.preset}`, ensemble {', '.join(ensemble_names)}; "
        "protection = share of "
        f"(photo x held-out evaluator: {', '.join(evaluator_names)}) below the FAR 1e-3 threshold, no transform.",
        "",
        "| start | photos | steps (mean) | seconds per face (mean) | protected (held-out, no transform) |",
        "|---|---|---|---|---|",
        f"| cold (every photo from scratch) | {len(cold['seconds'])} | {np.mean(cold['steps']):.1f} "
        f"| {np.mean(cold['seconds']):.1f} | {np.mean(cold['protected']) * 100:.0f}% |",
        f"| warm (change carried over; {warm_rule}) | {len(warm['seconds'])} | {np.mean(warm['steps']):.1f} "
        f"| {np.mean(warm['seconds']):.1f} | {np.mean(warm['protected']) * 100:.0f}% |",
        "",
        f"Speed-up: {np.mean(cold['seconds']) / np.mean(warm['seconds']):.2f}x.",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    write_section(args.results, "album", table)
    return 0


def album_heading(preset_name: str, folder: str, people: int) -> str:
    photos = f"{dataset_label([folder])} ({people} people)"
    return f"### Albums: warm starts from an earlier photo, `{preset_name}` preset, {photos}"


def add_album_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_argument(
        parser,
        f"folder of people, one subfolder of photos each (default: people/ of ${DATA_ENV}; one of the two must be set)",
    )
    parser.add_argument("--people", type=int, default=13, help="people to use, in name order (default: 13)")
    parser.add_argument("--photos", type=int, default=5, help="photos per person at most (default: 5)")
    parser.add_argument("--preset", default="mid", choices=["low", "mid", "high"], help="preset (default: mid)")
    parser.add_argument("--ensemble", nargs="+", default=None, help="attack models (default: the manifest's)")
    parser.add_argument("--evaluators", nargs="+", default=None, help="held-out models (default: the manifest's)")
    add_results_argument(parser)
