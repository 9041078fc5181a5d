"""Losses against their equations, on tensors small enough to work out by hand."""

import math

import torch

from lab.methods.simclr import nt_xent_loss
from lab.methods.simsiam import simsiam_loss


def nt_xent_by_definition(z1, z2, tau):
    """SimCLR eq. 1 written as loops over the 2N views, cosine similarities by hand."""
    views = [list(map(float, v)) for v in torch.cat([z1, z2])]
    n = len(z1)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(cos(views[i], views[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(cos(views[i], views[j]) / tau) / denominator)
    return total / (2 * n)


def test_nt_xent_worked_example():
    # views (1,0),(0,1) | (1,0),(0,1): each anchor has sims {0, 1 (positive), 0} -> log(2 + e) - 1 at tau = 1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert math.isclose(nt_xent_loss(z, z.clone(), 1.0).item(), math.log(2 + math.e) - 1, rel_tol=1e-6)


def test_nt_xent_matches_definition_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    for tau in (0.1, 0.5, 2.0):
        z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
        assert math.isclose(nt_xent_loss(z1, z2, tau).item(), nt_xent_by_definition(z1, z2, tau), rel_tol=1e-5)


def test_nt_xent_is_scale_invariant_and_lower_for_aligned_views():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 4, generator=g)
    assert math.isclose(nt_xent_loss(z1, 3 * z1, 0.5).item(), nt_xent_loss(z1, z1, 0.5).item(), rel_tol=1e-6)
    assert nt_xent_loss(z1, z1, 0.5) < nt_xent_loss(z1, torch.randn(8, 4, generator=g), 0.5)


def test_simsiam_worked_example():
    # D(p1, z2) = -cos((1,0),(1,1)) = -1/sqrt(2); D(p2, z1) = -cos((0,1),(0,-1)) = 1
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    p2, z1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, -1.0]])
    expected = 0.5 * (-1 / math.sqrt(2)) + 0.5 * 1.0
    assert math.isclose(simsiam_loss(p1, p2, z1, z2).item(), expected, rel_tol=1e-6)
    # identical predictions and targets: the minimum, -1
    assert math.isclose(simsiam_loss(z1, z2, z2, z1).item(), -1.0, rel_tol=1e-6)


def test_simsiam_stop_gradient_blocks_the_target_branch():
    p1, p2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    z1, z2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    simsiam_loss(p1, p2, z1, z2, stop_gradient=True).backward()
    assert z1.grad is None and z2.grad is None and p1.grad.abs().sum() > 0
    simsiam_loss(p1, p2, z1, z2, stop_gradient=False).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
