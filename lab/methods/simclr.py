"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., ICML 2020).

Two views of each image; z = g(f(x)); NT-Xent over the 2N views of the *global* batch:

    l(i, j) = -log  exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)        (eq. 1)

averaged over all 2N anchors (each view is an anchor once, its partner the positive, the
other 2N - 2 views the negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.distributed import gather_with_grad, rank
from lab.methods.base import TEMPERATURE, Method, StepOutput, sgd_recipe


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (eq. 1) for this worker's anchors against the global batch.

    z1, z2: (n, d) projections of the two views of this worker's n images. Under
    torch.distributed the candidates are gathered from all workers with gradients; the
    positives' indices are offset by this worker's rank. Returns the mean over this
    worker's 2n anchors (averaging the gradients over workers then gives the global mean).
    """
    n = z1.shape[0]
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    n_global = all1.shape[0]
    candidates = torch.cat([all1, all2], 0)  # 2N x d
    anchors = torch.cat([z1, z2], 0)  # 2n x d
    logits = anchors @ candidates.T / temperature
    local = torch.arange(n, device=z1.device) + rank() * n
    self_index = torch.cat([local, local + n_global])
    positive_index = torch.cat([local + n_global, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_index] = float("-inf")  # k != i
    return F.cross_entropy(logits, positive_index)


class SimCLR(Method):
    name = "simclr"
    knobs = (TEMPERATURE,)
    # tau 0.5: the paper's CIFAR-10 value (Appendix B.9). SGD with the linear scaling rule; LARS at
    # lr 0.3 x B/256 is the paper's ImageNet recipe.
    defaults = {"temperature": 0.5, **sgd_recipe(base_lr=0.3, weight_decay=1e-4)}

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.projector, _ = self.make_projector()

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        loss = nt_xent_loss(z1, z2, self.cfg.temperature)
        return StepOutput(loss, z1.detach())
