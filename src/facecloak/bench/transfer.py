"""``facecloak bench transfer``: the transfer matrix, protection against a recogniser the attack never saw.

*Columns* are the models of the zoo good enough to stand for a real recogniser (LFW accuracy >= 98.5% in the
manifest) that are not reporting evaluators: the evaluators are never used for a choice, so never a column.
*Rows* are surrogate sets (``--rows``; by default the manifest's ensemble). A cell attacks each face with the
row's surrogates less every model of the column's family and measures the column's model: the share of pairs of
the protected photo, as the export writes it, and another clean photo of the same person that no longer match
(cosine below the model's FAR 1e-3 threshold), with the face HaarPSI the attack spent. A row's "mean over
left-out modern models" averages its modern columns (:func:`is_modern`): the estimate of protection against an
unseen modern recogniser. Per row the *white-box* share is also measured: the row's own members still matching
the photo its whole ensemble protected, after the export's encoding (issue 24, item 3).

Work is shared: one attack per face per distinct ensemble, scored by every model that needs it (several columns,
several rows, and the white-box members), and each clean photo is embedded once per model. Faces come from the
tuning protocol's seeded sample (:func:`~facecloak.bench.tune._tuning_faces`).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..core.attack import Cloak, face_crops, parse_assignments
from ..core.detect import Face
from ..core.device import configure_cpu_threads
from ..core.export import export_protected
from ..core.image import ImageLoadError, load_image
from ..core.protect import build_config
from ..core.quality import haarpsi
from ..core.report import degraded_embeddings, wilson_interval
from ..core.transforms import Transform
from ..core.zoo.manifest import Roles, load_manifest
from ..core.zoo.model import FaceModel
from ..core.zoo.registry import cache_status, load_model
from .common import (
    BenchInputError,
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
from .protect import dataset_label
from .tune import _tuning_faces

MIN_COLUMN_ACCURACY = 0.985
# Families of the FaceNet generation (2015-2018: triplet or softmax losses, CASIA / VGGFace2 / MS-Celeb sets). Every
# other family counts as modern: margin-softmax models (ArcFace, CosFace, SFace) of the kind face search runs today.
OLDER_FAMILIES = frozenset({"facenet-casia", "facenet-vggface2", "facenet-msceleb", "dlib-resnet", "openface"})
DEFAULT_ROW = "default"
EXPORT, UNENCODED = "export", "unencoded"  # the photo as the export writes it, and the attack's own pixels
_ROW_TERM = re.compile(r"([+-])([^+-]+)")

Ensemble = frozenset[str]


class _Verification(Protocol):
    accuracy: float
    threshold_far_1e3: float


class _Spec(Protocol):
    """What the matrix reads of a manifest entry (:class:`~facecloak.core.zoo.manifest.ModelSpec`)."""

    family: str
    verification: _Verification | None


# --- rows and columns ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A surrogate set: its name as given to ``--rows`` and its models, in attack order."""

    name: str
    surrogates: tuple[str, ...]


def parse_row(text: str, default: Sequence[str], known: Sequence[str]) -> Row:
    """A row of ``--rows``: ``default`` (the manifest's ensemble), ``default+NAME-NAME...`` (it with models added or
    removed), or ``NAME,NAME,...`` (exactly these). ``ValueError`` with a message for anything else."""
    text = text.strip()
    if text == DEFAULT_ROW or text.startswith((f"{DEFAULT_ROW}+", f"{DEFAULT_ROW}-")):
        rest = text[len(DEFAULT_ROW) :]
        terms = _ROW_TERM.findall(rest)
        if "".join(sign + name for sign, name in terms) != rest:
            raise ValueError(f"row {text!r}: write default+NAME or default-NAME")
        models = list(default)
        for sign, name in terms:
            _check_known(text, name, known)
            if sign == "+" and name not in models:
                models.append(name)
            elif sign == "-":
                if name not in models:
                    raise ValueError(f"row {text!r}: {name} is not in the default ensemble")
                models.remove(name)
    else:
        models = [name.strip() for name in text.split(",") if name.strip()]
        for name in models:
            _check_known(text, name, known)
        if len(set(models)) != len(models):
            raise ValueError(f"row {text!r}: a model is named twice")
    if not models:
        raise ValueError(f"row {text!r}: no surrogate left")
    return Row(text, tuple(models))


