"""The attack's knobs, its presets, and the expert ``KNOB=VALUE`` overrides of ``facecloak protect --set``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from ..transforms import RobustnessConfig


@dataclass(frozen=True)
class CloakConfig:
    """Every knob of the attack. Presets (:data:`PRESETS`) set the perceptual budget and effort.

    Why each default is what it is: docs/ATTACK.md. Pixel values are in [0, 1]; "working pixels" are those of
    the face's working copy (:func:`~facecloak.core.attack.region.working_region`).

    Args:
        steps: optimisation steps per face. Default: 15.
        step_size: size of each sign step, before the texture allowance. Default: 1.5/255.
        epsilon: L-infinity cap of the luminance change; where texture allocation is on it scales per pixel with
            the texture allowance (at most 3x). Default: 12/255.
        chroma_epsilon: L-infinity cap of the colour (chroma) change. Default: 3/255.
        dssim_budget: face-region DSSIM the protected photo must stay within, in (0, 0.5). Default: 0.007.
        quality_weight: weight of the perceptual gradient relative to the attack's (both unit-scaled). Default: 1.
        lpips_weight: weight of the LPIPS (alex) term within the perceptual gradient, used when LPIPS's ImageNet
            backbone is in the torch cache (``facecloak models --fetch-lpips``); 0 = DSSIM only. Default: 1.
        views_per_step: degradations sampled per step (expectation over transformation), >= 1. Default: 2.
        model_views: for named ensemble models, how many of each step's views they see (the first n; the other
            models see all); their say in the step is kept. Default: one view for both FaceNets
            (``facenet_casia``, ``facenet_vggface2``).
        robustness: which degradations are sampled, and their ranges. Default: ``RobustnessConfig()``.
        work_face_size: faces larger than this (pixels, box side) are attacked on a copy downscaled to it.
            Default: 224.
        gradient_sigma: Gaussian smoothing of the attack gradient (TI-FGSM), sigma in working pixels, for
            downscaled faces; 0 = off. Default: 1.
        texture_allocation: for downscaled faces, the power ``p`` of the texture allowance: step and luminance
            cap scale with ``(2 var + C2) ** (p / 2)`` of the clean face's local contrast (mean 1 on the face);
            0 = uniform. Default: 0.
        native_gradient_sigma: ``gradient_sigma`` for faces no larger than ``work_face_size`` (attacked at
            their own resolution). Default: 0.
        native_texture_allocation: ``texture_allocation`` for those faces. Default: 1.
        upsampled_budget_factor: for downscaled faces, the working copy's DSSIM budget is ``dssim_budget`` times
            this, in [1, 4]; the photo-resolution face still stays within ``dssim_budget``. Default: 8/7.
        warm_start: a face that matches one protected earlier by the same :class:`Cloak` starts from that
            face's change. Default: True.
        warm_start_step_share: the least share of ``steps`` a warm-started photo runs. Default: 0.5.
        warm_start_until_matched: a warm-started photo goes on (up to ``steps``) until the ensemble's
            similarity is down to what the earlier face reached. Default: True.
        bfloat16: bfloat16 autocast for the surrogate models that allow it, on CPUs with native bf16.
            Default: True.
        cuda_autocast: bfloat16 autocast for every surrogate on CUDA GPUs with native bf16 (compute capability
            8.0 and later); float32 on older GPUs. Measured against float32 on the CPU (8 faces of people/): the
            ensemble's embeddings agree within cosine 0.996, their input gradients within cosine 0.92 (edgeface_s)
            to 0.99. float16 is not offered: edgeface_s overflows in it. Default: True.
        seed: seed of the sampled degradations and landmark jitter. Default: 0.
    """

    steps: int = 15
    step_size: float = 1.5 / 255
    epsilon: float = 12 / 255
    chroma_epsilon: float = 3 / 255
    dssim_budget: float = 0.007
    quality_weight: float = 1.0
    lpips_weight: float = 1.0
    views_per_step: int = 2
    model_views: dict[str, int] = field(default_factory=lambda: {"facenet_casia": 1, "facenet_vggface2": 1})
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    work_face_size: int = 224
    gradient_sigma: float = 1.0
    texture_allocation: float = 0.0
    native_gradient_sigma: float = 0.0
    native_texture_allocation: float = 1.0
    upsampled_budget_factor: float = 8 / 7
    warm_start: bool = True
    warm_start_step_share: float = 0.5
    warm_start_until_matched: bool = True
    bfloat16: bool = True
    cuda_autocast: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.views_per_step < 1:
            raise ValueError("steps must be >= 0 and views_per_step >= 1")
        if not 0 < self.dssim_budget < 0.5:
            raise ValueError("dssim_budget must be in (0, 0.5)")
        if not 1 <= self.upsampled_budget_factor <= 4:
            raise ValueError("upsampled_budget_factor must be in [1, 4]")


PRESETS: dict[str, CloakConfig] = {
    "low": CloakConfig(steps=12, dssim_budget=0.004, epsilon=8 / 255),
    "mid": CloakConfig(),
    "high": CloakConfig(steps=30, dssim_budget=0.012, epsilon=16 / 255, chroma_epsilon=4 / 255),
}

# The presets where the attack runs on a CUDA GPU, which makes a step cheap. There `mid` takes 30 steps: 30 instead
# of 15 at the same budget raised the transfer matrix's mean over left-out modern models by 7 points on each of three
# samples (40 and 8 LFW faces, 8 people/ faces) and halved the share of pairs the ensemble's own members still match,
# for 0.002 face HaarPSI; on this project's 2-core CPU it doubles the time past the 10 s per face goal. `low` and
# `high` are the same on every device (more steps were not measured for them).
GPU_PRESETS: dict[str, CloakConfig] = {**PRESETS, "mid": replace(PRESETS["mid"], steps=30)}


def preset(name: str, *, gpu: bool = False, **overrides: object) -> CloakConfig:
    """The preset ``name`` (``low``, ``mid`` or ``high``) with ``overrides`` replacing knobs by name.

    Args:
        name: the preset.
        gpu: the preset as it runs on a CUDA GPU (:data:`GPU_PRESETS`). Default: False.
        overrides: knobs replaced by name.

    Raises:
        ValueError: ``name`` is not a preset.
    """
    presets = GPU_PRESETS if gpu else PRESETS
    try:
        return replace(presets[name], **overrides)
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}") from None


def _coerce(name: str, value: object, default: object) -> object:
    """``value`` as the type of the knob's ``default`` (JSON gives ints for floats and lists for tuples)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes true or false, not {value!r}")
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, float) and number:
        return float(value)
    if isinstance(default, int) and number and float(value).is_integer():
        return int(value)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, dict) and isinstance(value, dict):
        return value
    raise ValueError(f"{name} takes a {type(default).__name__}, not {value!r}")


