"""Layers shared by the zoo's networks, written for the attack's use: gradients w.r.t. the input of a frozen
network, on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        slope = weight.reshape(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 else weight
        positive = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        negative = grad - positive
        grad_x = torch.addcmul(positive, negative, slope.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != (1 if x.dim() > 1 else 0)]
            grad_weight = (negative * x).sum(dim=dims).reshape(weight.shape).to(weight.dtype)
        return grad_x, grad_weight


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu`` with a backward pass an order of magnitude faster on the CPU: torch's PReLU kernel
    backward (which always computes the slope's gradient too) took a third of a MobileFaceNet's
    forward + backward time, more than its convolutions."""
    return _PReLUFunction.apply(x, weight)


# torch.fx (used to fold batch norms) records calls to prelu as they are, keeping the backward above
torch.fx.wrap("prelu")


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameter) through :func:`prelu`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prelu(x, self.weight)