def _check_known(row: str, name: str, known: Sequence[str]) -> None:
    if name not in known:
        raise ValueError(f"row {row!r}: unknown model {name}; known: {', '.join(known)}")


def transfer_columns(manifest: Mapping[str, _Spec], evaluators: Sequence[str]) -> list[str]:
    """The models a cell measures: LFW accuracy >= 98.5% (manifest verification), never a reporting evaluator."""
    return [
        name
        for name, spec in manifest.items()
        if name not in evaluators
        and spec.verification is not None
        and spec.verification.accuracy >= MIN_COLUMN_ACCURACY
    ]


def is_modern(spec: _Spec) -> bool:
    """Whether a model counts in "mean over left-out modern models": any family but the FaceNet generation's."""
    return spec.family not in OLDER_FAMILIES


def cell_ensemble(surrogates: Sequence[str], column: str, manifest: Mapping[str, _Spec]) -> tuple[str, ...]:
    """The row's surrogates less every model of the column's family (models of one family transfer fully)."""
    family = manifest[column].family
    return tuple(name for name in surrogates if manifest[name].family != family)


@dataclass
class Plan:
    """Which attacks a matrix needs and who scores each.

    ``cells`` maps (row name, column) to the ensemble that attacks for it, or None when the column's family is the
    whole row; ``attacks`` holds each distinct ensemble once, in the order of the row that first needs it;
    ``scorers`` the models that score an attack: the columns it serves and, for a row's whole ensemble, its
    members (the white-box share).
    """

    rows: list[Row]
    columns: list[str]
    cells: dict[tuple[str, str], Ensemble | None] = field(default_factory=dict)
    attacks: dict[Ensemble, tuple[str, ...]] = field(default_factory=dict)
    scorers: dict[Ensemble, list[str]] = field(default_factory=dict)

    def _need(self, ensemble: tuple[str, ...], scorer: str) -> Ensemble:
        key = frozenset(ensemble)
        self.attacks.setdefault(key, ensemble)
        scorers = self.scorers.setdefault(key, [])
        if scorer not in scorers:
            scorers.append(scorer)
        return key

    @property
    def models(self) -> list[str]:
        """Every model the matrix loads: surrogates and scorers, each once."""
        names = [n for ensemble in self.attacks.values() for n in ensemble]
        names += [n for scorers in self.scorers.values() for n in scorers]
        return list(dict.fromkeys(names))


def plan_matrix(rows: Sequence[Row], columns: Sequence[str], manifest: Mapping[str, _Spec]) -> Plan:
    """The attacks of a matrix: one per distinct ensemble, shared by every cell and white-box share it serves."""
    plan = Plan(list(rows), list(columns))
    for row in rows:
        for member in row.surrogates:
            plan._need(row.surrogates, member)
        for column in columns:
            ensemble = cell_ensemble(row.surrogates, column, manifest)
            plan.cells[(row.name, column)] = plan._need(ensemble, column) if ensemble else None
    return plan


# --- scores ----------------------------------------------------------------------------------------------------


@dataclass
class Scores:
    """Cosine similarities of protected-vs-clean pairs, per (attack, scoring model, encoding), and face HaarPSI
    per attack; ``faces`` names each protected photo with its number of pairs, in the order of the lists, so two
    runs on the same sample can be compared face by face."""

    similarities: dict[tuple[Ensemble, str, str], list[float]] = field(default_factory=dict)
    faces: list[tuple[str, int]] = field(default_factory=list)
    haarpsi: dict[Ensemble, list[float]] = field(default_factory=dict)
    seconds: dict[Ensemble, list[float]] = field(default_factory=dict)

    def add(self, attack: Ensemble, model: str, encoding: str, values: Sequence[float]) -> None:
        self.similarities.setdefault((attack, model, encoding), []).extend(values)

    def of(self, attack: Ensemble, model: str, encoding: str = EXPORT) -> list[float]:
        return self.similarities.get((attack, model, encoding), [])


