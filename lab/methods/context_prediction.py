"""Context prediction: Unsupervised Visual Representation Learning by Context Prediction
(Doersch, Gupta & Efros, ICCV 2015).

A 3 x 3 grid of patches is laid over the image; the centre patch and one of its 8 neighbours,
drawn uniformly for each image, go through the shared backbone f (the paper's pair of AlexNet
towers with tied weights, late fusion: Fig. 3); the two features are concatenated (centre first)
and a classifier F predicts which of the 8 positions the second patch came from (Fig. 2 numbering:
row-major, centre skipped):

    loss = -1/B sum_b log softmax( F([f(centre_b), f(neighbour_b)]) )_{position_b}

(8-way cross-entropy, `context_prediction_loss`). The classifier is `cfg.head`-shaped like
rotation's (none or linear: one linear layer; mlp: cfg.head_layers layers of width
cfg.head_hidden_dim), standing in for the paper's fc7-fc8 after the concatenated fc6.

Trivial solutions (Sec. 3.1): a gap of about half a patch between neighbouring patches and a random
jitter of each patch's position by up to 7 px (of 96), so that low-level cues (continuing lines,
textures across the boundary) do not give the position away. `patches.context_geometry` keeps these
proportions at the lab's sides: at 28 px, 6-px patches 3 px apart, each jittered by up to 1 px
(1 to 5 px between neighbours), the whole grid at a random offset in the 2 px left over.

Design choices (shared with jigsaw, see lab/methods/jigsaw.py and patches.py):

- Patches are upsampled x2 before the backbone (`patches.ZOOM`): convnet_small's three max-pools
  cannot take a 6-px patch.
- BatchNorm: the patches are normalised with their own batch statistics but leave the running
  statistics alone; a no-grad pass of the whole view re-estimates them for the evaluation (which
  feeds whole images) and gives the step's embedding.
- Randomness: each image's neighbour, the grid's offset and the two jitters are drawn for the global
  batch from (cfg.seed, step counter) and sliced per worker (`patches.StepRandomness`).
- Not done: the paper's colour dropping and pixelation against chromatic aberration (Sec. 3.1):
  Fashion-MNIST is grayscale and every image has one resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.data import DATASETS
from lab.errors import ConfigError
from lab.heads import mlp
from lab.methods.base import Method, StepOutput, refuse_local_crops, sgd_recipe
from lab.methods.patches import (MIN_PATCH_SIDE, NEIGHBOURS, StepRandomness, bn_statistics_frozen,
                                 context_geometry, extract_patches, to_backbone_side)
from lab.views import global_view_side

POSITIONS = len(NEIGHBOURS)  # 8


def draw_pairs(rand: StepRandomness, side: int, jitter: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the neighbour's position label in [0, 8) and the top-left corners of the centre patch
    (column 0) and of the neighbour (column 1). Returns (labels B, top B x 2, left B x 2)."""
    geo = context_geometry(side)
    labels = rand.integers(POSITIONS)
    origin = rand.integers_between(0, geo.slack, 2)  # B x 2: the grid's offset
    if jitter:
        shake = rand.integers_between(-geo.jitter, geo.jitter, 2, 2)  # B x (centre, neighbour) x 2
    else:
        shake = torch.zeros(len(labels), 2, 2, dtype=torch.long)
        origin = torch.full_like(origin, geo.slack // 2)
    cell = torch.stack([torch.ones(len(labels), 2, dtype=torch.long), NEIGHBOURS[labels]], dim=1)  # B x 2 x (row, col)
    corner = origin[:, None, :] + geo.jitter + cell * (geo.patch + geo.gap) + shake  # B x 2 x (top, left)
    return labels, corner[..., 0], corner[..., 1]


def cut_pairs(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, patch: int) -> torch.Tensor:
    """B x 2 x C x patch x patch: the centre patch, then the neighbour."""
    return extract_patches(x, top, left, patch)


def context_prediction_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """8-way cross-entropy of the position classifier (B x 8 logits), mean over the batch."""
    return F.cross_entropy(logits, labels)


class ContextPrediction(Method):
    name = "context_prediction"
    n_views = 1
    # SGD values: the paper's AlexNet-with-BN schedule has no counterpart here, so rotation's pretext-task
    # values (Gidaris et al. 2018, scaled to batch 256) are used; cpu scale uses AdamW anyway.
    defaults = sgd_recipe(base_lr=0.2, weight_decay=5e-4)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # draws made, for StepRandomness
        layers = cfg.head_layers if cfg.head == "mlp" else 1
        self.classifier = mlp(2 * backbone.out_dim, cfg.head_hidden_dim, POSITIONS, layers)

    @classmethod
    def check(cls, cfg) -> None:
        side = global_view_side(cfg.dataset, cfg.scale, DATASETS[cfg.dataset].image_size)
        geo = context_geometry(side)
        if geo.patch < MIN_PATCH_SIDE or geo.gap < 1 or geo.slack < 0:
            raise ConfigError(f"{cfg.dataset}'s {side}-px views are too small for context prediction's 3 x 3 "
                              f"grid of patches with gaps ({geo}); use a dataset of >= 20 px")
        refuse_local_crops(cfg, "context prediction", "cuts its patches from one global view")

    def draw(self, x: torch.Tensor, jitter: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's position labels and patch corners for the local batch x (advances the step)."""
        rand = StepRandomness(self.cfg.seed, int(self.step), x.shape[0])
        self.step += 1
        return draw_pairs(rand, x.shape[-1], jitter)

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        x = views[0]
        b = x.shape[0]
        positions, top, left = self.draw(x)
        positions = positions.to(x.device)
        pairs = cut_pairs(x, top, left, context_geometry(x.shape[-1]).patch)
        with bn_statistics_frozen(self.backbone):
            features = self.backbone(to_backbone_side(pairs.flatten(0, 1)))  # (B 2) x d
        logits = self.classifier(features.reshape(b, 2 * features.shape[1]))
        loss = context_prediction_loss(logits, positions)
        with torch.no_grad():  # whole images: the backbone's running BN statistics and the embedding
            embedding = self.backbone(x)
            accuracy = (logits.argmax(1) == positions).float().mean()
        return StepOutput(loss, embedding, {"position_accuracy": accuracy})
