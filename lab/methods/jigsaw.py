"""Jigsaw puzzles: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles
(Noroozi & Favaro, ECCV 2016).

The image is cut into a grid x grid puzzle (cfg.jigsaw_grid, the paper's 3 x 3); each tile is a
random crop inside its cell, so that neighbouring tiles are separated by a random gap and
continuous edges do not reveal the arrangement (Sec. 3: 64-px tiles in 75-px cells of a 225-px
crop; here `patches.jigsaw_geometry`, 7-px tiles in 9-px cells at 28 px). The T = grid^2 tiles are shuffled by
a permutation p drawn uniformly from a FIXED set P of N = cfg.jigsaw_permutations permutations;
position t of the puzzle holds original tile p(t). The context-free network (CFN) passes
every tile separately through the shared backbone f, concatenates the T features in puzzle order
and a classifier F predicts the index of p in P:

    loss = -1/B sum_b log softmax( F([f(x_{b,p_b(1)}), ..., f(x_{b,p_b(T)})]) )_{index(p_b)}

(cross-entropy, `jigsaw_loss`). The classifier is `cfg.head`-shaped like rotation's (none or linear:
one linear layer; mlp: cfg.head_layers layers of width cfg.head_hidden_dim), standing in for the
CFN's fc7-fc8 on the concatenated fc6 features.

The permutation set (Algorithm 1): the paper enumerates all 9! permutations, starts from
a random one and repeatedly adds the candidate whose summed Hamming distance to the chosen set is
largest. Its 100-permutation set so still holds pairs at distance 2 (Table 3, the permutation-set
ablation: minimum distance 2 against an average of ~8), and the same ablation shows that the task
is both harder and a better pretext when the permutations are far apart. `maximal_hamming_permutations` therefore ranks
candidates first by their MINIMUM Hamming distance to the chosen set (max-min, the brief's reading:
the set's minimum pairwise distance is as large as the greedy can make it) and breaks ties by the
paper's summed distance (so the average stays the paper's). Candidates: all (grid^2)! permutations,
enumerated with numpy (insertion of each new item at every position, vectorised over rows) when
(grid^2)! <= 9!; otherwise (4 x 4 and finer grids: 16! ~ 2e13) a pool of POOL_SIZE distinct
permutations drawn with the seed. Deterministic for (N, T, seed); the set is a buffer, so
checkpoints carry it.

Design choices:

- Tiles are upsampled x2 before the backbone (`patches.ZOOM`: the three max-pools of convnet_small
  cannot take a 7-px tile, and x2 is the CFN's stride-2-vs-AlexNet's-stride-4 resolution ratio).
- BatchNorm statistics: the evaluation feeds whole images to the backbone in eval mode, so its
  running statistics must describe whole images, not x2-upsampled tiles (a different
  distribution at every layer). The tiles are normalised with their own batch statistics during
  training (as in any train-mode pass) but leave the running statistics untouched
  (`patches.bn_statistics_frozen`); a no-grad pass of the whole view then updates them and gives
  the step's embedding (the collapse signal). Costs one forward of the batch, no backward.
- Randomness: the permutation and tile positions of each image are drawn for the global batch
  from a generator seeded by (cfg.seed, step counter) and sliced per worker
  (`patches.StepRandomness`), so 2 workers x B/2 = 1 worker x B and a resumed run continues
  with the same draws.
- Not done: the paper's per-tile mean/std normalisation and its colour-channel jitter against
  chromatic aberration. Fashion-MNIST is grayscale (no chromatic aberration) and most of its
  tiles are flat background, whose standardisation would divide by ~0; the evaluated whole images
  are normalised with the dataset's statistics only.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.data import DATASETS
from lab.errors import ConfigError
from lab.heads import mlp
from lab.knobs import Knob
from lab.methods.base import Method, StepOutput, refuse_local_crops, sgd_recipe
from lab.methods.patches import (MIN_PATCH_SIDE, StepRandomness, bn_statistics_frozen, extract_patches,
                                 jigsaw_geometry, to_backbone_side)
from lab.views import global_view_side

MAX_ENUMERATED_ITEMS = 9  # up to 9! = 362880 candidates are enumerated; beyond, a sampled pool
POOL_SIZE = 100_000


def all_permutations(n: int) -> np.ndarray:
    """All n! permutations of range(n), one per row, in lexicographic order (int8).

    Built item by item: the permutations of range(k + 1) are those of range(k) with k inserted
    at each of the k + 1 positions (one vectorised copy per position).
    """
    perms = np.zeros((1, 0), dtype=np.int8)
    for k in range(n):
        m = perms.shape[0]
        grown = np.empty((m * (k + 1), k + 1), dtype=np.int8)
        for pos in range(k + 1):
            block = grown[pos * m:(pos + 1) * m]
            block[:, :pos] = perms[:, :pos]
            block[:, pos] = k
            block[:, pos + 1:] = perms[:, pos:]
        perms = grown
    return perms[np.lexsort(perms.T[::-1])]


def sampled_permutations(n: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct random permutations of range(n) (n! must exceed count comfortably)."""
    rng = np.random.default_rng(seed)
    pool = np.unique(rng.permuted(np.tile(np.arange(n, dtype=np.int8), (count, 1)), axis=1), axis=0)
    while len(pool) < count:  # duplicates are ~count^2 / (2 n!) draws: never for n >= 10
        extra = rng.permuted(np.tile(np.arange(n, dtype=np.int8), (count - len(pool), 1)), axis=1)
        pool = np.unique(np.concatenate([pool, extra]), axis=0)
    return pool


