"""The two pieces several methods share: momentum networks (MoCo, PCL, PNDA, BYOL, DINO) and the FIFO
queue (MoCo, SwAV)."""

import math

import pytest
import torch
from torch import nn

from lab.distributed import GlobalBatchNorm, convert_to_global_batchnorm
from lab.methods.momentum import MomentumNetworks, cosine_momentum, momentum_at
from lab.methods.queue import FeatureQueue


def test_the_schedules():
    # cosine (BYOL Sec. 3.3): m_k = 1 - (1 - m)(cos(pi k / K) + 1) / 2; constant (MoCo eq. 2): m
    for k, expected in ((0, 0.9), (25, 1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2), (50, 0.95), (100, 1.0),
                        (400, 1.0)):
        assert momentum_at(k, 100, 0.9, "cosine") == pytest.approx(expected)
        assert momentum_at(k, 100, 0.9, "constant") == 0.9
    assert cosine_momentum(3, 0, 0.5) == pytest.approx(0.5)  # K = 0: k clamped to 0, no division by zero
    with pytest.raises(ValueError, match="ema_schedule='linear'"):
        MomentumNetworks(nn.Module(), (), 0.9, "linear")


class _Online(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)


def test_copies_are_frozen_registered_and_follow_the_modules_the_step_trains():
    online = _Online()
    online.momentum = MomentumNetworks(online, ("backbone", "head"), 0.5, "constant")
    copies = list(online.momentum.parameters())
    assert copies and not any(p.requires_grad for p in copies)
    assert {k.split(".")[2] for k in online.state_dict() if k.startswith("momentum.")} == {"backbone", "head"}
    # under several workers the loop swaps BatchNorm for GlobalBatchNorm inside the online modules: the update
    # reads them by name, so it moves the copies towards the modules that are trained now
    convert_to_global_batchnorm(online)
    assert isinstance(online.backbone[1], GlobalBatchNorm)
    with torch.no_grad():
        for p in list(online.backbone.parameters()) + list(online.head.parameters()):
            p.add_(1.0)
    before = [p.clone() for p in online.momentum.parameters()]
    assert online.momentum.update(online, step=7, total_steps=10) == 0.5
    trained = list(online.backbone.parameters()) + list(online.head.parameters())
    for b, a, o in zip(before, online.momentum.parameters(), trained):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * o)


def test_queue_fifo_fill_and_copies():
    queue = FeatureQueue(views=2, size=4, dim=3, init="zeros")
    assert int(queue.filled) == 0 and queue.view(0).shape == (0, 3)
    a, b, c = (torch.full((2, 3), float(v)) for v in (1, 2, 3))
    queue.enqueue([a, -a])
    queue.enqueue([b, -b])
    assert int(queue.filled) == 4 and int(queue.ptr) == 0
    snapshot = queue.view(1)
    queue.enqueue([c, -c])  # overwrites the two oldest rows of each view
    torch.testing.assert_close(queue.view(0), torch.cat([c, b]))
    torch.testing.assert_close(queue.view(1), torch.cat([-c, -b]))
    torch.testing.assert_close(snapshot, torch.cat([-a, -b]))  # a view is a copy
    random = FeatureQueue(views=1, size=5, dim=3, init="random")
    assert int(random.filled) == 5  # MoCo: random keys are negatives from the first step
    torch.testing.assert_close(random.view().norm(dim=1), torch.ones(5))
    assert {"rows", "ptr", "filled"} == set(dict(random.named_buffers()))
