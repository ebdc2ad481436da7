"""``facecloak bench tune``: compare attack settings on *tuning* judges, never on the reporting evaluators.

The protocol that chose the defaults of :class:`~facecloak.core.attack.CloakConfig`: attack with a
tuning ensemble (by default two of the three surrogates), judge with models held out of it (the
third surrogate and the manifest's ``tuning`` models), on a seeded sample of labelled photos. The
models that report protection (the manifest's ``evaluators``) are refused, so settings can never be
fitted to the numbers the app and ``bench protect`` show. It prints its numbers only (the tuning history is kept by
hand in docs/tuning-log.md); the photos come from ``--data`` (default: ``lfw/`` of ``$FACECLOAK_DATA``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.attack import Cloak, face_crops
from ..core.detect import Face, FaceDetector
from ..core.device import configure_cpu_threads
from ..core.image import load_image
from ..core.protect import build_config
from ..core.quality import haarpsi
from ..core.report import degraded_embeddings
from ..core.transforms import Transform
from ..core.zoo.manifest import Roles, load_manifest
from ..core.zoo.registry import load_model
from .common import DATA_ENV, BenchInputError, add_data_argument, data_folders, portable_path, reports_input_errors
from .protect import split_identities
from .verification import DetectionCache

TUNING_TRANSFORMS = (
    Transform(),
    Transform("jpeg", quality=75),
    Transform("gaussian", kernel=9),
    Transform("median", kernel=9),
    Transform("resize", scale=0.5),
)


def default_judges() -> list[str]:
    roles = Roles.load()
    return [roles.ensemble[-1], *roles.tuning]


@dataclass
class _TuningFace:
    photo: Path  # protected in turn
    face: Face
    references: list[tuple[Path, Face]]  # clean photos of the same person


def _tuning_faces(root: Path, identities: int, probes: int, seed: int, every_photo: bool) -> list[_TuningFace]:
    """A seeded sample of identities: one photo each is protected (or, with ``every_photo``, each photo in
    turn), compared with up to ``probes`` other photos of the same person."""
    detector, cache = FaceDetector(), DetectionCache()
    faces = []
    for ident in split_identities(root, identities, probes=10**6 if every_photo else probes, seed=seed):
        photos = [ident.gallery, *ident.probes]
        found = {p: f for p in photos if (f := cache.get(p, detector)) is not None}
        for photo in photos if every_photo else photos[:1]:
            references = [(p, found[p]) for p in photos if p != photo and p in found][:probes]
            if photo in found and references:
                faces.append(_TuningFace(photo, found[photo], references))
    cache.save()
    return faces


@reports_input_errors
def run_tune_benchmark(args: argparse.Namespace) -> int:
    configure_cpu_threads()
    roles = Roles.load()
    ensemble_names = args.ensemble or list(roles.ensemble[:-1])
    judge_names = args.judges or default_judges()
    forbidden = (set(ensemble_names) | set(judge_names)) & set(roles.evaluators)
    if forbidden:
        print(f"refusing to tune on the reporting evaluators: {', '.join(sorted(forbidden))}")
        return 2
    variants: dict[str, dict] = json.loads(args.variants)
    configs = {}
    for name, overrides in variants.items():
        try:  # every variant checked before the first minute of work
            configs[name] = build_config(args.preset, knobs=overrides, device="cpu")
        except ValueError as err:
            print(f"variant {name}: {err}")
            return 2
    [folder], root = data_folders([args.data] if args.data else None, ("lfw",))
    if not folder.is_dir():
        raise BenchInputError(f"{folder} not found: pass --data with a folder of people, one subfolder each")
    ensemble = [load_model(n) for n in ensemble_names]
    judges = [load_model(n) for n in judge_names]
    manifest = load_manifest()
    thresholds = {n: manifest[n].verification.threshold_far_1e3 for n in judge_names}
    data = _tuning_faces(folder, args.identities, args.probes, args.sample_seed, args.every_photo)
    shown = portable_path(folder, root)
    print(f"{len(data)} faces from {shown}; tuning ensemble {ensemble_names}; judges {judge_names}")
    # clean embeddings of every reference photo, each photo read once (12 MP photos are 150 MB as tensors)
    clean: dict[Path, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for path, face in dict(r for item in data for r in item.references).items():
            image = load_image(path)
            clean[path] = {j.name: j(j.aligner(image, [face]))[0] for j in judges}
    for name, config in configs.items():
        cloak = Cloak(ensemble, config)
        sims: dict[tuple[str, str], list[float]] = {(j.name, t.name): [] for j in judges for t in TUNING_TRANSFORMS}
        dssims, haarpsis, start = [], [], time.perf_counter()
        for item in data:
            photo, face, references = load_image(item.photo), item.face, [clean[p] for p, _ in item.references]
            cloak.memory.clear()  # every face from cold: warm starts would mix variants' effects
            result = cloak(photo, [face])
            dssims.append(result.face_dssim[0])
            # a second, independent quality measure: shaping the change to the DSSIM budget must not cost
            # perceived quality that DSSIM misses (same face box as bench protect)
            haarpsis.append(float(haarpsi(*face_crops(face, result.photo, photo))[0]))
            with torch.no_grad():
                for judge in judges:
                    embeddings = degraded_embeddings(judge, result.photo, face, list(TUNING_TRANSFORMS))
                    for reference in references:
                        for t, e in zip(TUNING_TRANSFORMS, embeddings, strict=True):
                            sims[(judge.name, t.name)].append(float(e @ reference[judge.name]))
        seconds = (time.perf_counter() - start) / max(1, len(data))
        for judge in judges:
            cells = []
            for t in TUNING_TRANSFORMS:
                values = sims[(judge.name, t.name)]
                below = sum(v < thresholds[judge.name] for v in values) / len(values)
                cells.append(f"{t.name.replace(' ', '')}:{below:4.0%}/{sum(values) / len(values):.2f}")
            print(
                f"{name:16s} {judge.name:18s} {seconds:5.1f} s/face dssim {sum(dssims) / len(dssims):.4f} "
                f"haarpsi {sum(haarpsis) / len(haarpsis):.4f} | " + " ".join(cells),
                flush=True,
            )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variants", help='JSON: {"name": {CloakConfig overrides}, ...}')
    add_data_argument(
        parser,
        f"folder of people, one subfolder of photos each (default: lfw/ of ${DATA_ENV}; one of the two must be set)",
    )
    parser.add_argument("--identities", type=int, default=16, help="identities to sample (default: 16)")
    parser.add_argument("--probes", type=int, default=2, help="clean photos per protected one (default: 2)")
    parser.add_argument(
        "--sample-seed", type=int, default=123, help="which identities (a second sample confirms a first; default: 123)"
    )
    parser.add_argument(
        "--every-photo",
        action="store_true",
        help="protect each photo of a chosen identity in turn (more faces from few identities, e.g. people/; "
        "default: off)",
    )
    parser.add_argument("--preset", default="mid", choices=["low", "mid", "high"], help="preset (default: mid)")
    parser.add_argument(
        "--ensemble", nargs="+", default=None, help="tuning ensemble (default: all surrogates but the last)"
    )
    parser.add_argument(
        "--judges", nargs="+", default=None, help="judges (default: the last surrogate and the tuning models)"
    )
