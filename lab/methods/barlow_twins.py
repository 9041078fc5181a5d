"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML 2021).

z = g(f(x)) for two views; each view's embedding is standardised along the batch
(mean 0, std 1 per dimension: the official code's BatchNorm1d(affine=False), i.e. the
BIASED batch variance with eps = 1e-5 under the square root); then the cross-correlation

    C_ij = sum_b z1n_{b,i} z2n_{b,j} / N                                       (eq. 2)

    L_BT = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2               (eq. 1)

with N the (global) batch size. Eq. 2 of the paper writes C_ij as the cosine along the batch
of the mean-centred embeddings, sum_b z1_bi z2_bj / (sqrt(sum_b z1_bi^2) sqrt(sum_b z2_bj^2)):
dividing by N after standardising with the BIASED std is exactly that (up to eps), so
C_ii = 1 for identical views; an unbiased (N - 1) std would cap C_ii at (N - 1) / N.
lambda = 5e-3 in the paper (Sec. 4), 0.0051 in the official code's default
(the lab's default too). C is d x d with d the projector's output width; the loss
is a sum over its entries (not a mean), so its scale grows with d.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.distributed import all_reduce_sum_with_grad
from lab.knobs import Knob
from lab.methods.base import Method, StepOutput, at_least_float32, sgd_recipe


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The d(d-1) off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """L_BT of eq. 1 on the cross-correlation of the GLOBAL batch.

    z1, z2: (n, d) projections of this worker's n images (two views). Under
    torch.distributed every batch statistic is a sum over workers through
    `all_reduce_sum_with_grad` (sum in forward, sum in backward):

      1. per-dimension sums (and the sample count) -> the global mean;
      2. per-dimension sums of squared deviations -> the global biased variance;
      3. the local products z1n^T z2n (d x d) -> C = sum over workers / N.

    So every worker holds the same C and the same loss L (the loss of the whole global batch,
    exactly what 1 worker computes on it). Gradients: each worker's graph ends in the same
    L, so the gradient that reaches worker w's embeddings through the all_reduce backward is
    the sum over workers of dL_w'/dz_w = W dL/dz_w; the loop then averages the parameter
    gradients over the W workers, which divides that W back out: the step is the 1-worker
    step on the global batch. (The official code all_reduces C with a plain, non-autograd
    all_reduce, so only the local part of C carries gradient and the gradient average leaves it
    1/W of the global gradient; we do not copy that.) The reported loss is the same on every
    worker, so its mean over workers is the global loss.
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):  # d x d statistics in fp32
        z1, z2 = at_least_float32(z1), at_least_float32(z2)
        n, d = z1.shape
        count = torch.full((1,), float(n), device=z1.device)
        sums = all_reduce_sum_with_grad(torch.cat([z1.sum(0), z2.sum(0), count]))
        n_global = sums[-1].detach()
        c1, c2 = z1 - sums[:d] / n_global, z2 - sums[d:2 * d] / n_global
        squares = all_reduce_sum_with_grad(torch.cat([(c1 * c1).sum(0), (c2 * c2).sum(0)]))
        var1, var2 = squares[:d] / n_global, squares[d:] / n_global  # biased, as BatchNorm1d
        z1n, z2n = c1 / torch.sqrt(var1 + eps), c2 / torch.sqrt(var2 + eps)
        c = all_reduce_sum_with_grad(z1n.T @ z2n) / n_global
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = off_diagonal(c).pow(2).sum()
        return on_diag + lambd * off_diag


class BarlowTwins(Method):
    name = "barlow_twins"
    # Zbontar et al. 2021 (Sec. 4 / official code): LARS, lr 0.2 x B/256 for weights (0.0048 for
    # biases and BN), weight decay 1.5e-6, batch 2048, 1000 epochs. The lab: SGD at gpu scale.
    knobs = (Knob("barlow_lambda", float, 0.0051, "weight lambda of the off-diagonal terms (eq. 1; the official "
                  "default 0.0051)", low=0),)
    defaults = sgd_recipe(base_lr=0.2, weight_decay=1.5e-6)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        # Paper: 3 linear layers of 8192, BN + ReLU between, a plain linear output (its BN is the loss's).
        self.projector, _ = self.make_projector()

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        loss = barlow_twins_loss(z1, z2, self.cfg.barlow_lambda)
        return StepOutput(loss, z1.detach())
