"""Surrogates trained to transfer: a converted recogniser fine-tuned to be slightly robust and flat.

Attacks computed on a surrogate with a little adversarial robustness (Springer et al., NeurIPS 2021) or on weights
from a flat region of the loss (SWA; LGV, Gubri et al., ECCV 2022) transfer better to other recognisers. The
objective needs no labels: self-distillation towards the base model's own clean embeddings. Per batch a PGD attack
(L-inf or L2, random start) lowers the student's cosine to the teacher embedding within a small epsilon, and the
student is trained to keep both the attacked and the clean crop close to it::

    loss = (1 - cos(student(x_adv), t)).mean() + clean_weight * (1 - cos(student(x), t)).mean()

Optionally, after a fraction of training the learning rate is held constant and the weights are averaged along the
trajectory (SWA / LGV). The result must keep a held-out clean cosine to the base model of at least
``min_clean_cosine`` so the surrogate still recognises faces.

Data: aligned crops of ``lfw_rest/`` only (LFW people with one or two photos, disjoint from every benchmark and
tuning identity in ``lfw/``), MTCNN's central face per photo. Weights are written as fp16 safetensors carrying their
provenance (:func:`save_surrogate`) and loaded back as a :class:`FaceModel` of the base model's family
(:func:`load_surrogate`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import __version__
from ..core.files import replace_atomically
from ..core.zoo.cache import cache_root, weights_path
from ..core.zoo.model import FaceModel

if TYPE_CHECKING:
    from ..bench.verification import DetectionCache
    from ..core.detect import FaceDetector

Log = Callable[[str], None]

NORMS = ("linf", "l2")
DEFAULT_EPSILON = {"linf": 2.0, "l2": 0.5}
FORMAT = "facecloak-surrogate/1"
DATA_SUBFOLDER = "lfw_rest"

# The held-out robustness measure: a 10-step L-inf PGD at 4/255, step 1/255, from a seeded random start. The
# random start matters: at the clean crop the base model's cosine to its own embedding is at its maximum (1), so
# its gradient there is rounding noise (about 1e-11) and a PGD started there wanders for its first steps, which
# would make the base look more robust than any fine-tuned copy of it.
EVAL_SEED = 0
EVAL_EPSILON = 4 / 255
EVAL_STEPS = 10
EVAL_STEP_SIZE = EVAL_EPSILON / 4


# --- configuration ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Per-batch augmentation of aligned crops (applied after the flip, which swaps in the mirror target).

    Kept small: with precomputed targets the student learns to map the augmented crop to the un-augmented crop's
    embedding. Measured on 128 lfw_rest crops, these defaults keep the base model's cosine between an augmented
    crop and its target at 0.958 (mobileface) and 0.981 (facesdk_mbf); a 3-pixel shift alone drops it to 0.86 and
    0.95, and fine-tuning towards such targets costs clean fidelity to the base (0.983 vs 0.994 after 48 steps).
    """

    shift: float = 1.0  # crop pixels, uniform in [-shift, shift] per axis
    scale: float = 0.02  # relative, uniform in [1 - scale, 1 + scale]
    rotation: float = 1.0  # degrees, uniform in [-rotation, rotation]
    brightness: float = 0.08  # added, uniform in [-brightness, brightness]
    contrast: float = 0.2  # relative, around each crop's mean
    saturation: float = 0.2  # relative, around each pixel's grey
    channel_gain: float = 0.04  # per-channel relative gain (a colour cast)
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 0.8)  # crop pixels


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``epsilon`` and ``step_size`` are in 8-bit levels for ``linf`` (2 = 2/255) and in the L2
    norm of the whole crop's perturbation in [0, 1] pixels for ``l2``."""

    base: str
    norm: str = "linf"
    epsilon: float = 2.0
    pgd_steps: int = 2
    step_size: float | None = None  # None: 2.5 * epsilon / pgd_steps (Madry et al.)
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4  # Adam; cosine decay to 0 over the run, or to swa_lr at swa_start
    clean_weight: float = 1.0
    swa_start: float | None = None  # fraction of the run after which weights are averaged at a constant lr
    swa_lr: float | None = None  # the constant learning rate while averaging; None: lr
    min_clean_cosine: float = 0.95  # held-out mean clean cosine to the base model the result must keep
    holdout: int = 256  # faces held out for evaluation (whole people, a fixed draw)
    seed: int = 0
    # live_teacher: targets are the frozen base model's embeddings of each augmented crop (one more forward pass
    # per batch), so the augmentation only varies the inputs; otherwise the precomputed embeddings of the un-augmented
    # crop (or its mirror) are the targets, which also teaches invariance to the augmentation
    live_teacher: bool = False
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {self.norm!r}")
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be positive, not {self.epsilon}")
        if self.norm == "linf" and self.epsilon > 32:
            raise ValueError(f"an L-inf epsilon is in 8-bit levels (e.g. 2 for 2/255); {self.epsilon} is too large")
        if self.pgd_steps < 1:
            raise ValueError(f"pgd_steps must be at least 1, not {self.pgd_steps}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be positive, not {self.step_size}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch size and learning rate must be positive")
        if self.clean_weight < 0:
            raise ValueError(f"clean_weight must be >= 0, not {self.clean_weight}")
        if self.swa_start is not None and not 0 <= self.swa_start < 1:
            raise ValueError(f"swa_start is a fraction of the run in [0, 1), not {self.swa_start}")
        if self.swa_lr is not None and self.swa_lr <= 0:
            raise ValueError(f"swa_lr must be positive, not {self.swa_lr}")
        if not 0 < self.min_clean_cosine <= 1:
            raise ValueError(f"min_clean_cosine must be in (0, 1], not {self.min_clean_cosine}")
        if self.holdout < 1:
            raise ValueError(f"holdout must be at least 1, not {self.holdout}")

    @property
    def radius(self) -> float:
        """Epsilon in [0, 1] pixel units."""
        return self.epsilon / 255 if self.norm == "linf" else self.epsilon

    @property
    def step(self) -> float:
        """PGD step in [0, 1] pixel units."""
        size = self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.pgd_steps
        return size / 255 if self.norm == "linf" else size

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# --- data ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceCrops:
    """Aligned crops of one model (uint8, ``N,3,h,w``) with the base model's clean embeddings of each crop and of
    its mirror image (the self-distillation targets)."""

    crops: torch.Tensor
    targets: torch.Tensor
    mirror_targets: torch.Tensor
    people: tuple[str, ...]
    photos: tuple[str, ...]  # relative to the data folder
    skipped: int = 0  # photos without a detected face

    def __len__(self) -> int:
        return len(self.crops)

    def subset(self, index: torch.Tensor) -> FaceCrops:
        keep = index.tolist()
        return replace(
            self,
            crops=self.crops[index],
            targets=self.targets[index],
            mirror_targets=self.mirror_targets[index],
            people=tuple(self.people[i] for i in keep),
            photos=tuple(self.photos[i] for i in keep),
        )

    def describe(self) -> str:
        return f"{DATA_SUBFOLDER}: {len(self)} photos of {len(set(self.people))} people, disjoint from lfw/"


