"""SupCon: Supervised Contrastive Learning (Khosla et al., NeurIPS 2020).

Labels decide the positives. Over the 2N views of the *global* batch, for each anchor i,
P(i) = the views with i's label except i itself, A(i) = all views except i; the "L_out"
form (eq. 2, the one the paper finds best):

    L = sum_i  -1/|P(i)|  sum_{p in P(i)}  log  exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau)

averaged over anchors, z l2-normalised. With two views of every image, the other view is
always in P(i), so no anchor is without a positive (|P(i)| >= 1). With all labels distinct
P(i) is just that other view and the loss is SimCLR's NT-Xent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.distributed import gather, gather_with_grad, rank
from lab.methods.base import TEMPERATURE, Method, StepOutput, at_least_float32, sgd_recipe


def supcon_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon L_out (eq. 2) for this worker's anchors against the global batch.

    z1, z2: (n, d) projections of the two views of this worker's n images, labels: (n,).
    As in nt_xent_loss: the candidates are gathered from all workers with gradients (the
    labels without), this worker's anchors sit at rows offset by its rank, and the result is
    the mean over its 2n anchors (averaging the gradients over workers then gives the global mean).
    """
    n = z1.shape[0]
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    all_labels = gather(labels)
    n_global = all1.shape[0]
    candidates = torch.cat([all1, all2], 0)  # 2N x d
    candidate_labels = torch.cat([all_labels, all_labels])
    anchors = torch.cat([z1, z2], 0)  # 2n x d
    anchor_labels = torch.cat([labels, labels])
    logits = at_least_float32(anchors @ candidates.T) / temperature  # float32 under autocast, as cross_entropy would
    local = torch.arange(n, device=z1.device) + rank() * n
    self_index = torch.cat([local, local + n_global])
    rows = torch.arange(2 * n, device=z1.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_index] = True
    log_prob = torch.log_softmax(logits.masked_fill(is_self, float("-inf")), dim=1)  # a in A(i)
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & ~is_self  # p in P(i)
    per_anchor = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1) / positive.sum(1)
    return per_anchor.mean()


class SupCon(Method):
    name = "supcon"
    knobs = (TEMPERATURE,)
    defaults = {"temperature": 0.1, **sgd_recipe(base_lr=0.05, weight_decay=1e-4)}  # Khosla et al. 2020, Sec. 4

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.projector, _ = self.make_projector()

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        if labels is None:
            raise ValueError("supcon is supervised: forward(views, labels) needs the images' class labels "
                             "(labels decide the positives); got labels=None")
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        loss = supcon_loss(z1, z2, labels.to(z1.device), self.cfg.temperature)
        return StepOutput(loss, z1.detach())