@dataclass(frozen=True)
class Cell:
    """Pairs below the threshold of one model on one attack, out of ``pairs``, and the attack's face HaarPSI."""

    below: int
    pairs: int
    haarpsi: float

    @property
    def share(self) -> float:
        return self.below / self.pairs if self.pairs else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.below, self.pairs)


def _cell(scores: Scores, attack: Ensemble, model: str, threshold: float, encoding: str = EXPORT) -> Cell:
    values = scores.of(attack, model, encoding)
    quality = scores.haarpsi.get(attack, [])
    mean_quality = sum(quality) / len(quality) if quality else float("nan")
    return Cell(sum(v < threshold for v in values), len(values), mean_quality)


def matrix_cells(plan: Plan, scores: Scores, thresholds: Mapping[str, float]) -> dict[tuple[str, str], Cell | None]:
    """Every (row, column) cell: protection of the column's model against the row less the column's family."""
    return {
        key: None if attack is None else _cell(scores, attack, key[1], thresholds[key[1]])
        for key, attack in plan.cells.items()
    }


def modern_mean(
    row: Row, cells: Mapping[tuple[str, str], Cell | None], columns: Sequence[str], manifest: Mapping[str, _Spec]
) -> float | None:
    """The mean share protected over the row's modern columns (cells with pairs); None when there are none."""
    shares = [
        cell.share
        for column in columns
        if is_modern(manifest[column]) and (cell := cells[(row.name, column)]) is not None and cell.pairs
    ]
    return sum(shares) / len(shares) if shares else None


def white_box(
    row: Row, scores: Scores, thresholds: Mapping[str, float], encoding: str = EXPORT
) -> dict[str, tuple[int, int]]:
    """Per member of the row with a threshold: (pairs still matched, pairs) on the photos its whole ensemble
    protected. Matched means at or above the member's FAR 1e-3 threshold."""
    attack = frozenset(row.surrogates)
    out = {}
    for member in row.surrogates:
        if member in thresholds:
            values = scores.of(attack, member, encoding)
            out[member] = (sum(v >= thresholds[member] for v in values), len(values))
    return out


# --- running the attacks ---------------------------------------------------------------------------------------


def as_exported(source: Path, protected: torch.Tensor) -> torch.Tensor:
    """The protected photo as ``facecloak protect`` writes it (the source's format, its estimated JPEG quality),
    read back: what a recogniser gets from the posted file."""
    with tempfile.TemporaryDirectory(prefix="facecloak-transfer-") as folder:
        return load_image(export_protected(source, protected, Path(folder)))


def _embed(model: FaceModel, photo: torch.Tensor, face: Face) -> torch.Tensor:
    return degraded_embeddings(model, photo, face, [Transform()])[0]


