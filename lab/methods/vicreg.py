"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

For the two views' embeddings Z, Z' (n x d), as in the official code (main_vicreg.py):

    invariance  s = F.mse_loss(Z, Z')  = 1/(n d) sum_i ||z_i - z'_i||^2
    variance    v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))     (eq. 1-2)
    covariance  c(Z) = 1/d sum_{i != j} C(Z)_ij^2,
                C(Z) = 1/(n - 1) sum_i (z_i - zbar)(z_i - zbar)^T           (eq. 3-4)

    loss = lambda s + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))

with Var the UNBIASED variance (torch.var, n - 1), lambda = mu = 25, nu = 1, gamma = 1,
eps = 1e-4 (Sec. 4.1 / official defaults).

Two normalisations differ between the paper's equations and the official code; we follow
the code (whose coefficients 25 / 25 / 1 are the ones that were tuned):
- the paper's s(Z, Z') (eq. 5) is 1/n sum_i ||z_i - z'_i||^2, the code's F.mse_loss divides
  by d as well (a factor 1/d on the invariance term);
- the paper's eq. 6 has mu [v(Z) + v(Z')], the code halves it: mu (v(Z) + v(Z')) / 2.

Distributed: variance and covariance are statistics of the GLOBAL batch: z is gathered
from all workers with `gather_with_grad` (all-gather, backward = all_reduce SUM then this
worker's slice), so every worker computes the same v and c (those of the 1-worker global
batch). Gradients: every worker's loss contains the same v + c, so the gradient reaching
worker w's rows through the gather's backward is W d(v + c)/dz_w, and the gradient average over
the W workers divides the W back out: exactly the global gradient. The invariance term is
a per-element mean and stays local: worker w's F.mse_loss over its n = B / W rows has
gradient 2 (z_w - z'_w) / (n d) = W x the global one (2 (z - z') / (B d)), and the 1/W of the gradient average
again gives the global gradient; its value, averaged over the W equal shares, is the
global mean. So each worker's loss is lambda s_w + mu v + nu c, the mean over workers of
these losses is the global loss, and the averaged step equals the 1-worker step on the global
batch (for equal per-worker batches, which the lab's config enforces).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.distributed import gather_with_grad
from lab.methods.barlow_twins import off_diagonal
from lab.knobs import Knob
from lab.methods.base import Method, StepOutput, at_least_float32, sgd_recipe


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = mean_j relu(gamma - sqrt(Var(z^j) + eps)), Var unbiased over the rows of z."""
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = sum of squared off-diagonal entries of C(Z) (1/(n-1) normalised) / d."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float, std_coeff: float, cov_coeff: float,
                gamma: float = 1.0, eps: float = 1e-4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, {"invariance", "variance", "covariance"}) for this worker's (n, d) embeddings z1, z2.

    The parts are the unweighted, detached terms: invariance = F.mse_loss(z1, z2) (local),
    variance = (v(Z1) + v(Z2)) / 2 and covariance = c(Z1) + c(Z2) over the gathered global batch.
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):  # d x d statistics in fp32
        z1, z2 = at_least_float32(z1), at_least_float32(z2)
        invariance = F.mse_loss(z1, z2)
        g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
        variance = (variance_term(g1, gamma, eps) + variance_term(g2, gamma, eps)) / 2
        covariance = covariance_term(g1) + covariance_term(g2)
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    parts = {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}
    return loss, parts


class VICReg(Method):
    name = "vicreg"
    # Bardes et al. 2022 (Sec. 4.1 / official code): LARS, base lr 0.2 x B/256, weight decay 1e-6,
    # batch 2048, 1000 epochs. The lab: SGD at gpu scale.
    knobs = (
        Knob("vicreg_sim", float, 25.0, "invariance coefficient lambda", low=0),
        Knob("vicreg_var", float, 25.0, "variance coefficient mu", low=0),
        Knob("vicreg_cov", float, 1.0, "covariance coefficient nu", low=0),
        Knob("vicreg_gamma", float, 1.0, "target std gamma of the variance term", low=0, low_open=True),
    )
    defaults = sgd_recipe(base_lr=0.2, weight_decay=1e-6)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        # Paper: expander of 3 linear layers of 8192, BN + ReLU between, plain linear output.
        self.projector, _ = self.make_projector()

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        loss, _ = vicreg_loss(z1, z2, self.cfg.vicreg_sim, self.cfg.vicreg_var, self.cfg.vicreg_cov,
                              self.cfg.vicreg_gamma)
        return StepOutput(loss, z1.detach())
