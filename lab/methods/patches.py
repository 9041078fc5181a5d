"""Tiles and patches for the patch-based pretext tasks: jigsaw (Noroozi & Favaro 2016) and
context prediction (Doersch, Gupta & Efros 2015).

Both cut small squares out of a batch of images at per-image random positions, pass each square
through the shared backbone and classify the arrangement. What they share lives here:

- `extract_patches(x, top, left, size)`: K squares per image at given corners, one advanced-indexing
  op for the whole batch (no Python loop over images).
- the geometry of the two papers scaled down to the lab's image sides (`jigsaw_geometry`,
  `context_geometry`), with `MIN_PATCH_SIDE` as the smallest square that still carries structure;
- `to_backbone_side`: squares are upsampled x2 (bilinear) before the backbone (why: the comment on
  `ZOOM`);
- `StepRandomness`: the per-image random draws of a step (which permutation, which neighbour, where
  each square sits) for the GLOBAL batch from a generator seeded by (seed, step), this worker's rows
  sliced out, so 2 workers x B/2 draw exactly what 1 worker x B draws, and a resumed run draws
  what the uninterrupted one did (the step counter is a buffer of the method, saved in checkpoints);
- `bn_statistics_frozen`: the backbone's BatchNorm running statistics are left untouched by the
  squares (see the methods' docstrings: they are re-estimated on whole images, which is what the
  evaluation feeds the backbone).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab import distributed as dist_utils
from lab.seeds import derived_seed

# The smallest tile / patch side (px) the lab accepts: below 4 px a square of a 28-px image holds
# hardly more than a texture value, and twice it (see ZOOM) is the 8 px that the three 2x2 max-pools
# of convnet_small need to leave a 1 x 1 map.
MIN_PATCH_SIDE = 4

# Squares go through the backbone upsampled x2. Reasons:
# 1. A 28-px Fashion-MNIST image gives 7-px jigsaw tiles and 6-px context patches; convnet_small's
#    three max-pools take 7 px to 3, 1, then 0 (an error), so native-size tiles cannot be fed at all.
# 2. x2 is the jigsaw network's own ratio between pretext and transfer resolution: the context-free
#    network runs its first convolution at stride 2 on the tiles where AlexNet, into which its
#    weights are transferred, runs stride 4 on whole images (the reference PyTorch port,
#    bbrattoli/JigsawPuzzlePytorch JigsawNetwork.py, conv1 stride 2), i.e. a tile is seen at twice
#    the sampling density of the whole image. Context prediction reuses the same rule.
# 3. Cost: 9 tiles at 14 px are 2.25 whole 28-px images of compute, against 9 for upsampling every
#    tile to the full 28 px (the alternative that would match the evaluated input side exactly).
ZOOM = 2


def to_backbone_side(squares: torch.Tensor) -> torch.Tensor:
    """N x C x s x s squares -> N x C x (ZOOM s) x (ZOOM s), bilinear."""
    side = squares.shape[-1] * ZOOM
    return F.interpolate(squares, size=(side, side), mode="bilinear", align_corners=False)


def extract_patches(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """x: B x C x H x W; top, left: B x K integer corners -> B x K x C x size x size.

    Square k of image b is x[b, :, top[b,k] : top[b,k]+size, left[b,k] : left[b,k]+size]; every corner
    must keep the square inside the image (checked).
    """
    b, _, h, w = x.shape
    if top.shape != left.shape or top.shape[0] != b:
        raise ValueError(f"top {tuple(top.shape)} and left {tuple(left.shape)} must both be B x K with B = {b}")
    if top.numel() and (top.min() < 0 or left.min() < 0 or top.max() + size > h or left.max() + size > w):
        raise ValueError(f"a {size}-px square at the given corners leaves the {h} x {w} image")
    offsets = torch.arange(size, device=x.device)
    rows = (top.to(x.device)[:, :, None] + offsets)[:, :, :, None]  # B x K x s x 1
    cols = (left.to(x.device)[:, :, None] + offsets)[:, :, None, :]  # B x K x 1 x s
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    # advanced indices on dims 0, 2, 3 broadcast to B x K x s x s; the sliced channel dim goes last
    return x[batch, :, rows, cols].permute(0, 1, 4, 2, 3)


# ----------------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class JigsawGeometry:
    """A grid x grid puzzle in a side x side image: cells of `cell` px, tiles of `tile` px."""

    side: int
    grid: int
    cell: int
    tile: int

    @property
    def slack(self) -> int:
        """Pixels left over by grid * cell: the grid's random offset in the image."""
        return self.side - self.grid * self.cell