class CleanEmbeddings:
    """Each clean photo embedded once per model, whichever rows, columns and folders need it."""

    def __init__(self, models: Mapping[str, FaceModel]) -> None:
        self.models = models
        self._cache: dict[Path, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def get(self, path: Path, face: Face) -> dict[str, torch.Tensor]:
        if path not in self._cache:
            image = load_image(path)
            self._cache[path] = {name: _embed(model, image, face) for name, model in self.models.items()}
        return self._cache[path]


@torch.no_grad()
def _score(
    scores: Scores,
    attack: Ensemble,
    scorers: Sequence[FaceModel],
    photos: Mapping[str, torch.Tensor],
    face: Face,
    references: Sequence[dict[str, torch.Tensor]],
) -> None:
    """Each scorer's similarities of the protected face (as exported, and unencoded) to the clean references."""
    for model in scorers:
        for encoding, photo in photos.items():
            embedding = _embed(model, photo, face)
            scores.add(attack, model.name, encoding, [float(embedding @ r[model.name]) for r in references])


def run_matrix(
    plan: Plan, faces: Sequence[Any], models: Mapping[str, FaceModel], config: Any, clean: CleanEmbeddings
) -> Scores:
    """Attack every face once per distinct ensemble of ``plan`` and score each attack with its scorers."""
    cloaks: dict[Ensemble, Cloak] = {}
    lpips = None
    for key, ensemble in plan.attacks.items():  # one LPIPS backbone for all of them, when it is cached
        cloaks[key] = Cloak([models[n] for n in ensemble], config, lpips=lpips)
        lpips = cloaks[key].lpips
    scores, started = Scores(), time.perf_counter()
    for index, item in enumerate(faces):
        try:
            photo = load_image(item.photo)
        except ImageLoadError as err:
            print(f"skipping {item.photo.name}: {err}", file=sys.stderr)
            continue
        references = [clean.get(path, face) for path, face in item.references]
        scores.faces.append((f"{item.photo.parent.name}/{item.photo.name}", len(references)))
        for key, cloak in cloaks.items():
            cloak.memory.clear()  # every face from cold: a warm start would carry one ensemble's change to another
            t0 = time.perf_counter()
            result = cloak(photo, [item.face])
            scores.seconds.setdefault(key, []).append(time.perf_counter() - t0)
            crops = face_crops(item.face, result.photo, photo)
            scores.haarpsi.setdefault(key, []).append(float(haarpsi(*crops)[0]))
            photos = {EXPORT: as_exported(item.photo, result.photo), UNENCODED: result.photo}
            _score(scores, key, [models[n] for n in plan.scorers[key]], photos, item.face, references)
        elapsed = time.perf_counter() - started
        print(
            f"[{index + 1}/{len(faces)}] {item.photo.parent.name}: {len(cloaks)} attacks, "
            f"{elapsed / (index + 1) * (len(faces) - index - 1):.0f} s left",
            flush=True,
        )
    return scores


# --- the table -------------------------------------------------------------------------------------------------


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f}%"


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "— (no surrogate left)"
    if not cell.pairs:
        return "— (no pairs)"
    lo, hi = cell.interval
    return f"{cell.share * 100:.0f}% [{lo * 100:.0f}-{hi * 100:.0f}], {cell.haarpsi:.4f}"


def _white_box_text(counts: Mapping[str, tuple[int, int]]) -> str:
    shares = {name: matched / pairs for name, (matched, pairs) in counts.items() if pairs}
    if not shares:
        return "—"
    worst = max(shares, key=shares.__getitem__)
    return f"{sum(shares.values()) / len(shares) * 100:.0f}% (worst {worst} {shares[worst] * 100:.0f}%)"


@dataclass(frozen=True)
class MatrixResult:
    """One photo folder's matrix, ready to print: what :func:`transfer_table` and the JSON summary read."""

    plan: Plan
    scores: Scores
    thresholds: Mapping[str, float]
    faces: int

    def summary(self, manifest: Mapping[str, _Spec]) -> dict[str, Any]:
        """The matrix as JSON (``--output``): every cell with its ensemble, counts and encodings, per row."""
        cells = matrix_cells(self.plan, self.scores, self.thresholds)
        rows = []
        for row in self.plan.rows:
            rows.append(
                {
                    "row": row.name,
                    "surrogates": list(row.surrogates),
                    "cells": {column: self._cell_summary(row, column) for column in self.plan.columns},
                    "mean_modern": modern_mean(row, cells, self.plan.columns, manifest),
                    "white_box_still_matched": {
                        encoding: {
                            n: list(v) for n, v in white_box(row, self.scores, self.thresholds, encoding).items()
                        }
                        for encoding in (EXPORT, UNENCODED)
                    },
                    "haarpsi": _mean(self.scores.haarpsi.get(frozenset(row.surrogates), [])),
                    "seconds_per_face": _mean(self.scores.seconds.get(frozenset(row.surrogates), [])),
                }
            )
        photos = [{"photo": name, "pairs": pairs} for name, pairs in self.scores.faces]
        return {"faces": self.faces, "photos": photos, "columns": self.plan.columns, "rows": rows}

    def _cell_summary(self, row: Row, column: str) -> dict[str, Any] | None:
        attack = self.plan.cells[(row.name, column)]
        if attack is None:
            return None
        exported = _cell(self.scores, attack, column, self.thresholds[column])
        unencoded = _cell(self.scores, attack, column, self.thresholds[column], UNENCODED)
        return {
            "ensemble": list(self.plan.attacks[attack]),
            "below": exported.below,
            "pairs": exported.pairs,
            "share": exported.share,
            "ci": exported.interval,
            "share_unencoded": unencoded.share,
            "haarpsi": exported.haarpsi,
            "similarities": self.scores.of(attack, column),
            "haarpsi_per_face": self.scores.haarpsi.get(attack, []),
        }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


