"""RAIS: Rotation-Agnostic Image Sampling (document 000, Sec. 2.1).

Rotations S = {0, 90, 180, 270} degrees, K = 4. A rotation classifier (feature extractor G
= the backbone, classifier F) learns to predict the rotation of every rotated image. Some
images cannot tell their rotation (a ball, a texture): they are rotation-agnostic images
(RAI), and for them a rotated copy is still the same image. RAIS finds them in three steps.

Step 1 (eq. 1), the epochs before `rais_rotation_epochs`: cross-entropy on all rotations,

    L_crs = 1/B sum_{S in S} sum_{x_S in B_S} -y_S log p(y^S | x_S)

stopped before the classifier overfits (the schedule is the config's; the paper's code: 10
epochs on CIFAR-100). Note the 1/B: the loss sums over the K rotations of each image.

Step 2 (eq. 2-4), the following `rais_separation_epochs`: with H(p) the entropy of the
predicted rotation distribution, rho = log(K) / 2 and margin m,

    L_es(p)   = -|H(p) - rho|   if |H(p) - rho| > m,  else 0                        (2)
    L~_crs(p) = L_crs(p)         if H(p) - rho < -m,   else 0                        (3)
    objective = L~_crs + lambda L_es                                                 (4)

(each term summed over the rotated batch and divided by B, as eq. 1): confident samples get
more confident and are the only ones the classifier still learns from, uncertain ones are
pushed to maximal uncertainty.

Step 3: the score of an image is the mean entropy of its K rotations' predictions (eval
view, no augmentation); score > rho + m  =>  RAI. `rai_mask` scores a whole image set; a RAIS run
hands the mask of its training images to the run after it (`outputs`: PNDA's stage).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lab.knobs import Knob, per_scale
from lab.methods.base import StepOutput, at_least_float32
from lab.methods.rotation import ROTATIONS, RotationPrediction, rotate_batch

RHO = math.log(ROTATIONS) / 2  # rho = log(K) / 2, K = 4 (the paper, after Saito et al.)
# Read by RAIS and by PNDA, which runs RAIS as its stage (lab.methods.pnda).
KNOBS = (
    Knob("rais_lambda", float, 1.0, "weight lambda of the entropy-separation loss L_es in eq. (4)", low=0),
    Knob("rais_margin", float, 0.2, "margin m of eq. (2)-(3); the RAI threshold is rho + m", low=0, high=RHO,
         high_open=True, why=f"no entropy lies beyond rho + m or below rho - m unless m < rho = log(4)/2 = {RHO:.4f}"),
    Knob("rais_rotation_epochs", int, per_scale(smoke=1, cpu=2, gpu=10), "RAIS step 1: epochs of the plain "
         "rotation classifier (the paper's code: 10 on CIFAR-100)", low=0),
    Knob("rais_separation_epochs", int, per_scale(smoke=1, cpu=1, gpu=10), "RAIS step 2: epochs of the "
         "entropy separation", low=0),
)


def rotation_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) per row, p = softmax(logits), natural log."""
    log_p = F.log_softmax(at_least_float32(logits), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy_separation_loss(logits: torch.Tensor, batch_size: int, margin: float, rho: float = RHO) -> torch.Tensor:
    """L_es of eq. (2), summed over the rotated samples (rows of logits) and divided by B."""
    gap = (rotation_entropy(logits) - rho).abs()
    return torch.where(gap > margin, -gap, torch.zeros_like(gap)).sum() / batch_size


def selective_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, batch_size: int, margin: float,
                            rho: float = RHO) -> torch.Tensor:
    """L~_crs of eq. (3): cross-entropy only where H(p) - rho < -m, summed and divided by B."""
    confident = (rotation_entropy(logits) - rho) < -margin
    ce = F.cross_entropy(at_least_float32(logits), labels, reduction="none")
    return torch.where(confident, ce, torch.zeros_like(ce)).sum() / batch_size


def rotation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """L_crs of eq. (1): summed over the rotated samples and divided by B."""
    return F.cross_entropy(at_least_float32(logits), labels, reduction="sum") / batch_size


def rais_objective(logits: torch.Tensor, labels: torch.Tensor, batch_size: int, lam: float, margin: float,
                   rho: float = RHO) -> torch.Tensor:
    """Eq. (4): L~_crs + lambda L_es."""
    return (selective_cross_entropy(logits, labels, batch_size, margin, rho)
            + lam * entropy_separation_loss(logits, batch_size, margin, rho))


class RAIS(RotationPrediction):
    """Steps 1-2 as one run of the loop: step 1 for the first rais_rotation_epochs epochs, step 2
    for the rest (PNDA runs it for rais_rotation_epochs + rais_separation_epochs epochs)."""

    name = "rais"
    knobs = KNOBS
    result_schema = {"rai_positive_ratio": "float"}  # % of the training images marked rotation-agnostic

    def __init__(self, cfg, backbone, **context):
        super().__init__(cfg, backbone, **context)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def before_epoch(self, epoch, steps_per_epoch, data) -> None:
        self.epoch.fill_(epoch)

    @property
    def separating(self) -> bool:
        return int(self.epoch) >= self.cfg.rais_rotation_epochs

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        x = views[0]
        rotated, rotation_labels = rotate_batch(x)
        features = self.backbone(rotated)
        logits = self.classifier(features)
        if self.separating:
            loss = rais_objective(logits, rotation_labels, x.shape[0], self.cfg.rais_lambda, self.cfg.rais_margin)
        else:
            loss = rotation_cross_entropy(logits, rotation_labels, x.shape[0])
        entropy = rotation_entropy(logits.detach())
        logs = {"rotation_entropy": entropy.mean(),
                "confident_fraction": (entropy < RHO - self.cfg.rais_margin).float().mean()}
        return StepOutput(loss, features[: x.shape[0]].detach(), logs)

    @torch.no_grad()
    def rotation_scores(self, images_uint8: torch.Tensor, eval_view, device: torch.device,
                        batch_size: int = 512) -> torch.Tensor:
        """Step 3: each image's mean entropy over its K rotations (eval mode, deterministic view)."""
        was_training = self.training
        self.eval()
        scores = []
        for start in range(0, len(images_uint8), batch_size):
            x = eval_view(images_uint8[start:start + batch_size].to(device))
            rotated, _ = rotate_batch(x)
            entropy = rotation_entropy(self.classifier(self.backbone(rotated)))
            scores.append(entropy.view(ROTATIONS, x.shape[0]).mean(dim=0).cpu())
        self.train(was_training)
        return torch.cat(scores)

    def rai_mask(self, images_uint8: torch.Tensor, eval_view, device: torch.device) -> torch.Tensor:
        """score > rho + m: the rotation-agnostic images (bool per image)."""
        return self.rotation_scores(images_uint8, eval_view, device) > RHO + self.cfg.rais_margin

    def outputs(self, data) -> dict[str, torch.Tensor]:
        """Step 3 on this run's training images: the RAI mask that PNDA's stage hands on."""
        self.last_mask = self.rai_mask(data.images, data.eval_view, data.device).cpu()
        return {"rai_mask": self.last_mask}

    def result_columns(self, train_images: torch.Tensor) -> dict:
        """The positive ratio of the mask `outputs` computed (the loop asks for the outputs first)."""
        mask = getattr(self, "last_mask", None)
        return {} if mask is None else {"rai_positive_ratio": 100.0 * mask.float().mean().item()}