def hamming(columns: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Hamming distance of every candidate to the permutation p: the number of positions where they differ.

    columns: the candidates transposed (T x M, contiguous), so that each position is one vectorised
    compare over all M candidates (~40x faster than comparing M x T rows and summing).
    """
    same = np.zeros(columns.shape[1], dtype=np.int16)
    for position, item in enumerate(p):
        same += columns[position] == item
    return columns.shape[0] - same


def candidate_permutations(n_items: int, seed: int) -> np.ndarray:
    if n_items <= MAX_ENUMERATED_ITEMS:
        return all_permutations(n_items)
    return sampled_permutations(n_items, POOL_SIZE, seed)


def max_permutations(grid: int) -> int:
    """The largest permutation set a grid x grid puzzle allows here: (grid^2)! or the sampled pool."""
    n_items = grid * grid
    return math.factorial(n_items) if n_items <= MAX_ENUMERATED_ITEMS else POOL_SIZE


@functools.lru_cache(maxsize=8)
def _maximal_hamming(count: int, n_items: int, seed: int, first: int | None) -> np.ndarray:
    candidates = candidate_permutations(n_items, seed)
    if not 1 <= count <= len(candidates):
        raise ValueError(f"cannot choose {count} of {len(candidates)} candidate permutations")
    columns = np.ascontiguousarray(candidates.T)
    if first is None:
        first = int(np.random.default_rng(seed).integers(len(candidates)))  # Algorithm 1: j ~ U[1, 9!]
    chosen = [first]
    distance = hamming(columns, candidates[chosen[0]])
    min_distance, sum_distance = distance.copy(), distance.astype(np.int64)
    # lexicographic score: the minimum distance first, the summed distance (< weight) to break ties
    weight = n_items * count + 1
    for _ in range(count - 1):
        score = min_distance.astype(np.int64) * weight + sum_distance
        score[chosen] = -1  # a chosen row has minimum distance 0 anyway; never pick it twice
        j = int(score.argmax())  # first of the best: deterministic
        chosen.append(j)
        distance = hamming(columns, candidates[j])
        np.minimum(min_distance, distance, out=min_distance)
        sum_distance += distance
    return candidates[chosen].astype(np.int64)


def maximal_hamming_permutations(count: int, n_items: int, seed: int = 0, first: int | None = None) -> np.ndarray:
    """`count` x n_items permutations of range(n_items), greedily far apart in Hamming distance
    (max-min, ties by the summed distance of Algorithm 1, then the first candidate in lexicographic
    order); deterministic for (count, n_items, seed). `first`: the index of the starting permutation
    among the candidates (default: drawn from the seed, as Algorithm 1 draws it)."""
    return _maximal_hamming(count, n_items, seed, first).copy()


def min_pairwise_hamming(perms: np.ndarray) -> int:
    """The smallest Hamming distance between two different rows."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(axis=2)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return int(d.min())


def draw_puzzles(rand: StepRandomness, n_permutations: int, side: int, grid: int,
                 jitter: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the permutation index and the top-left corner of each cell's tile, in grid order
    (row-major). The grid of cells sits at a random offset in the slack the side leaves; each tile at a
    random offset in its cell (no jitter: centred). Returns (labels B, top B x T, left B x T)."""
    geo = jigsaw_geometry(side, grid)
    t = grid * grid
    labels = rand.integers(n_permutations)
    origin = rand.integers_between(0, geo.slack, 2)  # B x 2
    if jitter:
        offset = rand.integers_between(0, geo.cell - geo.tile, t, 2)  # B x T x 2
    else:
        offset = torch.full((len(labels), t, 2), (geo.cell - geo.tile) // 2, dtype=torch.long)
        origin = torch.full_like(origin, geo.slack // 2)
    cells = torch.arange(t)
    top = origin[:, :1] + (cells // grid) * geo.cell + offset[..., 0]
    left = origin[:, 1:] + (cells % grid) * geo.cell + offset[..., 1]
    return labels, top, left


def cut_puzzles(x: torch.Tensor, permutations: torch.Tensor, labels: torch.Tensor, top: torch.Tensor,
                left: torch.Tensor, tile: int) -> torch.Tensor:
    """The shuffled tiles, B x T x C x tile x tile: position t of image b holds the tile of cell
    permutations[labels[b], t] (the paper's data[t] = tiles[p(t)])."""
    order = permutations[labels.to(permutations.device)].to(top.device)  # B x T
    return extract_patches(x, top.gather(1, order), left.gather(1, order), tile)


def jigsaw_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the permutation classifier (B x N logits, labels in [0, N)), mean over the batch."""
    return F.cross_entropy(logits, labels)


class Jigsaw(Method):
    name = "jigsaw"
    n_views = 1
    knobs = (
        Knob("jigsaw_grid", int, 3, "tiles per side of the puzzle (the paper: 3 x 3)", low=2,
             why="a puzzle needs at least 2 x 2 tiles"),
        Knob("jigsaw_permutations", int, 100, "size N of the maximal-Hamming permutation set (the paper: 100; "
             "its Table 3 compares 10 to 1000)", low=2, why="one permutation leaves nothing to classify"),
    )
    # Noroozi & Favaro train the CFN with SGD at lr 0.01, batch 256 (350k iterations); weight decay 5e-4
    # is AlexNet's Caffe default (not a value the paper states).
    defaults = sgd_recipe(base_lr=0.01, weight_decay=5e-4)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.grid = cfg.jigsaw_grid
        perms = maximal_hamming_permutations(cfg.jigsaw_permutations, self.grid * self.grid, cfg.seed)
        self.register_buffer("permutations", torch.from_numpy(perms))  # N x T
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # draws made, for StepRandomness
        layers = cfg.head_layers if cfg.head == "mlp" else 1
        self.classifier = mlp(self.grid * self.grid * backbone.out_dim, cfg.head_hidden_dim,
                              cfg.jigsaw_permutations, layers)

    @classmethod
    def check(cls, cfg) -> None:
        grid, count = cfg.jigsaw_grid, cfg.jigsaw_permutations
        limit = max_permutations(grid)
        if count > limit:
            what = (f"the {grid}x{grid} grid has only {grid * grid}! = {limit} permutations"
                    if grid * grid <= MAX_ENUMERATED_ITEMS else f"the sampled candidate pool holds {limit}")
            raise ConfigError(f"jigsaw_permutations={count}: {what}; use jigsaw_permutations <= {limit}")
        side = global_view_side(cfg.dataset, cfg.scale, DATASETS[cfg.dataset].image_size)
        geo = jigsaw_geometry(side, grid)
        if geo.tile < MIN_PATCH_SIDE:
            finest = max(g for g in range(2, side + 1) if jigsaw_geometry(side, g).tile >= MIN_PATCH_SIDE)
            raise ConfigError(f"jigsaw_grid={grid} cuts {cfg.dataset}'s {side}-px views into {geo.cell}-px cells "
                              f"and {geo.tile}-px tiles (< {MIN_PATCH_SIDE} px); use jigsaw_grid <= {finest}")
        refuse_local_crops(cfg, cls.name, "cuts its tiles from one global view")

    def draw(self, x: torch.Tensor, jitter: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's permutation labels and tile corners for the local batch x (advances the step)."""
        rand = StepRandomness(self.cfg.seed, int(self.step), x.shape[0])
        self.step += 1
        return draw_puzzles(rand, len(self.permutations), x.shape[-1], self.grid, jitter)

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        x = views[0]
        b, t = x.shape[0], self.grid * self.grid
        perm_labels, top, left = self.draw(x)
        perm_labels = perm_labels.to(x.device)
        tiles = cut_puzzles(x, self.permutations, perm_labels, top, left, jigsaw_geometry(x.shape[-1], self.grid).tile)
        with bn_statistics_frozen(self.backbone):
            features = self.backbone(to_backbone_side(tiles.flatten(0, 1)))  # (B T) x d, puzzle order
        logits = self.classifier(features.reshape(b, t * features.shape[1]))
        loss = jigsaw_loss(logits, perm_labels)
        with torch.no_grad():  # whole images: the backbone's running BN statistics and the embedding
            embedding = self.backbone(x)
            accuracy = (logits.argmax(1) == perm_labels).float().mean()
        return StepOutput(loss, embedding, {"jigsaw_accuracy": accuracy})