def with_overrides(config: CloakConfig, changes: Mapping[str, object]) -> CloakConfig:
    """``config`` with knobs replaced by name.

    Args:
        config: the configuration to start from.
        changes: knob name -> value. ``"robustness"`` takes a mapping of its own knobs; ``"robustness.jpeg"``
            names one of them.

    Returns:
        A new configuration.

    Raises:
        ValueError: an unknown knob (the message lists the known ones), or a value of the wrong type.

    Example:
        >>> with_overrides(preset("mid"), {"steps": 20, "robustness.jpeg": False}).steps
        20
    """
    top: dict[str, object] = {}
    nested: dict[str, object] = {}
    for key, value in changes.items():
        if key == "robustness" and isinstance(value, Mapping):
            nested.update(value)
        elif key.startswith("robustness."):
            nested[key.split(".", 1)[1]] = value
        else:
            top[key] = value
    known = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "robustness"}
    robust = {f.name: getattr(config.robustness, f.name) for f in fields(config.robustness)}
    for names, given, prefix in ((known, top, ""), (robust, nested, "robustness.")):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"unknown knob {prefix}{unknown[0]}; knobs: {', '.join(prefix + n for n in names)}")
    top = {k: _coerce(k, v, known[k]) for k, v in top.items()}
    nested = {k: _coerce(f"robustness.{k}", v, robust[k]) for k, v in nested.items()}
    if nested:
        top["robustness"] = replace(config.robustness, **nested)
    return replace(config, **top)


def parse_assignments(assignments: Sequence[str]) -> dict[str, object]:
    """``KNOB=VALUE`` strings -> a mapping for :func:`with_overrides`; values are JSON, a bare word is a string.

    Raises:
        ValueError: an item without ``=`` or without a knob name.

    Example:
        >>> parse_assignments(["steps=20", "robustness.jpeg=false", 'model_views={"facenet_casia": 2}'])
        {'steps': 20, 'robustness.jpeg': False, 'model_views': {'facenet_casia': 2}}
    """
    changes: dict[str, object] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KNOB=VALUE, got {item!r}")
        try:
            changes[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            changes[key.strip()] = text
    return changes
