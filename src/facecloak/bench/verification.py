"""Face verification on LFW: pairs, detection cache, embeddings and the numbers the manifest stores.

Same-person pairs come from LFW's own ``pairs.txt`` (those whose photos are present); impostor
scores come from every cross-identity pair of the embedded photos (sampled), so the FAR=1e-3
threshold rests on tens of thousands of impostor pairs rather than a few hundred.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.detect import Face, FaceDetector
from ..core.files import replace_atomically
from ..core.image import load_image
from ..core.zoo.cache import cache_root
from ..core.zoo.model import FaceModel

Progress = Callable[[int, int], None]


def same_person_pairs(lfw_dir: Path, pairs_file: Path, limit: int | None = None) -> list[tuple[Path, Path]]:
    """Same-person pairs of ``pairs.txt`` whose two photos are in ``lfw_dir``."""
    pairs = []
    for line in pairs_file.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) != 3:
            continue
        name, a, b = fields[0], int(fields[1]), int(fields[2])
        pa, pb = (lfw_dir / name / f"{name}_{i:04d}.jpg" for i in (a, b))
        if pa.is_file() and pb.is_file():
            pairs.append((pa, pb))
    if limit is not None:
        pairs = pairs[:limit]
    return pairs


def identity_of(path: Path) -> str:
    return path.parent.name


def central_face(faces: Sequence[Face], height: int, width: int) -> Face | None:
    """The detected face closest to the photo centre (LFW crops centre the labelled person)."""
    if not faces:
        return None
    cy, cx = height / 2, width / 2

    def distance(face: Face) -> float:
        x0, y0, x1, y1 = face.box
        return math.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy)

    return min(faces, key=distance)


class DetectionCache:
    """Detected central face per photo, stored as JSON so benchmarks detect each photo once."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_root() / "detections" / "central_faces.json"
        self._entries: dict[str, dict | None] = {}
        if self.path.is_file():
            self._entries = json.loads(self.path.read_text())

    def get(self, photo_path: Path, detector: FaceDetector) -> Face | None:
        key = str(photo_path.resolve())
        if key not in self._entries:
            photo = load_image(photo_path)
            face = central_face(detector.detect(photo), photo.shape[-2], photo.shape[-1])
            self._entries[key] = face.to_dict() if face else None
        entry = self._entries[key]
        return Face.from_dict(entry) if entry else None

    def save(self) -> None:
        """Write the cache, keeping what other processes (benchmarks run side by side) saved meanwhile."""
        entries = dict(self._entries)
        with contextlib.suppress(OSError, ValueError):
            entries = {**json.loads(self.path.read_text()), **entries}
        replace_atomically(self.path, lambda tmp: tmp.write_text(json.dumps(entries)))


@torch.no_grad()
def embed_photos(
    model: FaceModel,
    photos: Sequence[Path],
    faces: Sequence[Face],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``N,D`` embeddings of one face per photo, aligned for ``model``."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(photos), batch_size):
        crops = []
        for path, face in zip(photos[start : start + batch_size], faces[start : start + batch_size], strict=True):
            crops.append(model.aligner(load_image(path), [face]))
        batch = torch.cat(crops).to(device)
        out.append(model(batch).cpu())
        if progress:
            progress(min(start + batch_size, len(photos)), len(photos))
    return torch.cat(out) if out else torch.zeros(0, model.embedding_dim)


@dataclass(frozen=True)
class VerificationResult:
    accuracy: float  # 10-fold cross-validated, balanced same/different
    auc: float
    threshold_far_1e2: float
    threshold_far_1e3: float
    tar_far_1e3: float
    pairs_same: int
    pairs_different: int

    def to_dict(self) -> dict:
        return asdict(self)


def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """Probability that a same-person pair scores above a different-person pair (ties count half)."""
    scores = np.concatenate([same, different])
    ranks = _average_ranks(scores)
    rank_sum = ranks[: len(same)].sum()
    return float((rank_sum - len(same) * (len(same) + 1) / 2) / (len(same) * len(different)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def threshold_at_far(different: np.ndarray, far: float) -> float:
    """Cosine above which a fraction ``far`` of impostor pairs still match."""
    return float(np.quantile(different, 1.0 - far, method="higher"))


def cross_validated_accuracy(same: np.ndarray, different: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """LFW-style accuracy: threshold chosen on 9 folds, accuracy measured on the 10th."""
    rng = np.random.default_rng(seed)
    n = min(len(same), len(different))
    same = rng.permutation(same)[:n]
    different = rng.permutation(different)[:n]
    fold_of = np.arange(n) % folds
    correct = 0
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        candidates = np.concatenate([same[train], different[train]])
        best = max(candidates, key=lambda t: (same[train] >= t).sum() + (different[train] < t).sum())
        correct += (same[test] >= best).sum() + (different[test] < best).sum()
    return float(correct / (2 * n))


def verification_result(same: np.ndarray, different: np.ndarray) -> VerificationResult:
    t3 = threshold_at_far(different, 1e-3)
    return VerificationResult(
        accuracy=cross_validated_accuracy(same, different),
        auc=roc_auc(same, different),
        threshold_far_1e2=threshold_at_far(different, 1e-2),
        threshold_far_1e3=t3,
        tar_far_1e3=float((same > t3).mean()),
        pairs_same=len(same),
        pairs_different=len(different),
    )


def impostor_index_pairs(identities: Sequence[str], count: int, seed: int = 0) -> np.ndarray:
    """``count`` random index pairs (i, j) whose photos show two different people."""
    rng = random.Random(seed)
    n = len(identities)
    pairs: set[tuple[int, int]] = set()
    attempts = 0
    while len(pairs) < count and attempts < count * 20:
        attempts += 1
        i, j = rng.randrange(n), rng.randrange(n)
        if identities[i] != identities[j]:
            pairs.add((min(i, j), max(i, j)))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class PairSet:
    """Photos with a usable face, the same-person pairs and impostor pairs between them (indices)."""

    photos: list[Path]
    faces: list[Face]
    same: np.ndarray
    different: np.ndarray


def build_pair_set(
    lfw_dir: Path,
    pairs_file: Path,
    detector: FaceDetector,
    same_limit: int | None = None,
    impostor_pairs: int = 50_000,
    seed: int = 0,
    progress: Progress | None = None,
) -> PairSet:
    pairs = same_person_pairs(lfw_dir, pairs_file, same_limit)
    unique = sorted({p for pair in pairs for p in pair})
    cache = DetectionCache()
    faces: dict[Path, Face] = {}
    for i, path in enumerate(unique):
        face = cache.get(path, detector)
        if face is not None:
            faces[path] = face
        if progress:
            progress(i + 1, len(unique))
    cache.save()
    photos = [p for p in unique if p in faces]
    index = {p: i for i, p in enumerate(photos)}
    same = np.array([(index[a], index[b]) for a, b in pairs if a in index and b in index], dtype=np.int64)
    different = impostor_index_pairs([identity_of(p) for p in photos], impostor_pairs, seed)
    return PairSet(photos, [faces[p] for p in photos], same.reshape(-1, 2), different)


def pair_scores(embeddings: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    e = embeddings.numpy()
    return np.einsum("nd,nd->n", e[pairs[:, 0]], e[pairs[:, 1]])


def evaluate_model(model: FaceModel, pair_set: PairSet, progress: Progress | None = None) -> VerificationResult:
    embeddings = embed_photos(model, pair_set.photos, pair_set.faces, progress=progress)
    return verification_result(pair_scores(embeddings, pair_set.same), pair_scores(embeddings, pair_set.different))
