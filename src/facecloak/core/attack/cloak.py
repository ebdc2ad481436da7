"""The cloak: a LowKey-style ensemble attack on full-resolution photos, robust to blur, JPEG and resizing."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from kornia.filters import gaussian_blur2d

from ..align import warp_crops
from ..detect import Face
from ..perceptual import LPIPSMeasure, lpips_available
from ..transforms import Transform, sample_transforms
from ..zoo.model import FaceModel
from .album import AlbumMemory, from_canonical, to_canonical
from .budget import _project, compose, project_into_budget
from .config import CloakConfig
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

    Example:
        >>> cloak = Cloak([load_model("sface")], preset("low"))
        >>> result = cloak(photo, FaceDetector().detect(photo))  # photo: 1,3,H,W float in [0, 1]
        >>> result.photo.shape == photo.shape
        True
    """

    def __init__(
        self, models: Sequence[FaceModel], config: CloakConfig | None = None, lpips: LPIPSMeasure | None = None
    ) -> None:
        if not models:
            raise ValueError("the cloak needs at least one ensemble model")
        self.models = list(models)
        self.config = config or CloakConfig()
        self.device = next(self.models[0].parameters()).device
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
            progress: called after each step. Default: None.
            should_cancel: polled before each step; True raises :class:`CloakCancelled`. Default: None.
            init: per face, a change in the canonical face frame to start from (``CloakResult.perturbations``).
                Default: None (the album memory's change for a face seen before, when ``config.warm_start``).
        """
        if photo.dim() != 4 or photo.shape[:2] != (1, 3):
            raise ValueError(f"expected a 1,3,H,W photo, got {tuple(photo.shape)}")
        config = self.config
        rng, np_rng = random.Random(config.seed), np.random.default_rng(config.seed)
        regions = [working_region(photo, face, config, self.device) for face in faces]
        clean = [self._clean_embeddings(region) for region in regions]
        deltas, warm, goal = self._starts(regions, clean, init)
        least = max(1, round(config.steps * config.warm_start_step_share)) if warm else config.steps
        steps = config.steps if goal is not None else least
        reached = [1.0] * len(regions)  # per face, the ensemble's mean similarity on the latest step
        history: list[StepMetrics] = []
        for step in range(steps if regions else 0):
            if should_cancel is not None and should_cancel():
                raise CloakCancelled("cancelled")
            views = sample_transforms(rng, config.views_per_step, config.robustness)
            loss, sims, quality = 0.0, {m.name: 0.0 for m in self.models}, 0.0
            for i, region in enumerate(regions):
                shifts = self._jitter(np_rng, region.face, len(views))
                face_loss, face_sims, face_dssim, grad = self._gradient(region, deltas[i], clean[i], views, shifts)
                with torch.no_grad():
                    moved = deltas[i] - config.step_size * region.allowance * grad.sign()
                    deltas[i] = project_into_budget(moved, region, config.epsilon, config.chroma_epsilon)
                reached[i] = sum(face_sims.values()) / len(face_sims)
                loss, quality = loss + face_loss, quality + face_dssim
                for name, value in face_sims.items():
                    sims[name] += value / len(regions)
            history.append(StepMetrics(step + 1, loss, sims, quality / len(regions)))
            if progress is not None:
                progress(step + 1, steps, loss)
            if goal is not None and step + 1 >= least and all(r <= t for r, t in zip(reached, goal, strict=True)):
                break
        protected, face_dssim = compose(photo, regions, deltas, config.dssim_budget)
        canonical = [to_canonical(d.detach() * r.mask, r).cpu() for r, d in zip(regions, deltas, strict=True)]
        if config.warm_start:
            for embeddings, change, final in zip(clean, canonical, reached, strict=True):
                self.memory.remember(embeddings[self.models[0].name], change, final)
        return CloakResult(protected, list(faces), history, face_dssim, canonical, warm_started=warm)

    # -- set-up -------------------------------------------------------------------------------
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
    def _gradient(
        self,
        region: _FaceRegion,
        delta: torch.Tensor,
        clean: Mapping[str, torch.Tensor],
        views: Sequence[Transform],
        shifts: Sequence[np.ndarray | None],
    ) -> tuple[float, dict[str, float], float, torch.Tensor]:
        """The step's loss, per-model similarities, working face DSSIM, and the gradient to descend: attack plus
        perceptual terms, each unit-scaled on the face so their weights mean the same whatever the photo."""
        on_face = _OnFace(region.mask, region.clean.dtype, region.clean.shape[1])
        delta = delta.detach().requires_grad_(True)
        protected = _quantise((region.clean + delta * region.mask).clamp(0, 1))
        degraded = [view(protected) for view in views]  # each degradation applied once, shared by every model
        attack, sims, view_grads = self._ensemble_gradient(region, clean, degraded, shifts, on_face)
        (attack_grad,) = torch.autograd.grad(degraded, delta, grad_outputs=view_grads, retain_graph=True)
        sigma = self.config.native_gradient_sigma if region.native else self.config.gradient_sigma
        if sigma > 0:
            k = 2 * math.ceil(3 * sigma) + 1
            attack_grad = gaussian_blur2d(attack_grad, (k, k), (sigma, sigma)) * region.mask
        quality = region.to_clean(protected).sum()
        (quality_grad,) = torch.autograd.grad(quality, delta, retain_graph=self.lpips is not None)
        perceptual = on_face.unit(quality_grad)
        if self.lpips is not None:
            (lpips_grad,) = torch.autograd.grad(self.lpips.distance(protected, region.clean).sum(), delta)
            perceptual = perceptual + self.config.lpips_weight * on_face.unit(lpips_grad)
        grad = on_face.unit(attack_grad) + self.config.quality_weight * perceptual
        return attack, sims, float(quality.detach()), grad

    def _ensemble_gradient(
        self,
        region: _FaceRegion,
        clean: Mapping[str, torch.Tensor],
        degraded: Sequence[torch.Tensor],
        shifts: Sequence[np.ndarray | None],
        on_face: _OnFace,
    ) -> tuple[float, dict[str, float], list[torch.Tensor]]:
        """The ensemble's mean similarity to the clean face, each model's, and the gradient of the similarity
        with respect to each degraded view, each model's share scaled to unit size on the face."""
        views = [image.detach().requires_grad_(True) for image in degraded]
        attack, sims = 0.0, {}
        combined = [torch.zeros_like(image) for image in views]
        for model in self.models:
            seen = max(1, min(len(views), self.config.model_views.get(model.name, len(views))))
            crops = torch.cat(
                [
                    warp_crops(image, self._matrices(model, region, shift), model.input_size)
                    for image, shift in zip(views[:seen], shifts[:seen], strict=True)
                ]
            )
            with self._autocast(model):
                embeddings = model(crops)
            model_sim = (embeddings.float() @ clean[model.name][0].float()).mean()
            sims[model.name] = float(model_sim.detach())
            attack += sims[model.name] / len(self.models)
            grads = torch.autograd.grad(model_sim, views[:seen])
            scale = (sum(on_face.magnitude(g) for g in grads) / len(grads)).clamp_min(1e-12)
            alpha = len(views) / seen / float(scale)  # a model that sees fewer views keeps its say in the step
            for total, g in zip(combined, grads, strict=False):  # a model's grads cover the first views it saw
                total.add_(g, alpha=alpha)
        return attack, sims, combined

    # -- models and alignment -----------------------------------------------------------------
    def _matrices(self, model: FaceModel, region: _FaceRegion, shift: np.ndarray | None) -> torch.Tensor:
        """``1,2,3`` float64: working pixel -> the model's aligned crop, landmarks moved by ``shift`` if given."""
        landmarks = region.face.landmark_array()
        box = np.asarray(region.face.box, dtype=np.float64)
        if shift is not None:
            landmarks = landmarks + shift
            box = box + np.tile(shift.mean(0), 2)
        photo_to_crop = np.vstack([model.alignment.matrix(landmarks, box), [0, 0, 1]])
        return torch.as_tensor((photo_to_crop @ region.to_photo)[:2][None], dtype=torch.float64)

    def _embed(self, model: FaceModel, image: torch.Tensor, region: _FaceRegion) -> torch.Tensor:
        crops = warp_crops(image, self._matrices(model, region, None), model.input_size)
        with self._autocast(model):
            return model(crops).float()

    def _autocast(self, model: FaceModel) -> AbstractContextManager:
        """bfloat16 autocast for the models that gain from it, where the CPU has native bf16."""
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
