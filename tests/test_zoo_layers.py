"""The zoo's speed-ups change how a network is computed, never what it computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facecloak.core.zoo.layers import PReLU, prelu
from facecloak.core.zoo.model import fold_batch_norms


def test_prelu_matches_torch_forward_and_backward_for_input_and_slope():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 6, generator=generator, dtype=torch.float64)
    x[0, 0, 0, :3] = 0.0  # the kink: both must take the slope's side
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = (0.5 * torch.rand(5, generator=generator, dtype=torch.float64)).requires_grad_(True)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    ours = prelu(x, weight)
    theirs = F.prelu(x, weight)
    assert torch.equal(ours, theirs)
    ours_grads = torch.autograd.grad(ours, (x, weight), grad)
    theirs_grads = torch.autograd.grad(theirs, (x, weight), grad)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # finite differences away from the kink
    assert torch.autograd.gradcheck(prelu, (x.detach()[1:, :, :3, :3].requires_grad_(True), weight))


def test_fold_batch_norms_keeps_the_function_and_removes_the_norms():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), PReLU(8), nn.Conv2d(8, 4, 1))
    with torch.no_grad():  # batch-norm statistics far from the identity, so a missed fold shows
        network[1].running_mean.uniform_(-1, 1)
        network[1].running_var.uniform_(0.5, 2)
        network[1].weight.uniform_(0.5, 2)
        network[1].bias.uniform_(-1, 1)
    network.eval()
    folded = fold_batch_norms(network)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 10, 10, requires_grad=True)
    assert torch.allclose(folded(x), network(x), atol=1e-5)
    (g_folded,) = torch.autograd.grad(folded(x).sum(), x)
    (g_plain,) = torch.autograd.grad(network(x).sum(), x)
    assert torch.allclose(g_folded, g_plain, atol=1e-5)
    # the fast PReLU survives tracing (recorded as a call, not inlined as torch's own op)
    assert any(node.target is prelu for node in folded.graph.nodes)