TRANSFER_LEGEND = (
    "Each cell: share of pairs (the protected photo as the export writes it, against another clean photo of the same",
    "person) below the column's FAR 1e-3 threshold, higher is better; 95% Wilson interval in brackets; then the",
    "face HaarPSI of that cell's attack. A cell attacks with the row's surrogates less every model of the column's",
    "family. Pairs of one face are not independent, so the intervals are too narrow by up to sqrt(pairs per face).",
    "White-box still matched: the row's own members still matching the photo its whole ensemble protected, after",
    "the export's encoding (mean over members; lower is better); in brackets before any encoding.",
)


def transfer_table(result: MatrixResult, manifest: Mapping[str, _Spec], heading: str, command: str) -> str:
    """The results-page section of one folder's matrix."""
    plan = result.plan
    cells = matrix_cells(plan, result.scores, result.thresholds)
    modern = [c for c in plan.columns if is_modern(manifest[c])]
    pairs = sorted({c.pairs for c in cells.values() if c is not None})
    lines = [
        heading,
        "",
        f"Command: `{command}` ({machine_line()}).",
        f"{result.faces} protected faces; {'/'.join(map(str, pairs)) or 0} pairs per cell. "
        f"Modern columns (in the mean): {', '.join(modern) or 'none'}.",
        "",
        *TRANSFER_LEGEND,
        "",
        "| row | " + " | ".join(plan.columns) + " | mean over left-out modern models | white-box still matched |",
        "|---|" + "---|" * (len(plan.columns) + 2),
    ]
    for row in plan.rows:
        texts = [_cell_text(cells[(row.name, column)]) for column in plan.columns]
        exported = white_box(row, result.scores, result.thresholds, EXPORT)
        unencoded = white_box(row, result.scores, result.thresholds, UNENCODED)
        box = f"{_white_box_text(exported)} [{_white_box_text(unencoded)}]"
        mean = _percent(modern_mean(row, cells, plan.columns, manifest))
        lines.append(f"| {row.name} | " + " | ".join(texts) + f" | {mean} | {box} |")
    lines += ["", "Surrogates per row:", ""]
    lines += [f"- {row.name}: {', '.join(row.surrogates)}" for row in plan.rows]
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------------------------


def _rows(args: argparse.Namespace, roles: Roles, known: Sequence[str]) -> list[Row]:
    rows = [parse_row(text, roles.ensemble, known) for text in args.rows]
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError("a row is given twice")
    return rows


def _check_ready(names: Sequence[str], manifest: Mapping[str, Any]) -> None:
    missing = [n for n in names if not cache_status(manifest[n]).ready]
    if missing:
        raise BenchInputError(
            f"models not converted: {', '.join(missing)}; run 'facecloak models --build {' '.join(missing)}'"
        )


def _trained_surrogates(given: Sequence[str]) -> dict[str, FaceModel]:
    """``--surrogate NAME=PATH`` items: trained surrogates (``facecloak train-surrogate``) loaded under NAME."""
    out: dict[str, FaceModel] = {}
    for item in given:
        from ..train.surrogate import load_surrogate

        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--surrogate takes NAME=PATH, got {item!r}")
        if not Path(path).is_file():
            raise ValueError(f"--surrogate {name}: no file {path}")
        out[name.strip()] = load_surrogate(Path(path), name=name.strip())
    return out


def _settings_slug(knobs: Mapping[str, object]) -> str:
    """``--set`` knobs as a results-page key part, e.g. ``-effort_margin-0.0``."""
    return "".join(f"-{k}-{v}" for k, v in sorted(knobs.items())).replace(" ", "")