def jigsaw_geometry(side: int, grid: int) -> JigsawGeometry:
    """Noroozi & Favaro, Sec. 3: a 225-px crop, 3 x 3 cells of 75 px, a 64-px tile drawn at random in
    each cell (gaps of 0 to 22 px between neighbours, 11 on average, so that continuous edges do
    not give the arrangement away). Scaled: cells of side // grid px, tiles floor(cell * 64 / 75)
    (28 px, 3 x 3: cells 9, tiles 7, gaps 0 to 4 px)."""
    cell = side // grid
    return JigsawGeometry(side, grid, cell, math.floor(cell * 64 / 75))


@dataclass(frozen=True)
class ContextGeometry:
    """A 3 x 3 grid of `patch`-px patches `gap` px apart, each jittered by up to `jitter` px."""

    side: int
    patch: int
    gap: int
    jitter: int

    @property
    def slack(self) -> int:
        """Pixels left over by the grid and the jitter: the grid's random offset in the image."""
        return self.side - 3 * self.patch - 2 * self.gap - 2 * self.jitter


def context_geometry(side: int) -> ContextGeometry:
    """Doersch et al., Sec. 3 and 4: 96-px patches, a gap of 48 px (half a patch) between neighbours,
    each patch jittered by up to 7 px (7/96 of a patch). Scaled so that the 3 x 3 grid and its jitter
    fit the image: patch floor(side * 96 / 398) (398 = 3 * 96 + 2 * 48 + 2 * 7), jitter
    max(1, round(7/96 patch)), gap half a patch or what the side leaves. 28 px: patches 6, gap 3,
    jitter 1, so neighbours stay 1 to 5 px apart."""
    patch = math.floor(side * 96 / 398)
    jitter = max(1, round(patch * 7 / 96))
    gap = min(math.ceil(patch / 2), (side - 3 * patch - 2 * jitter) // 2)
    return ContextGeometry(side, patch, gap, jitter)


# The 8 neighbours of the centre (1, 1) in the order of Doersch et al., Fig. 2: row-major, centre skipped.
NEIGHBOURS = torch.tensor([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)])


# ---------------------------------------------------------------------------------- randomness

class StepRandomness:
    """Per-image random draws of one training step, identical however the batch is split over workers.

    `generator(seed, step)` seeds a CPU generator from the run's seed and the method's step counter;
    draws are made for the global batch (local batch x world size) and `local` keeps this worker's
    rows (the loop gives worker r the rows r*B/W .. (r+1)*B/W of the global batch).
    """

    def __init__(self, seed: int, step: int, local_batch: int):
        self.generator = torch.Generator().manual_seed(derived_seed(seed, offset=step))
        self.local_batch = local_batch
        self.global_batch = local_batch * dist_utils.world_size()

    def local(self, t: torch.Tensor) -> torch.Tensor:
        start = dist_utils.rank() * self.local_batch
        return t[start:start + self.local_batch]

    def integers(self, high: int, *shape: int) -> torch.Tensor:
        """Uniform integers in [0, high) of shape (global batch, *shape), this worker's rows."""
        return self.local(torch.randint(high, (self.global_batch, *shape), generator=self.generator))

    def integers_between(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Uniform integers in [low, high] (inclusive) of shape (global batch, *shape), this worker's rows."""
        return self.local(torch.randint(low, high + 1, (self.global_batch, *shape), generator=self.generator))


@contextlib.contextmanager
def bn_statistics_frozen(module: nn.Module):
    """BatchNorm layers of `module` normalise with the batch's statistics as usual in training but do
    not move their running statistics (momentum 0 for the duration)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
