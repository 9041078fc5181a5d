"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

Online network: encoder f_theta, projector g_theta, predictor q_theta. Target network:
f_xi, g_xi, the same architecture without predictor, never trained by gradient; its weights
are an exponential moving average of the online ones (Sec. 3.1):

    xi <- tau xi + (1 - tau) theta,
    tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2          (Sec. 3.3, tau_base = 0.996)

so tau rises from tau_base at step k = 0 to 1 at the last step K (lab.methods.momentum, with
tau_base = cfg.ema_momentum and ema_schedule='cosine').

Loss (eq. 2): with q = q_theta(z_theta) / ||.|| and z' = z'_xi / ||.|| (l2-normalised),

    L = || q - z' ||^2 = 2 - 2 <q_theta(z_theta), z'_xi> / (||q_theta(z_theta)|| ||z'_xi||)

and the symmetrised loss is the SUM (not the mean) of the two directions,
L^BYOL = L + L~, where L~ feeds v' to the online and v to the target network (Sec. 3.1, the
official code adds the two regression losses then averages over the batch). Per sample,
each direction lies in [0, 4]: identical directions give 0, orthogonal 2, opposite 4; the
symmetrised loss lies in [0, 8].

`predictor=False` replaces q_theta by the identity (the predictor ablation of Sec. 5: without
a predictor BYOL's representation collapses).

Distributed: the loss is a per-sample mean, so each worker's mean over its B/W samples,
averaged over the W workers (lab.distributed.average_gradients), is the global-batch mean. The target's BatchNorm layers
are converted to GlobalBatchNorm with the rest of the method (lab.train.prepare_for_workers)
and the EMA runs on the unwrapped method after the optimiser step; the parameters are read
at each update (not cached at construction), so the converted modules are the ones updated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.heads import PREDICTOR, PREDICTOR_HIDDEN_DIM, mlp
from lab.knobs import derived, per_scale
from lab.methods.base import Method, StepOutput, at_least_float32, sgd_recipe
from lab.methods.momentum import EMA_MOMENTUM, EMA_SCHEDULE, MomentumNetworks


def regression_loss(p: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, sg(z')) per sample (eq. 2), shape (n,)."""
    p = F.normalize(at_least_float32(p), dim=1)
    z_target = F.normalize(at_least_float32(z_target.detach()), dim=1)
    return 2 - 2 * (p * z_target).sum(dim=1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1_target: torch.Tensor,
              z2_target: torch.Tensor) -> torch.Tensor:
    """L^BYOL = L + L~ averaged over the batch: q(view 1) predicts target(view 2) and vice versa.

    p1, p2: online predictions of views 1, 2; z1_target, z2_target: target projections of
    views 1, 2 (stop-gradient applied here). Range [0, 8]; 0 when every prediction points
    like its target, 4 when all are orthogonal (2 per direction).
    """
    return (regression_loss(p1, z2_target) + regression_loss(p2, z1_target)).mean()


class BYOL(Method):
    name = "byol"
    knobs = (PREDICTOR, PREDICTOR_HIDDEN_DIM, EMA_MOMENTUM, EMA_SCHEDULE)
    # Grill et al. 2020 (Sec. 3.3): LARS, lr 0.2 x B/256 (batch 4096), weight decay 1.5e-6, cosine decay,
    # 1000 epochs; the lab uses SGD + momentum with the same base lr at gpu scale. The predictor is as wide
    # as the projector's hidden layer (Sec. 3.3: 4096 both), not SimSiam's bottleneck. tau_base 0.996 averages
    # over ~250 steps, a third of a run of ~700 steps (smoke, cpu), so those scales follow faster (0.95;
    # README, "BYOL at 28 px"); the paper's horizon is 1/1000 of its 300k steps.
    defaults = {"predictor_hidden_dim": derived(lambda c: c.head_hidden_dim, "head_hidden_dim"),
                "ema_momentum": per_scale(smoke=0.95, cpu=0.95, gpu=0.996), "ema_schedule": "cosine",
                **sgd_recipe(base_lr=0.2, weight_decay=1.5e-6)}

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        # BYOL's projector and predictor: Linear(4096)-BN-ReLU-Linear(256), no BN on the output (Sec. 3.3).
        self.projector, dim = self.make_projector()
        self.predictor = mlp(dim, cfg.predictor_hidden_dim, dim, 2) if cfg.predictor else nn.Identity()
        # The target: registered copies (saved in state_dict / checkpoints), never optimised.
        self.target = MomentumNetworks(self, ("backbone", "projector"), cfg.ema_momentum, cfg.ema_schedule)

    @property
    def encoder(self) -> nn.Module:
        """The online encoder f_theta (what the paper evaluates)."""
        return self.backbone

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = (self.target["projector"](self.target["backbone"](v)) for v in views)
        loss = byol_loss(p1, p2, t1, t2)
        return StepOutput(loss, p1.detach())  # the collapse signal on the online prediction (z without predictor)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """xi <- tau_k xi + (1 - tau_k) theta, after the optimiser has updated theta."""
        self.target.update(self, step, total_steps)