@reports_input_errors
def run_transfer_benchmark(args: argparse.Namespace) -> int:
    manifest, roles = load_manifest(), Roles.load()
    columns = transfer_columns(manifest, roles.evaluators)
    try:
        knobs = parse_assignments(args.set)
        config = build_config(args.preset, steps=args.steps, knobs=knobs, device="cpu")
        trained = _trained_surrogates(args.surrogate)
        taken = sorted(set(trained) & set(manifest))
        if taken:
            raise ValueError(f"--surrogate {taken[0]}: a model of the zoo has that name; choose another")
        manifest = {**manifest, **{name: model.spec for name, model in trained.items()}}
        rows = _rows(args, roles, list(manifest))
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if min(args.identities, args.probes, 1 if args.steps is None else args.steps) < 1:
        raise BenchInputError("--identities, --probes and --steps must be at least 1")
    folders, root = data_folders(args.data, ("lfw", "people"))
    check_results_page(args.results)
    plan = plan_matrix(rows, columns, manifest)
    _check_ready([n for n in plan.models if n not in trained], manifest)
    configure_cpu_threads()
    models = {name: trained[name] if name in trained else load_model(name) for name in plan.models}
    thresholds = {n: manifest[n].verification.threshold_far_1e3 for n in plan.models if manifest[n].verification}
    scorer_names = list(dict.fromkeys(n for scorers in plan.scorers.values() for n in scorers))
    clean = CleanEmbeddings({n: models[n] for n in scorer_names})
    print(f"columns: {', '.join(columns)}; {len(plan.attacks)} attacks per face for {len(rows)} row(s)", flush=True)
    summaries = {}
    for folder in folders:
        if not folder.is_dir():
            print(f"skipping {folder}: not found", file=sys.stderr)
            continue
        faces = _tuning_faces(folder, args.identities, args.probes, args.sample_seed, args.every_photo)
        if not faces:
            print(f"skipping {folder}: no identity with a detectable face in two photos", file=sys.stderr)
            continue
        print(f"{portable_path(folder, root)}: {len(faces)} faces", flush=True)
        result = MatrixResult(plan, run_matrix(plan, faces, models, config, clean), thresholds, len(faces))
        summaries[folder.name] = result.summary(manifest)
        heading = f"### Transfer matrix, `{args.preset}` preset"
        heading += f", steps {args.steps}" if args.steps is not None else ""
        heading += f", {' '.join(args.set)}" if args.set else ""
        heading += f", {dataset_label([str(folder)])} ({len(faces)} faces)"
        table = transfer_table(result, manifest, heading, this_command(root))
        print("\n" + table + "\n")
        steps = f"-steps{args.steps}" if args.steps is not None else ""
        key = f"transfer-{args.preset}{steps}{_settings_slug(knobs)}-{folder.name}"
        write_section(args.results, key, table)
    if not summaries:
        raise BenchInputError("no photo folder with usable identities: pass --data with lfw/ or people/ style folders")
    if args.output:
        write_json(args.output, {"preset": args.preset, "steps": config.steps, "set": knobs, "folders": summaries})
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_labelled_data_argument(parser)
    parser.add_argument(
        "--identities",
        type=int,
        default=16,
        help="identities sampled per folder (a folder with fewer: all; default: 16)",
    )
    parser.add_argument("--probes", type=int, default=3, help="clean photos per protected one (default: 3)")
    parser.add_argument("--sample-seed", type=int, default=123, help="which identities (as bench tune; default: 123)")
    parser.add_argument(
        "--every-photo",
        action="store_true",
        help="protect each photo of a chosen identity in turn (more faces from few identities; default: off)",
    )
    parser.add_argument("--preset", default="mid", choices=["low", "mid", "high"], help="preset (default: mid)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the preset's)")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=[DEFAULT_ROW],
        metavar="ROW",
        help="surrogate sets, one row each: 'default' (the manifest's ensemble), 'default+NAME', 'default-NAME' "
        "(combinable), or 'NAME,NAME,...' (default: default)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KNOB=VALUE",
        help="attack knobs for every cell, as 'facecloak protect --set' (default: the preset's)",
    )
    parser.add_argument(
        "--surrogate",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a trained surrogate (facecloak train-surrogate) usable in --rows as NAME; its family is its base "
        "model's (default: none)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the matrix as JSON here (default: none)")
    add_results_argument(parser)
