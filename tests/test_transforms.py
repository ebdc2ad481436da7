"""Degradations used by the attack (differentiable) and by the report (real encoders, fast medians)."""

from __future__ import annotations

import random

import kornia.filters as KF
import pytest
import torch
import torch.nn.functional as F

from facecloak.core.transforms import (
    KINDS,
    RobustnessConfig,
    Transform,
    evaluation_transforms,
    median_blur_8bit,
    opencv_median,
    pillow_jpeg,
    sample_transforms,
)


def eight_bit(*shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(*shape, generator=generator) * 255).round() / 255


@pytest.mark.parametrize("kernel", [3, 5, 9, 11])
def test_opencv_median_equals_kornia_away_from_the_border(kernel):
    x = eight_bit(2, 3, 64, 48)
    pad = kernel // 2
    ours = opencv_median(x, kernel)[..., pad:-pad, pad:-pad]
    assert torch.equal(ours, KF.median_blur(x, (kernel, kernel))[..., pad:-pad, pad:-pad])


def distinct_levels(channels: int, height: int, width: int) -> torch.Tensor:
    """8-bit values that never repeat within a channel: every window has one median pixel."""
    generator = torch.Generator().manual_seed(1)
    levels = [torch.randperm(256, generator=generator)[: height * width] for _ in range(channels)]
    return (torch.stack(levels).reshape(1, channels, height, width).float() / 255).requires_grad_(True)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_fast_median_matches_kornia_value_and_gradient_away_from_the_border(kernel):
    x = distinct_levels(3, 14, 15)
    r = kernel // 2
    upstream = torch.zeros(1, 3, 14, 15)
    upstream[..., r:-r, r:-r] = torch.randn(1, 3, 14 - 2 * r, 15 - 2 * r, generator=torch.Generator().manual_seed(2))
    ours = median_blur_8bit(x, kernel)
    theirs = KF.median_blur(x, (kernel, kernel))
    assert torch.equal(ours[..., r:-r, r:-r], theirs[..., r:-r, r:-r])
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), x)
    (theirs_grad,) = torch.autograd.grad((theirs * upstream).sum(), x)
    assert ours_grad.abs().sum() > 0
    torch.testing.assert_close(ours_grad, theirs_grad)


@pytest.mark.parametrize("kernel", [3, 7])
def test_fast_median_gradient_at_the_border_follows_opencv_edge_replication(kernel):
    x = distinct_levels(3, 12, 13)
    r = kernel // 2
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    windows = F.unfold(padded.reshape(3, 1, 12 + 2 * r, 13 + 2 * r), kernel).reshape(3, kernel * kernel, 12, 13)
    reference = windows.median(dim=1).values.reshape(1, 3, 12, 13)
    ours = median_blur_8bit(x, kernel)
    assert torch.equal(ours, reference)
    upstream = torch.randn(1, 3, 12, 13, generator=torch.Generator().manual_seed(3))
    (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), x)
    (reference_grad,) = torch.autograd.grad((reference * upstream).sum(), x)
    torch.testing.assert_close(ours_grad, reference_grad)


def test_every_sampled_transform_is_differentiable_and_keeps_the_size():
    x = eight_bit(1, 3, 80, 72).requires_grad_(True)
    rng = random.Random(0)
    kinds = set()
    for t in sample_transforms(rng, 40, RobustnessConfig()):
        kinds.add(t.kind)
        y = t(x)
        assert y.shape == x.shape
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert grad.abs().sum() > 0, t.name
    assert kinds == {"identity", "gaussian", "median", "box", "motion", "jpeg", "resize"}


def test_disabled_robustness_kinds_are_never_sampled():
    config = RobustnessConfig(blur=False, jpeg=False)
    kinds = {t.kind for t in sample_transforms(random.Random(1), 30, config)}
    assert kinds <= {"identity", "resize"}


def test_every_enabled_kind_is_drawn_once_before_any_is_drawn_again():
    for seed in range(20):
        kinds = [t.kind for t in sample_transforms(random.Random(seed), 2 * len(KINDS), RobustnessConfig())]
        assert sorted(kinds[: len(KINDS)]) == sorted(KINDS) == sorted(kinds[len(KINDS) :])


def test_a_seed_always_draws_the_same_transforms():
    """Protected photos depend on this sequence: any change to the sampling changes every result."""
    names = [t.name for t in sample_transforms(random.Random(0), 9, RobustnessConfig())]
    assert names == [
        "jpeg q87",
        "motion k5 91deg",
        "median k7",
        "gaussian k5 s2.38951",
        "box k11",
        "none",
        "resize x0.81",
        "median k11",
        "box k11",
    ]
    names = [t.name for t in sample_transforms(random.Random(5), 4, RobustnessConfig(blur=False))]
    assert names == ["jpeg q91", "resize x0.92", "none", "resize x0.36"]


def test_real_jpeg_changes_pixels_more_at_lower_quality():
    x = eight_bit(1, 3, 64, 64)
    err95 = (pillow_jpeg(x, 95) - x).abs().mean()
    err50 = (pillow_jpeg(x, 50) - x).abs().mean()
    assert 0 < err95 < err50


def test_evaluation_grid():
    names = [t.name for t in evaluation_transforms()]
    assert names[0] == "none" and len(names) == 1 + 4 * 5 + 4
    assert "median k11" in names and "jpeg q50" in names
    with pytest.raises(ValueError, match="odd kernel"):
        Transform("box", kernel=4)
