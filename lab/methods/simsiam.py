"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021).

z = g(f(x)) (projector with BN on its output), p = h(z) (predictor, a bottleneck MLP),

    D(p, z) = - p / ||p|| . z / ||z||
    L = 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1))                                  (eq. 1-3)

Ablations of Sec. 4 as switches: `simsiam_stop_gradient=False` removes sg() (collapses: the loss
goes to -1, the per-dimension std of the normalised output to 0); `predictor=False`
removes h (also fails). The run's collapse signal is the std of p (= z without predictor): without
stop-gradient p becomes one constant vector, while z, behind the projector's output BatchNorm
(per-dimension batch std forced to 1), cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.heads import PREDICTOR, PREDICTOR_HIDDEN_DIM, mlp
from lab.knobs import Knob
from lab.methods.base import Method, StepOutput, at_least_float32, sgd_recipe

STOP_GRADIENT = Knob("simsiam_stop_gradient", bool, True, "sg() on the target branch (off: the ablation of "
                     "Sec. 4.1, which collapses)")


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) averaged over the batch, in float32 at least (bf16 predictions under autocast are promoted)."""
    p, z = at_least_float32(p), at_least_float32(z)
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                 stop_gradient: bool = True) -> torch.Tensor:
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


class SimSiam(Method):
    name = "simsiam"
    knobs = (PREDICTOR, PREDICTOR_HIDDEN_DIM, STOP_GRADIENT)
    # Chen & He 2021: SGD, lr 0.05 x B/256, momentum 0.9, weight decay 1e-4, cosine decay.
    defaults = sgd_recipe(base_lr=0.05, weight_decay=1e-4)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.projector, dim = self.make_projector(last_bn=cfg.head == "mlp")
        self.predictor = mlp(dim, cfg.predictor_hidden_dim, dim, 2) if cfg.predictor else nn.Identity()

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2, self.cfg.simsiam_stop_gradient)
        return StepOutput(loss, p1.detach())  # the collapse signal on p (the module docstring says why)
