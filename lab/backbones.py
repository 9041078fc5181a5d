"""Encoders f(x) -> representation h, chosen per scale.

- convnet_tiny  (smoke, ~25k parameters): the tooling end to end in minutes.
- convnet_small (cpu, ~100k parameters, downsampling early: ~1200 SimCLR images/s on one core): numbers that mean something on 2 cores.
- resnet18_cifar (gpu): ResNet-18 with the CIFAR stem of SimCLR / SimSiam (3x3 conv, stride 1,
  no max-pool), as in the papers' CIFAR experiments.
Every backbone exposes `out_dim`, the width of the representation used for evaluation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvNet(nn.Module):
    """A VGG-style stack of 3x3 conv-BN-ReLU blocks with 2x2 max-pools, then global average pooling."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], pool_after: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate(widths):
            layers += _conv_bn_relu(c, width)
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNet18Cifar(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "convnet_tiny": lambda c: ConvNet(c, (16, 32, 64), pool_after=(0, 1)),
    "convnet_small": lambda c: ConvNet(c, (16, 32, 64, 128), pool_after=(0, 1, 2)),
    "resnet18_cifar": ResNet18Cifar,
}


def check_ba2m_blocks(name: str, ba2m_blocks: int) -> None:
    """Raise ConfigError if the backbone has fewer blocks than BA^2M should go into."""
    if ba2m_blocks:
        from lab.config import ConfigError

        raise ConfigError("ba2m_blocks: BA^2M is being written")


def build_backbone(name: str, in_channels: int, ba2m_blocks: int = 0, ba2m_reduction: int = 16) -> nn.Module:
    """The encoder; with ba2m_blocks > 0, BA^2M (lab.ba2m) after each of its last ba2m_blocks blocks."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; choose one of {sorted(BACKBONES)}")
    check_ba2m_blocks(name, ba2m_blocks)
    return BACKBONES[name](in_channels)
