"""Encoders f(x) -> representation h, chosen per scale.

- convnet_tiny  (smoke, ~25k parameters): the tooling end to end in minutes.
- convnet_small (cpu, ~100k parameters, downsampling early: ~1200 SimCLR images/s on one core): numbers that mean something on 2 cores.
- resnet18_cifar (gpu): ResNet-18 with the CIFAR stem of SimCLR / SimSiam (3x3 conv, stride 1,
  no max-pool), as in the papers' CIFAR experiments.
Every backbone exposes `out_dim`, the width of the representation used for evaluation.

BA^2M (lab.ba2m, Cheng et al. 2021) goes into the last `ba2m_blocks` blocks, counted from the
last: a ConvNet block is conv-BN-ReLU (+ its max-pool), and BA^2M follows it; a ResNet-18 block is
a basic block (8 of them), and BA^2M sits on its residual branch after the second BN, before the
addition (where SE / CBAM-style modules go). With ba2m_blocks = 0 the backbone is built exactly as
without BA^2M (same modules, same parameter names, same random draws); with ba2m_blocks > 0 the
plain backbone is drawn first, then the BA^2M modules, so its weights equal the plain backbone's
of the same seed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lab.errors import ConfigError
from lab.knobs import Knob, per_scale


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


CONVNETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {  # name: (widths, pool_after)
    "convnet_tiny": ((16, 32, 64), (0, 1)),
    "convnet_small": ((16, 32, 64, 128), (0, 1, 2)),
}
RESNET18_BLOCKS = 8  # basic blocks: layer1..layer4, two each

BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "convnet_tiny": lambda c: ConvNet(c, *CONVNETS["convnet_tiny"]),
    "convnet_small": lambda c: ConvNet(c, *CONVNETS["convnet_small"]),
    "resnet18_cifar": ResNet18Cifar,
}


KNOBS = (
    Knob("backbone", str, per_scale(smoke="convnet_tiny", cpu="convnet_small", gpu="resnet18_cifar"),
         "the encoder f", choices=lambda: sorted(BACKBONES)),
    Knob("ba2m_blocks", int, 0, "BA^2M after the last N blocks of the backbone (0: none; Cheng et al. 2021)", low=0),
    Knob("ba2m_reduction", int, 16, "channel reduction r of BA^2M's attention branches", low=1),
)


def block_count(name: str) -> int:
    """How many blocks the backbone has (the most BA^2M modules it can take)."""
    if name in CONVNETS:
        return len(CONVNETS[name][0])
    if name == "resnet18_cifar":
        return RESNET18_BLOCKS
    raise ValueError(f"backbone {name!r} is unknown; choose one of {sorted(BACKBONES)}")


def check_ba2m_blocks(name: str, ba2m_blocks: int) -> None:
    """Raise ConfigError if the backbone has fewer blocks than BA^2M should go into."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone={name!r} is unknown; choose one of {sorted(BACKBONES)}")
    blocks = block_count(name)
    if not 0 <= ba2m_blocks <= blocks:
        raise ConfigError(f"ba2m_blocks={ba2m_blocks}: backbone {name} has {blocks} blocks, so BA^2M can go after "
                          f"at most its last {blocks}; use 0 <= ba2m_blocks <= {blocks} (0: no BA^2M)")


def _convnet_with_ba2m(net: ConvNet, ba2m_blocks: int, reduction: int) -> ConvNet:
    """Insert BA^2M after the last `ba2m_blocks` conv-BN-ReLU(-pool) blocks of `net.features`."""
    from lab.ba2m import BA2M

    layers = list(net.features)
    ends: list[tuple[int, int]] = []  # (index of the block's last layer, its width)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ReLU):
            last = i + 1 if i + 1 < len(layers) and isinstance(layers[i + 1], nn.MaxPool2d) else i
            ends.append((last, layers[i - 2].out_channels))
    inserted = {end: BA2M(width, reduction) for end, width in ends[len(ends) - ba2m_blocks:]}
    new_layers: list[nn.Module] = []
    for i, layer in enumerate(layers):
        new_layers.append(layer)
        if i in inserted:
            new_layers.append(inserted[i])
    net.features = nn.Sequential(*new_layers)
    return net


def _resnet_with_ba2m(net: ResNet18Cifar, ba2m_blocks: int, reduction: int) -> ResNet18Cifar:
    """BA^2M on the residual branch of the last `ba2m_blocks` basic blocks: bn2 -> (bn2, BA^2M)."""
    from lab.ba2m import BA2M

    blocks = [block for stage in (net.net.layer1, net.net.layer2, net.net.layer3, net.net.layer4) for block in stage]
    for block in blocks[len(blocks) - ba2m_blocks:]:
        block.bn2 = nn.Sequential(block.bn2, BA2M(block.bn2.num_features, reduction))
    return net


def build_backbone(name: str, in_channels: int, ba2m_blocks: int = 0, ba2m_reduction: int = 16) -> nn.Module:
    """The encoder; with ba2m_blocks > 0, BA^2M (lab.ba2m) after each of its last ba2m_blocks blocks."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is unknown; choose one of {sorted(BACKBONES)}")
    check_ba2m_blocks(name, ba2m_blocks)
    net = BACKBONES[name](in_channels)
    if ba2m_blocks == 0:
        return net
    if isinstance(net, ConvNet):
        return _convnet_with_ba2m(net, ba2m_blocks, ba2m_reduction)
    return _resnet_with_ba2m(net, ba2m_blocks, ba2m_reduction)
