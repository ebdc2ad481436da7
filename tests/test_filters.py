"""The attack's blurs are kornia's blurs, forward and backward, only with a cheaper input gradient."""

from __future__ import annotations

import pytest
import torch
from kornia.filters import gaussian_blur2d

from facecloak.core.filters import gaussian_blur, separable_filter


def _input_gradients(fn_a, fn_b, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    a, b = fn_a(x), fn_b(x)
    weight = torch.randn(a.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    (ga,) = torch.autograd.grad((a * weight).sum(), x)
    (gb,) = torch.autograd.grad((b * weight).sum(), x)
    return a, b, ga, gb


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize(
    ("kernel", "sigma", "border"), [(3, 0.8, "reflect"), (11, 1.5, "reflect"), (9, 3.0, "replicate")]
)
def test_gaussian_blur_matches_kornia(image, kernel, sigma, border):
    a, b, ga, gb = _input_gradients(
        lambda x: gaussian_blur(x, kernel, sigma, border),
        lambda x: gaussian_blur2d(x, (kernel, kernel), (sigma, sigma), border_type=border),
        image,
    )
    assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(ga, gb, atol=1e-12)
    assert ga.abs().sum() > 0


def test_separable_filter_gradient_is_the_adjoint_for_asymmetric_taps(image):
    """Taps with no symmetry (so a missing flip or a swapped axis shows), checked by finite differences."""
    x = image[:1, :2, :9, :8].clone().requires_grad_(True)
    taps_x, taps_y = (0.1, 0.5, 0.2), (0.3, 0.0, 0.6, 0.05, 0.05)
    for border in ("reflect", "constant", "replicate"):
        assert torch.autograd.gradcheck(lambda t, b=border: separable_filter(t, taps_x, taps_y, b), (x,))


def test_separable_filter_refuses_even_taps(image):
    with pytest.raises(ValueError, match="odd"):
        separable_filter(image, (0.5, 0.5), (1.0,))
