"""Momentum networks: an exponential moving average of online modules, written once.

MoCo's key encoder (He et al. 2020, eq. 2), BYOL's target (Grill et al. 2020, Sec. 3.1) and DINO's
teacher (Caron et al. 2021, Sec. 3.1) are the same object: copies of some of the method's modules
that no optimiser trains, moved after each optimiser step by

    xi <- m_k xi + (1 - m_k) theta

with a base momentum m = cfg.ema_momentum and, by cfg.ema_schedule,

    constant: m_k = m                                                     (MoCo)
    cosine:   m_k = 1 - (1 - m) (cos(pi k / K) + 1) / 2,  k clamped to [0, K]   (BYOL Sec. 3.3, DINO)

so that under "cosine" the momentum rises from m at step k = 0 to 1 at the last step K (k counts
optimiser steps from 0, as the official BYOL code's `target_ema(global_step, ...)`). Buffers (BN
statistics) are the copies' own. The online modules are read by name from the method at each
update, not kept: under several workers the loop swaps BatchNorm layers for GlobalBatchNorm inside
them, and the modules updated are those the step trained.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from lab.knobs import UNSET, Knob
from lab.methods.base import frozen_copy

EMA_MOMENTUM = Knob("ema_momentum", float, UNSET, "base momentum m of the momentum network (MoCo's key encoder, "
                    "BYOL's target, DINO's teacher)", low=0, high=1)
EMA_SCHEDULE = Knob("ema_schedule", str, UNSET, "constant: m at every step (MoCo); cosine: from m to 1 over the "
                    "run (BYOL, DINO)", choices=("constant", "cosine"))
KNOBS = (EMA_MOMENTUM, EMA_SCHEDULE)


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """m_k = 1 - (1 - m)(cos(pi k / K) + 1) / 2, k clamped to [0, K] (BYOL Sec. 3.3)."""
    k = min(max(step, 0), total_steps)
    return 1 - (1 - base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1) / 2


def momentum_at(step: int, total_steps: int, base: float, schedule: str) -> float:
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return cosine_momentum(step, total_steps, base)
    raise ValueError(f"ema_schedule={schedule!r}: choose constant or cosine")


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    for o, t in zip(online.parameters(), target.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


class MomentumNetworks(nn.Module):
    """Frozen EMA copies of the method's modules `names` (`self[name]`), updated by `update`."""

    def __init__(self, method: nn.Module, names: Sequence[str], base_momentum: float, schedule: str):
        super().__init__()
        self.names = tuple(names)
        self.base_momentum, self.schedule = base_momentum, schedule
        momentum_at(0, 1, base_momentum, schedule)  # refuses an unknown schedule here, not at the first step
        self.copies = nn.ModuleDict({name: frozen_copy(getattr(method, name)) for name in self.names})

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    def momentum(self, step: int, total_steps: int) -> float:
        return momentum_at(step, total_steps, self.base_momentum, self.schedule)

    @torch.no_grad()
    def update(self, method: nn.Module, step: int, total_steps: int) -> float:
        """xi <- m_k xi + (1 - m_k) theta for every copy, after the optimiser step; returns m_k."""
        m = self.momentum(step, total_steps)
        for name in self.names:
            ema_update(getattr(method, name), self.copies[name], m)
        return m
