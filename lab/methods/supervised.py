"""Supervised classification with cross-entropy: the run in which BA^2M is studied
(Cheng et al. 2021, "BA^2M: A Batch Aware Attention Module for Image Classification",
CIFAR-100 / ImageNet classification with and without the module).

One augmented view x per image (n_views = 1), the backbone f (with BA^2M inside when
cfg.ba2m_blocks > 0, lab.backbones), a linear classifier W over the dataset's K classes:

    L = -1/B sum_n log softmax( W f(x_n) + b )_{y_n}

with y_n the labels the loop passes. Under several workers each worker's loss is the mean over
its B/W samples; the loop's gradient average over workers is then the gradient of the global
mean, and the only cross-sample coupling (BA^2M's batch softmax, BatchNorm) is computed over
the global batch by the modules themselves.

Optimiser defaults at gpu scale: SGD, lr 0.1, momentum 0.9 (RunConfig's), weight decay 5e-4,
the CIFAR recipe of ResNet papers that BA^2M follows on CIFAR-100. The evaluation is the lab's
(kNN and a fresh linear probe on the frozen backbone), identical for every method; the trained
classifier's batch accuracy is logged as `train_top1`, and BA^2M's weight spread as
`ba2m_weight_std` / `ba2m_weight_max` (lab.ba2m.weight_logs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.ba2m import weight_logs
from lab.data import DATASETS
from lab.methods.base import Method, StepOutput, at_least_float32, sgd_recipe


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-1/B sum_n log softmax(logits_n)_{y_n}, mean over this worker's samples."""
    return F.cross_entropy(at_least_float32(logits), labels)


def num_classes_of(cfg) -> int:
    """K: the dataset's number of classes (lab.data.DATASETS)."""
    return DATASETS[cfg.dataset].num_classes


class Supervised(Method):
    name = "supervised"
    n_views = 1
    defaults = sgd_recipe(base_lr=0.1, weight_decay=5e-4)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.classifier = nn.Linear(backbone.out_dim, num_classes_of(cfg))

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        if labels is None:
            raise ValueError("supervised needs the batch's labels: forward(views, labels)")
        features = self.backbone(views[0])
        logits = self.classifier(features)
        loss = cross_entropy_loss(logits, labels)
        with torch.no_grad():
            top1 = (logits.argmax(dim=1) == labels).float().mean().double() * 100
        return StepOutput(loss, features.detach(), {"train_top1": top1, **weight_logs(self.backbone)})

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The trained classifier's logits (the run's classifier_top1; fine-tuning's score)."""
        return self.classifier(self.backbone(x))
