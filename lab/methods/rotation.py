"""Rotation prediction: Unsupervised Representation Learning by Predicting Image Rotations
(Gidaris, Singh & Komodakis, ICLR 2018).

Each image x is rotated by r in S = {0, 90, 180, 270} degrees and a classifier F on the
encoder G predicts r; the loss is the cross-entropy averaged over the batch and the K = |S| = 4
rotations (eq. 1-3 of the paper):

    loss(x) = -1/K sum_{y=0..K-1} log F^y( G( g(x | y) ) )

The classifier is `cfg.head`-shaped (none gives a linear layer on the features; mlp a hidden
layer first), and its K logits are the "projection". Document 000's RAIS trains exactly this
classifier (step 1) before scoring rotation-agnostic images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.heads import mlp
from lab.methods.base import Method, StepOutput, refuse_local_crops, sgd_recipe

ROTATIONS = 4  # 0, 90, 180, 270 degrees


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All K rotations of every image (rotation-major order) and their labels y = number of 90-degree turns."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the rotation classifier, mean over images and rotations."""
    return F.cross_entropy(logits, labels)


class RotationPrediction(Method):
    name = "rotation"
    n_views = 1
    # Gidaris et al. 2018: SGD, lr 0.1 at batch 128 (0.2 at 256 by the linear rule), momentum 0.9, weight decay 5e-4.
    defaults = sgd_recipe(base_lr=0.2, weight_decay=5e-4)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        layers = cfg.head_layers if cfg.head == "mlp" else 1
        self.classifier = mlp(backbone.out_dim, cfg.head_hidden_dim, ROTATIONS, layers)

    @classmethod
    def check(cls, cfg) -> None:
        refuse_local_crops(cfg, cls.name, "predicts the rotation of one global view")

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        rotated, rotation_labels = rotate_batch(views[0])
        features = self.backbone(rotated)
        loss = rotation_loss(self.classifier(features), rotation_labels)
        return StepOutput(loss, features[: views[0].shape[0]].detach())