def to_float(crops: torch.Tensor) -> torch.Tensor:
    return crops.float() / 255


def to_uint8(crops: torch.Tensor) -> torch.Tensor:
    return (crops * 255).round().clamp(0, 255).to(torch.uint8)


def list_photos(data_folder: Path, limit: int | None = None) -> list[Path]:
    """Every photo of ``data_folder/lfw_rest`` (sorted), or a fixed random ``limit`` of them."""
    photos = sorted((Path(data_folder) / DATA_SUBFOLDER).glob("*/*.jpg"))
    if limit is not None and limit < len(photos):
        photos = sorted(random.Random(0).sample(photos, limit))
    return photos


def base_weights_sha256(base: str) -> str:
    """sha256 of the base model's converted weights file in the cache."""
    digest = hashlib.sha256()
    with open(weights_path(base), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def crops_cache_path(
    model: FaceModel, data_folder: Path, photos: Sequence[Path], cache_dir: Path | None = None
) -> Path:
    """Where the crops and targets of these photos for this model are cached: keyed by the model (name, converted
    weights, alignment) and the data (each photo's path within the data folder and size)."""
    key = {
        "model": model.name,
        "weights": base_weights_sha256(model.name),
        "alignment": repr(model.alignment),
        "photos": [[p.relative_to(data_folder).as_posix(), p.stat().st_size] for p in photos],
    }
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
    return (cache_dir or cache_root() / "training") / f"{model.name}-{digest}.pt"


@torch.no_grad()
def embed(model: FaceModel, crops: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``N,D`` embeddings of uint8 or float crops."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(crops), batch_size):
        batch = crops[start : start + batch_size]
        batch = to_float(batch) if batch.dtype == torch.uint8 else batch
        out.append(model(batch.to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embedding_dim)


def training_crops(
    model: FaceModel,
    data_folder: Path,
    limit: int | None = None,
    detections: DetectionCache | None = None,
    detector: FaceDetector | None = None,
    cache_dir: Path | None = None,
    log: Log = print,
) -> FaceCrops:
    """Aligned crops (``model.aligner``, the central MTCNN face of each photo) of every photo in
    ``data_folder/lfw_rest`` with the base ``model``'s clean targets; cached on disk so a re-run skips detection and
    alignment. ``detections`` default to the user's detection cache, ``detector`` to MTCNN's default settings."""
    from ..bench.verification import DetectionCache
    from ..core.detect import FaceDetector
    from ..core.image import load_image

    data_folder = Path(data_folder)
    photos = list_photos(data_folder, limit)
    if not photos:
        raise FileNotFoundError(f"no photos (*/*.jpg) in {data_folder / DATA_SUBFOLDER}")
    path = crops_cache_path(model, data_folder, photos, cache_dir)
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        data = FaceCrops(
            stored["crops"],
            stored["targets"],
            stored["mirror_targets"],
            tuple(stored["people"]),
            tuple(stored["photos"]),
            int(stored["skipped"]),
        )
        log(f"{len(data)} crops from {path} ({data.describe()})")
        return data
    detections = detections or DetectionCache()
    detector = detector or FaceDetector()
    crops, people, names = [], [], []
    start = time.perf_counter()
    for i, photo_path in enumerate(photos):
        face = detections.get(photo_path, detector)
        if face is not None:
            crops.append(to_uint8(model.aligner(load_image(photo_path), [face])))
            people.append(photo_path.parent.name)
            names.append(photo_path.relative_to(data_folder).as_posix())
        if (i + 1) % 500 == 0:
            log(f"  aligned {i + 1}/{len(photos)} photos ({eta_text(start, i + 1, len(photos))})")
    detections.save()
    if not crops:
        raise ValueError(f"no face found in any photo of {data_folder / DATA_SUBFOLDER}")
    stacked = torch.cat(crops)
    log(f"  embedding {len(stacked)} crops and their mirror images with {model.name} (the targets)")
    data = FaceCrops(
        stacked,
        embed(model, stacked),
        embed(model, stacked.flip(-1)),
        tuple(people),
        tuple(names),
        len(photos) - len(crops),
    )
    stored = {
        "crops": data.crops,
        "targets": data.targets,
        "mirror_targets": data.mirror_targets,
        "people": list(data.people),
        "photos": list(data.photos),
        "skipped": data.skipped,
    }
    replace_atomically(path, lambda tmp: torch.save(stored, tmp))
    log(f"{len(data)} crops in {time.perf_counter() - start:.0f} s ({data.describe()}; {data.skipped} without a face)")
    return data


def holdout_split(people: Sequence[str], count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held_out)``: whole people are held out (no person on both sides), drawn with a fixed
    seed until ``count`` faces, so every run of the same data evaluates on the same faces."""
    by_person: dict[str, list[int]] = {}
    for i, person in enumerate(people):
        by_person.setdefault(person, []).append(i)
    names = sorted(by_person)
    random.Random(seed).shuffle(names)
    held: list[int] = []
    for name in names:
        if len(held) + len(by_person[name]) <= count:
            held += by_person[name]
        if len(held) >= count:
            break
    held_set = set(held)
    train = [i for i in range(len(people)) if i not in held_set]
    return torch.tensor(train, dtype=torch.long), torch.tensor(sorted(held), dtype=torch.long)


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` batches of indices, each epoch a fresh permutation of ``range(n)``."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


# --- augmentation -------------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator, radius: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator) * 2 - 1) * radius


def augment(crops: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Random small translation, scale and rotation (kornia), brightness, contrast, saturation and colour cast, and
    an occasional gaussian blur of ``B,3,h,w`` crops in [0, 1]; every crop draws its own."""
    b, _, h, w = crops.shape
    device = crops.device
    # draw everything first, on the CPU generator, so the stream does not depend on which crops blur
    angle = _uniform(generator, aug.rotation, b)
    scale = 1 + _uniform(generator, aug.scale, b, 1)
    shift = _uniform(generator, aug.shift, b, 2)
    saturation = 1 + _uniform(generator, aug.saturation, b, 1, 1, 1)
    contrast = 1 + _uniform(generator, aug.contrast, b, 1, 1, 1)
    brightness = _uniform(generator, aug.brightness, b, 1, 1, 1)
    gain = 1 + _uniform(generator, aug.channel_gain, b, 3, 1, 1)
    blur = torch.rand(b, generator=generator) < aug.blur_probability
    low, high = aug.blur_sigma
    sigma = low + torch.rand(b, generator=generator) * (high - low)

    center = torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).expand(b, 2)
    matrix = get_rotation_matrix2d(center, angle, scale.expand(b, 2))
    matrix[:, :, 2] += shift
    out = warp_affine(crops, matrix.to(device, crops.dtype), (h, w), padding_mode="reflection", align_corners=True)
    grey = rgb_to_grayscale(out)
    out = grey + saturation.to(device) * (out - grey)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (mean + contrast.to(device) * (out - mean) + brightness.to(device)) * gain.to(device)
    if blur.any():
        kernel = 2 * math.ceil(3 * high) + 1
        blurred = gaussian_blur2d(out, (kernel, kernel), sigma[:, None].expand(b, 2).to(device, crops.dtype))
        out = torch.where(blur.to(device)[:, None, None, None], blurred, out)
    return out.clamp(0, 1)


def make_batch(
    data: FaceCrops, index: torch.Tensor, aug: Augmentation | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``B,3,h,w`` and their targets: half of them mirrored (with the mirror image's target), augmented."""
    crops = to_float(data.crops[index])
    flip = torch.rand(len(index), generator=generator) < 0.5
    crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    targets = torch.where(flip[:, None], data.mirror_targets[index], data.targets[index])
    if aug is not None:
        crops = augment(crops, aug, generator)
    return crops, targets


# --- attack -------------------------------------------------------------------------------------------------------


def cosine(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cosine of (normalised) embeddings to (normalised) targets."""
    return (F.normalize(embeddings, dim=-1) * F.normalize(targets, dim=-1)).sum(-1)


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def random_start(shape: torch.Size, norm: str, radius: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random perturbation inside the ball: uniform per pixel (L-inf), or a random direction at a uniform
    radius (L2)."""
    if norm == "linf":
        return (torch.rand(shape, generator=generator) * 2 - 1) * radius
    direction = torch.randn(shape, generator=generator)
    length = radius * torch.rand(shape[0], generator=generator).view(-1, *([1] * (len(shape) - 1)))
    return direction / _per_sample_norm(direction) * length


def project(delta: torch.Tensor, norm: str, radius: float) -> torch.Tensor:
    """The nearest perturbation inside the L-inf or L2 ball of ``radius``."""
    if norm == "linf":
        return delta.clamp(-radius, radius)
    return delta * (radius / _per_sample_norm(delta)).clamp(max=1.0)


def descent_step(delta: torch.Tensor, grad: torch.Tensor, norm: str, step: float) -> torch.Tensor:
    """One steepest-descent step of the given norm (the sign for L-inf, the normalised gradient for L2)."""
    if norm == "linf":
        return delta - step * grad.sign()
    return delta - step * grad / _per_sample_norm(grad)


def pgd_attack(
    model: FaceModel,
    crops: torch.Tensor,
    targets: torch.Tensor,
    norm: str,
    radius: float,
    steps: int,
    step: float,
    random_init: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crops within ``radius`` (L-inf or L2, [0, 1] pixels) of ``crops``, and in [0, 1], that lower ``model``'s
    cosine to ``targets``. Only the input receives gradients: the model's parameters are left untouched."""
    crops = crops.detach()
    delta = random_start(crops.shape, norm, radius, generator).to(crops) if random_init else torch.zeros_like(crops)
    delta = (crops + delta).clamp(0, 1) - crops
    for _ in range(steps):
        delta.requires_grad_(True)
        similarity = cosine(model(crops + delta), targets).sum()
        (grad,) = torch.autograd.grad(similarity, delta)
        delta = project(descent_step(delta.detach(), grad, norm, step), norm, radius)
        delta = (crops + delta).clamp(0, 1) - crops  # clamping only shrinks each pixel's change: still in the ball
    return (crops + delta).detach()


# --- training -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepStats:
    loss: float
    clean_cosine: float
    adversarial_cosine: float


def distillation_loss(
    model: FaceModel, crops: torch.Tensor, adversarial: torch.Tensor, targets: torch.Tensor, clean_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, clean cosines, adversarial cosines)``: the attacked and (weighted) clean crops' distance to the
    teacher targets. Both go through the network as one batch (batch norms use running statistics)."""
    if clean_weight == 0:
        adv = cosine(model(adversarial), targets)
        with torch.no_grad():
            clean = cosine(model(crops), targets)
        return (1 - adv).mean(), clean, adv.detach()
    embeddings = model(torch.cat([adversarial, crops]))
    adv, clean = cosine(embeddings, targets.repeat(2, 1)).chunk(2)
    loss = (1 - adv).mean() + clean_weight * (1 - clean).mean()
    return loss, clean.detach(), adv.detach()


def trainable_parameters(model: FaceModel) -> list[torch.nn.Parameter]:
    """Unfreeze the wrapped network's weight tensors (the model stays in eval mode). Single-number parameters stay
    frozen: in converted graphs they are structure, not weights (the input scaling ``(x - 127.5) * 0.0078125``, the
    0 of a ``Maximum(0, x)``), and Adam's steps of about ``lr`` each would move them far relative to their size."""
    params = [p for p in model.network.parameters() if p.is_floating_point() and p.numel() > 1]
    for param in params:
        param.requires_grad_(True)
    return params


def train_step(
    model: FaceModel,
    optimizer: torch.optim.Optimizer,
    crops: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator | None = None,
) -> StepStats:
    """PGD on the current student, then one optimiser step on the distillation loss."""
    adversarial = pgd_attack(
        model, crops, targets, config.norm, config.radius, config.pgd_steps, config.step, generator=generator
    )
    loss, clean, adv = distillation_loss(model, crops, adversarial, targets, config.clean_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return StepStats(loss.item(), clean.mean().item(), adv.mean().item())


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """Cosine decay from ``lr`` to 0 over the run; with SWA, cosine from ``lr`` to ``swa_lr`` until ``swa_start``
    and constant ``swa_lr`` after it."""
    if config.swa_start is None:
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    start = swa_start_step(total, config)
    low = config.swa_lr if config.swa_lr is not None else config.lr
    if step >= start:
        return low
    return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * step / start))


def swa_start_step(total: int, config: TrainConfig) -> int:
    return total if config.swa_start is None else min(total - 1, int(config.swa_start * total))


class WeightAverage:
    """Running mean of parameters along the training trajectory (SWA / LGV). Buffers (batch-norm statistics) are
    not averaged: the model stays in eval mode and never changes them."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.mean = [p.detach().clone() for p in params]
        self.count = 0

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor]) -> None:
        self.count += 1
        for mean, param in zip(self.mean, params, strict=True):
            mean.add_((param.detach() - mean) / self.count)

    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.Tensor]) -> None:
        for mean, param in zip(self.mean, params, strict=True):
            param.copy_(mean)


# --- evaluation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Held-out numbers: the clean cosine to the base model's embeddings, and that cosine after a seeded 10-step
    L-inf PGD at 4/255 on the evaluated model (higher = more robust)."""

    faces: int
    clean_mean: float
    clean_min: float
    robust_mean: float

    def line(self) -> str:
        return (
            f"held-out ({self.faces} faces): clean cosine to base mean {self.clean_mean:.4f} min {self.clean_min:.4f}; "
            f"after PGD-{EVAL_STEPS} L-inf 4/255: cosine {self.robust_mean:.4f}"
        )


def clean_cosines(model: FaceModel, data: FaceCrops, batch_size: int = 64) -> torch.Tensor:
    return cosine(embed(model, data.crops, batch_size), data.targets)


def evaluate(model: FaceModel, data: FaceCrops, batch_size: int = 64) -> Evaluation:
    device = next(model.parameters()).device
    clean = clean_cosines(model, data, batch_size)
    generator = torch.Generator().manual_seed(EVAL_SEED)
    robust = []
    for start in range(0, len(data), batch_size):
        crops = to_float(data.crops[start : start + batch_size]).to(device)
        targets = data.targets[start : start + batch_size].to(device)
        adv = pgd_attack(model, crops, targets, "linf", EVAL_EPSILON, EVAL_STEPS, EVAL_STEP_SIZE, True, generator)
        with torch.no_grad():
            robust.append(cosine(model(adv), targets).cpu())
    return Evaluation(len(data), clean.mean().item(), clean.min().item(), torch.cat(robust).mean().item())


def eta_text(start: float, done: float, total: float) -> str:
    elapsed = time.perf_counter() - start
    left = elapsed / done * (total - done) if done else float("nan")
    return f"{format_seconds(elapsed)} elapsed, ~{format_seconds(left)} left"


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass(frozen=True)
class TrainResult:
    before: Evaluation
    after: Evaluation
    passed: bool  # after.clean_mean >= config.min_clean_cosine
    steps: int
    train_faces: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def train_surrogate(
    model: FaceModel, data: FaceCrops, config: TrainConfig, log: Log = print, log_every_s: float = 30.0
) -> TrainResult:
    """Fine-tune ``model`` in place (its network's weights) on ``data`` less a fixed held-out set, evaluated before
    and after. With ``swa_start`` the averaged weights are the result."""
    from ..core.zoo.registry import load_model

    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # a fresh copy of the base (frozen, like every FaceModel): a deep copy would not do, graph networks' compiled
    # steps keep pointing at the original's parameters
    teacher = load_model(config.base, device) if config.live_teacher else None
    train_index, held_index = holdout_split(data.people, min(config.holdout, len(data) // 4))
    train, held = data.subset(train_index), data.subset(held_index)
    if len(train) == 0 or len(held) == 0:
        raise ValueError(f"too few faces to train and hold out ({len(data)})")
    steps = max(1, math.ceil(config.epochs * len(train) / config.batch_size))
    log(f"{len(train)} training faces, {len(held)} held out; {steps} steps of {config.batch_size} ({config.to_json()})")
    before = evaluate(model, held)
    log(f"[before] {before.line()}")

    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    average = WeightAverage(params) if config.swa_start is not None else None
    averaging_from = swa_start_step(steps, config)
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    stats: list[StepStats] = []
    start = last_log = time.perf_counter()
    for step, index in enumerate(batch_indices(len(train), config.batch_size, steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, config)
        crops, targets = make_batch(train, index, config.augmentation, generator)
        crops, targets = crops.to(device), targets.to(device)
        if teacher is not None:
            with torch.no_grad():
                targets = teacher(crops)
        stats.append(train_step(model, optimizer, crops, targets, config, generator))
        if average is not None and step >= averaging_from:
            average.update(params)
        now = time.perf_counter()
        if now - last_log >= log_every_s or step in (0, steps - 1):
            recent = stats[-max(1, min(len(stats), 50)) :]
            log(
                f"step {step + 1}/{steps} epoch {(step + 1) / steps_per_epoch:.2f}: "
                f"loss {sum(s.loss for s in recent) / len(recent):.4f} "
                f"clean cos {sum(s.clean_cosine for s in recent) / len(recent):.4f} "
                f"adv cos {sum(s.adversarial_cosine for s in recent) / len(recent):.4f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} "
                f"({(now - start) / ((step + 1) * config.batch_size) * 1000:.0f} ms/face; "
                f"{eta_text(start, step + 1, steps)})"
            )
            last_log = now
        if (step + 1) % steps_per_epoch == 0 and step + 1 < steps:
            clean = clean_cosines(model, held)
            log(f"  epoch {(step + 1) // steps_per_epoch}: held-out clean cosine mean {clean.mean():.4f}")
    seconds = time.perf_counter() - start
    if average is not None:
        average.copy_to(params)
        log(f"averaged {average.count} snapshots from step {averaging_from + 1}")
    for param in params:
        param.requires_grad_(False)
    after = evaluate(model, held)
    log(f"[after]  {after.line()}")
    passed = after.clean_mean >= config.min_clean_cosine
    if not passed:
        log(
            f"FAILED: held-out clean cosine to the base {after.clean_mean:.4f} < {config.min_clean_cosine}: "
            "the surrogate drifted too far from the base model"
        )
    return TrainResult(before, after, passed, steps, len(train), seconds)


# --- weights file -------------------------------------------------------------------------------------------------


def read_surrogate_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def save_surrogate(path: Path, model: FaceModel, metadata: Mapping[str, str]) -> Path:
    """fp16 safetensors of ``model.network.state_dict()`` with ``metadata`` (strings; it must name the ``base``
    model). The format mark, the base's cached-weights sha256 and the FaceCloak version are added when missing."""
    if "base" not in metadata:
        raise ValueError("surrogate metadata must name its base model ('base')")
    meta = {"format": FORMAT, "facecloak_version": __version__, **metadata}
    meta.setdefault("base_sha256", base_weights_sha256(meta["base"]))
    tensors = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.network.state_dict().items()
    }
    return replace_atomically(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_surrogate(path: Path | str, name: str | None = None, device: torch.device | str = "cpu") -> FaceModel:
    """The surrogate at ``path`` as a :class:`FaceModel` named ``name`` (default: the file's stem) of its base
    model's family, preprocessing and alignment. Refuses a file trained from other base weights than the cache's."""
    from ..core.zoo.registry import load_model

    path = Path(path)
    meta = read_surrogate_metadata(path)
    if meta.get("format") != FORMAT or "base" not in meta or "base_sha256" not in meta:
        raise ValueError(f"{path.name} is not a FaceCloak surrogate (no '{FORMAT}' metadata)")
    base = load_model(meta["base"])  # ModelNotReady when the base is not built
    cached = base_weights_sha256(meta["base"])
    if cached != meta["base_sha256"]:
        raise ValueError(
            f"{path.name} was trained from {meta['base']} weights with sha256 {meta['base_sha256'][:16]}..., but the "
            f"cached {meta['base']} weights have sha256 {cached[:16]}...: its weights would not fit; retrain it from "
            "the current base"
        )
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    base.network.load_state_dict(state, strict=True)
    spec = replace(base.spec, name=name or path.stem)
    model = FaceModel(spec, base.network, base.alignment, channels_last=base.channels_last, bfloat16=base.bfloat16)
    return model.to(device)


def surrogate_metadata(config: TrainConfig, data: FaceCrops, result: TrainResult, command: str) -> dict[str, str]:
    return {
        "base": config.base,
        "base_sha256": base_weights_sha256(config.base),
        "config": config.to_json(),
        "data": data.describe(),
        "heldout": json.dumps(
            {"before": asdict(result.before), "after": asdict(result.after), "passed": result.passed}, sort_keys=True
        ),
        "training": json.dumps({"steps": result.steps, "train_faces": result.train_faces, "seconds": result.seconds}),
        "command": command,
    }


# --- command line -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="the converted model to fine-tune (e.g. facesdk_mbf)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="the data folder holding lfw_rest/ (default: $FACECLOAK_DATA); only lfw_rest/ is read",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="PATH.safetensors", help="where to write weights")
    parser.add_argument("--norm", choices=NORMS, default="linf", help="the PGD ball (default: linf)")
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        metavar="E",
        help="PGD radius: linf in 8-bit levels, l2 in [0,1]-pixel L2 over the crop (default: 2 for linf, 0.5 for l2)",
    )
    parser.add_argument("--pgd-steps", type=int, default=2, metavar="K", help="PGD steps per batch (default: 2)")
    parser.add_argument(
        "--step-size", type=float, default=None, metavar="S", help="PGD step, epsilon's units (default: 2.5 eps / K)"
    )
    parser.add_argument("--epochs", type=float, default=3.0, metavar="N", help="passes over the data (default: 3)")
    parser.add_argument("--lr", type=float, default=1e-4, metavar="LR", help="Adam learning rate (default: 1e-4)")
    parser.add_argument("--batch", type=int, default=32, metavar="B", help="faces per batch (default: 32)")
    parser.add_argument(
        "--clean-weight", type=float, default=1.0, metavar="W", help="weight of the clean term (default: 1)"
    )
    parser.add_argument(
        "--swa-start",
        type=float,
        default=None,
        metavar="F",
        help="average weights after this fraction of the run, at a constant learning rate (default: off)",
    )
    parser.add_argument(
        "--swa-lr", type=float, default=None, metavar="LR", help="the constant rate while averaging (default: --lr)"
    )
    parser.add_argument(
        "--min-clean-cosine",
        type=float,
        default=0.95,
        metavar="C",
        help="held-out clean cosine to the base the result must keep, else the run fails (default: 0.95)",
    )
    parser.add_argument(
        "--live-teacher",
        action="store_true",
        help="targets from the base model on each augmented crop, not precomputed on the plain crop (default: off)",
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use N photos only, for quick runs")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        base=args.base,
        norm=args.norm,
        epsilon=args.epsilon if args.epsilon is not None else DEFAULT_EPSILON[args.norm],
        pgd_steps=args.pgd_steps,
        step_size=args.step_size,
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        clean_weight=args.clean_weight,
        swa_start=args.swa_start,
        swa_lr=args.swa_lr,
        min_clean_cosine=args.min_clean_cosine,
        seed=args.seed,
        live_teacher=args.live_teacher,
    )


def command_line(config: TrainConfig, data_folder: Path, out: Path, limit: int | None) -> str:
    """The full command that reproduces this run (every setting spelled out)."""
    words = ["facecloak", "train-surrogate", config.base, "--data", str(data_folder), "--norm", config.norm]
    words += ["--epsilon", f"{config.epsilon:g}", "--pgd-steps", str(config.pgd_steps)]
    if config.step_size is not None:
        words += ["--step-size", f"{config.step_size:g}"]
    words += ["--epochs", f"{config.epochs:g}", "--lr", f"{config.lr:g}", "--batch", str(config.batch_size)]
    words += ["--clean-weight", f"{config.clean_weight:g}"]
    if config.swa_start is not None:
        words += ["--swa-start", f"{config.swa_start:g}"]
    if config.swa_lr is not None:
        words += ["--swa-lr", f"{config.swa_lr:g}"]
    words += ["--min-clean-cosine", f"{config.min_clean_cosine:g}", "--seed", str(config.seed)]
    if config.live_teacher:
        words.append("--live-teacher")
    if limit is not None:
        words += ["--limit", str(limit)]
    return shlex.join([*words, "--out", str(out)])


def run(args: argparse.Namespace) -> int:
    """``facecloak train-surrogate``: 0 when the surrogate keeps its clean cosine, 1 when it drifted (the file is
    still written, marked failed), 2 when the run cannot start."""
    from ..core.device import configure_cpu_threads
    from ..core.zoo.manifest import load_manifest
    from ..core.zoo.registry import ModelNotReady, load_model

    def fail(message: str) -> int:
        print(message, file=sys.stderr)
        return 2

    data_value = args.data or (Path(os.environ["FACECLOAK_DATA"]) if os.environ.get("FACECLOAK_DATA") else None)
    if data_value is None:
        return fail("no data folder: pass --data DIR (the folder holding lfw_rest/) or set FACECLOAK_DATA")
    data_folder = Path(data_value)
    if not (data_folder / DATA_SUBFOLDER).is_dir():
        return fail(
            f"no {DATA_SUBFOLDER}/ folder in {data_folder}: --data must name the folder holding {DATA_SUBFOLDER}/ "
            "(LFW's people with one or two photos, disjoint from every benchmark identity)"
        )
    if args.out.suffix != ".safetensors":
        return fail(f"--out must end in .safetensors, not {args.out.name!r}")
    if args.limit is not None and args.limit < 8:
        return fail(f"--limit must be at least 8 photos, not {args.limit}")
    try:
        config = config_from_args(args)
    except ValueError as err:
        return fail(f"bad setting: {err}")
    manifest = load_manifest()
    if config.base not in manifest:
        return fail(f"unknown model {config.base!r}; known: {', '.join(manifest)}")
    threads = configure_cpu_threads()
    try:
        model = load_model(config.base)
    except ModelNotReady as err:
        return fail(str(err))
    print(
        f"{config.base}: {sum(p.numel() for p in model.network.parameters()) / 1e6:.2f} M parameters, "
        f"{threads} torch thread(s)",
        flush=True,
    )

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        data = training_crops(model, data_folder, args.limit, log=log)
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err))
    result = train_surrogate(model, data, config, log=log)
    metadata = surrogate_metadata(config, data, result, command_line(config, data_folder, args.out, args.limit))
    path = save_surrogate(args.out, model, metadata)
    print(f"before: {result.before.line()}")
    print(f"after:  {result.after.line()}")
    print(
        f"{result.steps} steps in {format_seconds(result.seconds)} "
        f"({result.seconds / (result.steps * config.batch_size) * 1000:.0f} ms per training face); wrote {path}"
    )
    return 0 if result.passed else 1
