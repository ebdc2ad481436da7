"""The cloak: a LowKey-style ensemble attack on full-resolution photos, robust to blur, JPEG and resizing."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch
from kornia.filters import gaussian_blur2d

from ..align import warp_crops
from ..detect import Face
from ..device import synchronize
from ..perceptual import LPIPSMeasure, lpips_available
from ..transforms import Transform, sample_transforms
from ..zoo.model import FaceModel
from .album import AlbumMemory, from_canonical, to_canonical
from .batched import apply_view, warp_views
from .budget import _project, compose, project_into_budget, project_into_budget_on_device
from .config import CloakConfig
from .execution import Execution
from .region import _FaceRegion, working_region

ProgressCallback = Callable[[int, int, float], None]  # (step, steps, loss) after each step


class CloakCancelled(RuntimeError):
    """The caller asked the attack to stop; nothing was written."""


@dataclass(frozen=True)
class StepMetrics:
    step: int  # 1-based
    loss: float  # the ensemble's mean similarity, summed over the faces
    similarity: dict[str, float]  # per model, mean cosine to the clean embedding on this step's views
    dssim: float  # mean working-copy face DSSIM the step's update started from


@dataclass(frozen=True, eq=False)
class CloakResult:
    photo: torch.Tensor  # 1,3,H,W protected photo, quantised to 8 bits
    faces: list[Face]  # the faces that were protected
    steps: list[StepMetrics]
    face_dssim: list[float]  # per face, at photo resolution, after quantisation
    perturbations: list[torch.Tensor]  # per face, 1,3,320,320 in the canonical face frame (album warm starts)
    warm_started: bool = False
    # wall-clock seconds per stage, the device's queue drained at each boundary: "attack" (working copies, clean
    # embeddings and the steps) and "compose" (the change placed on the photo within the budget)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(eq=False)
class _Target:
    """One face being protected: its working region, face-support measure and clean embeddings per model."""

    region: _FaceRegion
    on_face: _OnFace
    clean: dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class _FaceStep:
    """One face's share of a step: the gradient to descend, and (as tensors, read later) the step's numbers."""

    grad: torch.Tensor
    similarity: dict[str, torch.Tensor]  # per model, the mean cosine to the clean embedding over its views
    dssim: torch.Tensor  # working-copy face DSSIM the step started from


class Cloak:
    """Protects every given face of a photo against an ensemble of face-recognition models.

    LowKey's objective (Cherepanova et al., "LowKey: Leveraging Adversarial Attacks to Protect Social Media
    Users from Facial Recognition", ICLR 2021): push each model's embedding of the protected face away from its
    embedding of the clean face (cosine similarity), averaged over randomly sampled blurs, JPEG and resizing
    (expectation over transformation, Athalye et al., ICML 2018), with each model's gradient unit-scaled so
    none dominates. Sign steps (PGD, Madry et al., ICLR 2018) on a working copy of each face's region, confined
    to a feathered face mask, smoothed (TI-FGSM, Dong et al., CVPR 2019), projected onto luminance and chroma
    caps and scaled into a face DSSIM budget; the change is then upsampled onto the photo's own pixels within
    the same budget. See docs/ATTACK.md.

    Args:
        models: the attack ensemble (surrogates), at least one; never the models used to report protection.
            The first one keys the album memory.
        config: the knobs. Default: ``CloakConfig()`` (the ``mid`` preset).
        lpips: an LPIPS measure already loaded (e.g. by a longer-lived Cloak), so it is not read again.
            Default: None (loaded when ``config.lpips_weight`` > 0 and its backbone is cached).
        execution: how the attack runs on the models' device (:class:`~facecloak.core.attack.execution.Execution`).
            Default: :meth:`Execution.for_device` (batched on CUDA, face by face elsewhere).

    Example:
        >>> cloak = Cloak([load_model("sface")], preset("low"))
        >>> result = cloak(photo, FaceDetector().detect(photo))  # photo: 1,3,H,W float in [0, 1]
        >>> result.photo.shape == photo.shape
        True
    """

    def __init__(
        self,
        models: Sequence[FaceModel],
        config: CloakConfig | None = None,
        lpips: LPIPSMeasure | None = None,
        execution: Execution | None = None,
    ) -> None:
        if not models:
            raise ValueError("the cloak needs at least one ensemble model")
        self.models = list(models)
        self.config = config or CloakConfig()
        self.device = next(self.models[0].parameters()).device
        self.execution = execution or Execution.for_device(self.device, self.config)
        self.memory = AlbumMemory(self.models[0])
        use_lpips = self.config.lpips_weight > 0 and (lpips is not None or lpips_available())
        self.lpips: LPIPSMeasure | None = (lpips or LPIPSMeasure(self.device)) if use_lpips else None

    @property
    def perceptual_terms(self) -> str:
        """What bounds and shapes the change, for reports."""
        terms = f"face DSSIM <= {self.config.dssim_budget:g}"
        return terms + (f" + LPIPS (alex) term x{self.config.lpips_weight:g}" if self.lpips is not None else "")

    def __call__(
        self,
        photo: torch.Tensor,
        faces: Sequence[Face],
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        init: Sequence[torch.Tensor | None] | None = None,
    ) -> CloakResult:
        """Protect ``faces`` of ``photo``.

        Args:
            photo: ``1,3,H,W`` float in [0, 1], not modified.
            faces: the faces to protect (others stay untouched); may be empty.
            progress: called after each step (when batched, once the step's numbers are read, a step later).
                Default: None.
            should_cancel: polled before each step; True raises :class:`CloakCancelled`. Default: None.
            init: per face, a change in the canonical face frame to start from (``CloakResult.perturbations``).
                Default: None (the album memory's change for a face seen before, when ``config.warm_start``).
        """
        if photo.dim() != 4 or photo.shape[:2] != (1, 3):
            raise ValueError(f"expected a 1,3,H,W photo, got {tuple(photo.shape)}")
        config = self.config
        started = time.perf_counter()
        regions = [working_region(photo, face, config, self.device) for face in faces]
        targets = [self._target(region) for region in regions]
        clean = [target.clean for target in targets]
        deltas, warm, goal = self._starts(regions, clean, init)
        reached = [1.0] * len(regions)  # per face, the ensemble's mean similarity on the latest step
        history: list[StepMetrics] = []
        deltas = self._optimise(targets, deltas, warm, goal, reached, history, progress, should_cancel)
        synchronize(self.device)
        composing = time.perf_counter()
        protected, face_dssim = compose(photo, regions, deltas, config.dssim_budget)
        canonical = [to_canonical(d.detach() * r.mask, r).cpu() for r, d in zip(regions, deltas, strict=True)]
        synchronize(protected.device)
        seconds = {"attack": composing - started, "compose": time.perf_counter() - composing}
        if config.warm_start:
            for embeddings, change, final in zip(clean, canonical, reached, strict=True):
                self.memory.remember(embeddings[self.models[0].name], change, final)
        return CloakResult(protected, list(faces), history, face_dssim, canonical, warm_started=warm, seconds=seconds)

    # -- the loop -----------------------------------------------------------------------------
    def _optimise(
        self,
        targets: Sequence[_Target],
        deltas: list[torch.Tensor],
        warm: bool,
        goal: list[float] | None,
        reached: list[float],
        history: list[StepMetrics],
        progress: ProgressCallback | None,
        should_cancel: Callable[[], bool] | None,
    ) -> list[torch.Tensor]:
        """Run the steps; returns each face's change. ``reached`` and ``history`` are filled in.

        Face by face, each step's numbers are read as soon as it is done. Batched, they are read one step late, so
        the device always has the next step queued; a run that meets its album goal then keeps the change of the
        step that met it, as face by face.
        """
        config = self.config
        rng, np_rng = random.Random(config.seed), np.random.default_rng(config.seed)
        least = max(1, round(config.steps * config.warm_start_step_share)) if warm else config.steps
        steps = config.steps if goal is not None else least
        lag = 1 if self.execution.batched else 0
        pending: list[tuple[int, list[_FaceStep]]] = []

        def record(step: int, faces: list[_FaceStep]) -> bool:
            """Log the step; True when the run is to stop after it (the album goal is met)."""
            self._record(step, steps, faces, reached, history, progress)
            return goal is not None and step + 1 >= least and all(r <= t for r, t in zip(reached, goal, strict=True))

        for step in range(steps if targets else 0):
            if should_cancel is not None and should_cancel():
                raise CloakCancelled("cancelled")
            views = sample_transforms(rng, config.views_per_step, config.robustness)
            shifts = [self._jitter(np_rng, target.region.face, len(views)) for target in targets]
            before = deltas
            deltas, faces = self._step(targets, deltas, views, shifts)
            pending.append((step, faces))
            if len(pending) > lag and record(*pending.pop(0)):
                if lag:  # the goal was met a step ago: keep that step's change, drop this one's
                    deltas = before
                    pending.clear()
                break
        for item in pending:
            record(*item)
        return deltas

    def _record(
        self,
        step: int,
        steps: int,
        faces: list[_FaceStep],
        reached: list[float],
        history: list[StepMetrics],
        progress: ProgressCallback | None,
    ) -> None:
        """Read a step's numbers off the device (one read for all faces), log them and report progress."""
        names = [model.name for model in self.models]
        values = torch.stack([torch.stack([*(f.similarity[n] for n in names), f.dssim]) for f in faces]).tolist()
        loss, sims, quality = 0.0, {name: 0.0 for name in names}, 0.0
        for i, row in enumerate(values):
            face_sims = dict(zip(names, row[:-1], strict=True))
            face_loss = 0.0
            for name in names:
                face_loss += face_sims[name] / len(self.models)
            reached[i] = sum(face_sims.values()) / len(face_sims)
            loss, quality = loss + face_loss, quality + row[-1]
            for name, value in face_sims.items():
                sims[name] += value / len(faces)
        history.append(StepMetrics(step + 1, loss, sims, quality / len(faces)))
        if progress is not None:
            progress(step + 1, steps, loss)

    def _step(
        self,
        targets: Sequence[_Target],
        deltas: Sequence[torch.Tensor],
        views: Sequence[Transform],
        shifts: Sequence[Sequence[np.ndarray | None]],
    ) -> tuple[list[torch.Tensor], list[_FaceStep]]:
        """One sign step for every face: the new changes, and each face's share of the step."""
        config = self.config
        project = project_into_budget_on_device if self.execution.batched else project_into_budget
        moved, faces = list(deltas), []
        for group in self.execution.groups(len(targets)):
            chosen = [targets[i] for i in group]
            results = self._gradients(chosen, [deltas[i] for i in group], views, [shifts[i] for i in group])
            for i, target, result in zip(group, chosen, results, strict=True):
                region = target.region
                with torch.no_grad():
                    change = deltas[i] - config.step_size * region.allowance * result.grad.sign()
                    moved[i] = project(change, region, config.epsilon, config.chroma_epsilon)
                faces.append(result)
        return moved, faces

    # -- set-up -------------------------------------------------------------------------------
    def _target(self, region: _FaceRegion) -> _Target:
        on_face = _OnFace(region.mask, region.clean.dtype, region.clean.shape[1])
        return _Target(region, on_face, self._clean_embeddings(region))

    def _clean_embeddings(self, region: _FaceRegion) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {model.name: self._embed(model, region.clean, region) for model in self.models}

    def _starts(
        self,
        regions: Sequence[_FaceRegion],
        clean: Sequence[Mapping[str, torch.Tensor]],
        init: Sequence[torch.Tensor | None] | None,
    ) -> tuple[list[torch.Tensor], bool, list[float] | None]:
        """Each face's starting change; whether every face starts from an earlier change; and, when the run is
        to go on until it matches the album, the similarity each face must reach (else None)."""
        config = self.config
        goal: list[float] = []
        if init is None and config.warm_start:
            found = [self.memory.lookup(embeddings[self.models[0].name]) for embeddings in clean]
            init = [f[0] if f else None for f in found]
            goal = [f[1] for f in found if f]
        starts = [init[i] if init is not None and i < len(init) else None for i in range(len(regions))]
        deltas = []
        for region, start in zip(regions, starts, strict=True):
            if start is None:
                deltas.append(torch.zeros_like(region.clean))
                continue
            change = from_canonical(start.to(self.device, region.clean.dtype), region)
            deltas.append(_project(change, region.clean, region.allowance, config.epsilon, config.chroma_epsilon))
        warm = bool(regions) and all(start is not None for start in starts)
        until_matched = warm and config.warm_start_until_matched and len(goal) == len(regions)
        return deltas, warm, goal if until_matched else None

    # -- one step -----------------------------------------------------------------------------
    def _gradients(
        self,
        targets: Sequence[_Target],
        deltas: Sequence[torch.Tensor],
        views: Sequence[Transform],
        shifts: Sequence[Sequence[np.ndarray | None]],
    ) -> list[_FaceStep]:
        """Per face, the gradient to descend (attack plus perceptual terms, each unit-scaled on the face so their
        weights mean the same whatever the photo), its similarities and its working face DSSIM."""
        leaves = [delta.detach().requires_grad_(True) for delta in deltas]
        protected = [
            _quantise((t.region.clean + leaf * t.region.mask).clamp(0, 1))
            for t, leaf in zip(targets, leaves, strict=True)
        ]
        # each degradation applied once per face, shared by every model
        degraded = [[self._view(view, image) for view in views] for image in protected]
        sims, view_grads = self._ensemble_gradient(targets, degraded, shifts)
        out = []
        for target, leaf, image, face_views, face_grads, face_sims in zip(
            targets, leaves, protected, degraded, view_grads, sims, strict=True
        ):
            region, on_face = target.region, target.on_face
            (attack_grad,) = torch.autograd.grad(face_views, leaf, grad_outputs=face_grads, retain_graph=True)
            sigma = self.config.native_gradient_sigma if region.native else self.config.gradient_sigma
            if sigma > 0:
                k = 2 * math.ceil(3 * sigma) + 1
                attack_grad = gaussian_blur2d(attack_grad, (k, k), (sigma, sigma)) * region.mask
            quality = region.to_clean(image).sum()
            (quality_grad,) = torch.autograd.grad(quality, leaf, retain_graph=self.lpips is not None)
            perceptual = on_face.unit(quality_grad)
            if self.lpips is not None:
                (lpips_grad,) = torch.autograd.grad(self.lpips.distance(image, region.clean).sum(), leaf)
                perceptual = perceptual + self.config.lpips_weight * on_face.unit(lpips_grad)
            grad = on_face.unit(attack_grad) + self.config.quality_weight * perceptual
            out.append(_FaceStep(grad, face_sims, quality.detach()))
        return out

    def _ensemble_gradient(
        self,
        targets: Sequence[_Target],
        degraded: Sequence[Sequence[torch.Tensor]],
        shifts: Sequence[Sequence[np.ndarray | None]],
    ) -> tuple[list[dict[str, torch.Tensor]], list[list[torch.Tensor]]]:
        """Per face, each model's mean similarity to the clean face, and the gradient of the similarities with
        respect to each degraded view, each model's share scaled to unit size on the face.

        Each model sees the views of every face in one batch.
        """
        views = [[image.detach().requires_grad_(True) for image in face_views] for face_views in degraded]
        count = len(views[0])
        sims: list[dict[str, torch.Tensor]] = [{} for _ in targets]
        combined = [[torch.zeros_like(image) for image in face_views] for face_views in views]
        for model in self.models:
            seen = max(1, min(count, self.config.model_views.get(model.name, count)))
            parts = [
                self._crops(model, t.region, face_views[:seen], face_shifts[:seen])
                for t, face_views, face_shifts in zip(targets, views, shifts, strict=True)
            ]
            crops = parts[0] if len(parts) == 1 else torch.cat(parts)
            with self._autocast(model):
                embeddings = model(crops)
            embeddings = embeddings.float()
            face_sims = []
            for f, target in enumerate(targets):
                mine = embeddings if len(targets) == 1 else embeddings[f * seen : (f + 1) * seen]
                face_sims.append((mine @ target.clean[model.name][0].float()).mean())
            total = face_sims[0] if len(face_sims) == 1 else torch.stack(face_sims).sum()
            grads = torch.autograd.grad(total, [image for face_views in views for image in face_views[:seen]])
            for f, target in enumerate(targets):
                sims[f][model.name] = face_sims[f].detach()
                self._accumulate(combined[f], grads[f * seen : (f + 1) * seen], target.on_face, count / seen)
        return sims, combined

    def _accumulate(
        self, combined: list[torch.Tensor], grads: Sequence[torch.Tensor], on_face: _OnFace, share: float
    ) -> None:
        """Add one model's view gradients to ``combined``, scaled to unit mean size on the face times ``share`` (a
        model that sees fewer views keeps its say in the step); its gradients cover the first views it saw."""
        scale = (sum(on_face.magnitude(g) for g in grads) / len(grads)).clamp_min(1e-12)
        if self.execution.batched:  # the scale stays on the device
            alpha = share / scale
            for total, g in zip(combined, grads, strict=False):
                total.add_(g * alpha)
            return
        alpha = share / float(scale)
        for total, g in zip(combined, grads, strict=False):
            total.add_(g, alpha=alpha)

    def _view(self, view: Transform, image: torch.Tensor) -> torch.Tensor:
        return apply_view(view, image) if self.execution.batched else view(image)

    # -- models and alignment -----------------------------------------------------------------
    def _matrix(self, model: FaceModel, region: _FaceRegion, shift: np.ndarray | None) -> np.ndarray:
        """``3,3`` float64: working pixel -> the model's aligned crop, landmarks moved by ``shift`` if given."""
        landmarks = region.face.landmark_array()
        box = np.asarray(region.face.box, dtype=np.float64)
        if shift is not None:
            landmarks = landmarks + shift
            box = box + np.tile(shift.mean(0), 2)
        photo_to_crop = np.vstack([model.alignment.matrix(landmarks, box), [0, 0, 1]])
        return photo_to_crop @ region.to_photo

    def _crops(
        self,
        model: FaceModel,
        region: _FaceRegion,
        images: Sequence[torch.Tensor],
        shifts: Sequence[np.ndarray | None],
    ) -> torch.Tensor:
        """The model's aligned crops ``N,3,h,w`` of ``images`` (``1,3,h,w`` each, on ``region``'s working grid), one
        per image with its landmark shift."""
        if self.execution.batched:
            matrices = np.stack([self._matrix(model, region, shift) for shift in shifts])
            return warp_views(torch.cat(list(images)) if len(images) > 1 else images[0], matrices, model.input_size)
        parts = [
            warp_crops(image, torch.as_tensor(self._matrix(model, region, shift)[:2][None]), model.input_size)
            for image, shift in zip(images, shifts, strict=True)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _embed(self, model: FaceModel, image: torch.Tensor, region: _FaceRegion) -> torch.Tensor:
        crops = self._crops(model, region, [image], [None])
        with self._autocast(model):
            return model(crops).float()

    def _autocast(self, model: FaceModel) -> AbstractContextManager:
        """The execution's autocast for every model; else, on the CPU, bfloat16 for the models that gain from it
        where the CPU has native bf16."""
        if self.execution.autocast is not None:
            return torch.autocast(self.device.type, dtype=self.execution.autocast)
        enabled = self.config.bfloat16 and model.bfloat16 and self.device.type == "cpu" and _cpu_has_bf16()
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

    def _jitter(self, rng: np.random.Generator, face: Face, count: int) -> list[np.ndarray | None]:
        """Per view, random landmark shifts (a detector's jitter), or None when jitter is off."""
        amount = self.config.robustness.landmark_jitter
        if amount <= 0:
            return [None] * count
        marks = face.landmark_array()
        eye_distance = float(np.linalg.norm(marks[1] - marks[0]))
        return [rng.normal(0, amount * eye_distance, size=(5, 2)) for _ in range(count)]


class _OnFace:
    """Mean gradient magnitude over the face mask's support, by multiply-and-sum (boolean indexing copies)."""

    def __init__(self, mask: torch.Tensor, dtype: torch.dtype, channels: int) -> None:
        self.inside = (mask > 0).to(dtype)
        self.count = max(float(self.inside.sum()) * channels, 1.0)

    def magnitude(self, g: torch.Tensor) -> torch.Tensor:
        return (g.abs() * self.inside).sum() / self.count

    def unit(self, g: torch.Tensor) -> torch.Tensor:
        """``g`` scaled to unit mean magnitude on the face."""
        return g / self.magnitude(g).clamp_min(1e-12)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits in the forward pass; pass the gradient straight through."""
    return x + (torch.round(x * 255) / 255 - x).detach()


def _cpu_has_bf16() -> bool:
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(checker()) if checker is not None else False
    except RuntimeError:
        return False
