"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021).

A student g_s = h_s o f_s trained by gradient and a teacher g_t of the same architecture, never
trained by gradient: its weights are an EMA of the student's (Sec. 3.1, "Teacher network"),

    theta_t <- lambda theta_t + (1 - lambda) theta_s,   lambda cosine-scheduled from 0.996 to 1

(BYOL's schedule: lab.methods.momentum, base cfg.ema_momentum, ema_schedule='cosine').

Each network's output over K = cfg.dino_out_dim dimensions becomes a distribution by a softmax
with a temperature (eq. 1): P_s = softmax(g_s(x) / tau_s), and for the teacher, centred and
sharpened, P_t = softmax((g_t(x) - c) / tau_t). Multi-crop (eq. 3): the student sees every crop,
the teacher only the two global ones, and the loss is the cross-entropy H(a, b) = -sum a log b
over every pair (teacher global crop t, student crop s) with s != t,

    L = 1/|pairs| sum_{t in {g1, g2}} sum_{s in V, s != t} mean_batch H(P_t(x_t), P_s(x_s)),

the mean over the pairs and the batch as in the official code (2 x (2 + n_local) - 2 pairs).

Centring (eq. 4): after the loss, c <- m c + (1 - m) mean_i g_t(x_i), the mean of the teacher's
raw outputs over both global crops of the GLOBAL batch (the batch sums are all-reduced over
workers, so every worker holds the same c). Sharpening: a low teacher temperature tau_t
(cfg.dino_teacher_temperature 0.04, optionally warmed up linearly from dino_teacher_temperature_start
over dino_teacher_warmup_epochs, per step) against the student's tau_s = cfg.temperature (0.1).

The two ablation switches of Sec. 5.3 / Fig. 7:

- dino_centering=False: c is never subtracted (and stays 0). The paper: the teacher collapses to
  one dominant dimension, its entropy h(P_t) -> 0.
- dino_sharpening=False: the teacher uses the STUDENT's temperature, tau_t = tau_s. The paper
  defines the operation only through the teacher temperature: "Output sharpening is obtained
  by using a low value for the temperature tau_t in the teacher softmax normalization"
  (Sec. 3.1, "Avoiding collapse"), tau_s and tau_t playing the same role in eq. 1 ("controls the
  sharpness of the output distribution"). Without sharpening the target is therefore exactly as
  sharp as the student's own output, with the teacher still centred; the paper: entropy ->
  -log(1/K) = log K, collapse to the uniform distribution. tau_t = 1 (a plain softmax) would be a
  stronger reading; tau_t = tau_s is the one that removes exactly the teacher/student asymmetry.

Both collapses show as data: forward logs the teacher's target entropy h(P_t) and the KL between
teacher and student, D_KL(P_t || P_s) = H(P_t, P_s) - h(P_t) (eq. 5, the quantities of Fig. 7,
averaged over the same pairs as the loss). The paper: a KL that goes to 0 means a constant output
(collapse); h -> 0 is the one-dimension collapse, h -> log K the uniform one. The logs also carry
h / log K (comparable across K) and the teacher temperature in use.

Head (Sec. 3.1, "Network architecture"; the official DINOHead): a 3-layer MLP with GELU (hidden
cfg.head_hidden_dim, output the bottleneck cfg.head_out_dim), l2-normalisation, and a
weight-normalised linear layer to K without bias whose norm is fixed to 1 (the official
norm_last_layer=True): each prototype row is used as v_k / ||v_k||. BatchNorm in the hidden layers
(cfg.dino_head_bn, on by default): the paper removes it for ViTs because they have none, the
official code keeps it as --use_bn_in_head for convnets, and every lab backbone is a BN convnet.
Without it the teacher drifts towards the uniform collapse: the average-pooled ReLU features of
every image share one large positive direction that no BN removes. cfg.head and cfg.head_layers
(the other methods' projector) are not read: DINO's head is part of the method.

Design choices and omissions:

- Per-step teacher-temperature warm-up: tau_t(k) = start + (final - start) min(1, k / (E_w S)),
  with S the steps per epoch (from before_epoch, or total_steps / epochs in after_step); the
  official code steps it once per epoch (np.linspace over E_w epochs).
- Left out from the official recipe: freezing the last layer during the first epoch, gradient
  clipping (3.0), the weight-decay schedule (0.04 -> 0.4), and the exclusion of biases / norms
  from weight decay. The loop owns the optimiser; these are the paper's training tricks for ViTs.
- Crops of the same resolution go through the backbone together (global crops in one batch,
  local crops in another), as the official MultiCropWrapper, and here through the head's MLP too
  (the official wrapper runs its head once over all crops): every BatchNorm, the head's included,
  then normalises over the crops of one resolution of the global batch (one joint head BN over
  both resolutions did worse in a short probe).
- local_crops defaults to 0 (2 global crops, the paper's "no multi-crop" variant of Table 7):
  on 28-px Fashion-MNIST, 12-px local crops took kNN down at every count, size and scale tried
  (README, "Per-scale defaults"). Multi-crop is complete (local_crops > 0: the student sees them, the teacher does not,
  local_crop_max_scale defaults to the paper's 0.4) for scales and datasets where it pays.
- The collapse signal of the loop (StepOutput.embedding) is the student's head bottleneck
  (before the l2-normalisation) of the first global crop: the representation that the
  prototypes score, so a one-dimension collapse (every sample on one prototype) shows in its
  spread. The evaluated encoder is the student backbone, as for every method of the lab. The
  official evaluation scripts default to the teacher (--checkpoint_key teacher), which the paper
  finds better throughout training (Fig. 6); at cpu scale (~700 steps, EMA 0.996 -> 1) the teacher
  still lags the student.

Distributed: the loss is a mean over this worker's samples, so the gradient average over workers
is the global-batch gradient; the centre's batch mean is all-reduced; the EMA runs on identical
students after the averaged step, so every worker's teacher is the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lab.distributed import all_reduce_sum_with_grad
from lab.knobs import Knob, per_scale
from lab.methods.base import TEMPERATURE, Method, StepOutput, at_least_float32, sgd_recipe
from lab.methods.momentum import EMA_MOMENTUM, EMA_SCHEDULE, MomentumNetworks

HEAD_LAYERS = 3  # DINO head: Linear-GELU-Linear-GELU-Linear to the bottleneck (official nlayers=3)


# --- the loss and its statistics, pure functions ---------------------------------------------------

def teacher_distribution(teacher_logits: torch.Tensor, center: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """P_t = softmax((g_t(x) - c) / tau_t) (centring + sharpening, Sec. 3.1); no gradient.

    center None: no centring (the ablation). Computed in float32 at least.
    """
    logits = at_least_float32(teacher_logits.detach())
    if center is not None:
        logits = logits - center.to(logits.dtype)
    return F.softmax(logits / temperature, dim=-1)


def dino_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor],
              student_temperature: float) -> torch.Tensor:
    """Eq. 3: mean over the pairs (t, s), s != t, of mean_batch H(P_t(x_t), P_s(x_s)).

    student_logits: one (n, K) tensor per crop, the global crops first, in the teacher's order;
    teacher_probs: one (n, K) distribution per global crop (teacher_probs[i] belongs to crop i).
    H(a, b) = -sum_k a_k log b_k with log b = log_softmax(g_s / tau_s).
    """
    log_ps = [F.log_softmax(at_least_float32(s) / student_temperature, dim=-1) for s in student_logits]
    total, pairs = 0.0, 0
    for t, p_t in enumerate(teacher_probs):
        for s, log_p in enumerate(log_ps):
            if s == t:
                continue
            total = total + (-(p_t.detach() * log_p).sum(dim=-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("dino_loss needs at least one pair of a teacher crop and another student crop")
    return total / pairs


@torch.no_grad()
def entropy(p: torch.Tensor) -> torch.Tensor:
    """h(p) = -sum_k p_k log p_k per row (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


@torch.no_grad()
def teacher_entropy(teacher_probs: list[torch.Tensor]) -> torch.Tensor:
    """h(P_t) averaged over the teacher's crops and the batch (Fig. 7, left).

    Every teacher crop is paired with the same number of student crops, so this is also h(P_t)
    averaged over the loss's pairs, and by eq. 5, H(P_t, P_s) = h(P_t) + D_KL(P_t || P_s), the
    pair-averaged KL of Fig. 7 (right) is dino_loss - teacher_entropy.
    """
    return torch.stack([entropy(p).mean() for p in teacher_probs]).mean()


def mean_distribution_entropy(teacher_probs: list[torch.Tensor]) -> torch.Tensor:
    """h of the teacher's output averaged over the batch and its crops, h(mean_i P_t(x_i)).

    Tells the two collapses of Fig. 7 apart from a healthy sharp teacher: a healthy teacher puts
    each image on a few dimensions (low h(P_t)) but different images on different ones (high h of
    the mean); collapse to one dimension makes both low, collapse to uniform both ~log K.
    """
    return entropy(torch.cat(teacher_probs).mean(dim=0, keepdim=True)).squeeze(0)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """Eq. 4: m c + (1 - m) mean of the teacher's raw outputs over the GLOBAL batch.

    teacher_logits: this worker's (n, K) outputs of all global crops; the row sum and the row
    count are all-reduced over workers, so the mean is the global one on every worker.
    """
    rows = at_least_float32(teacher_logits.detach())
    stats = torch.cat([rows.sum(dim=0), torch.tensor([float(rows.shape[0])], device=rows.device, dtype=rows.dtype)])
    stats = all_reduce_sum_with_grad(stats)
    batch_center = (stats[:-1] / stats[-1]).view_as(center)
    return center * momentum + batch_center.to(center.dtype) * (1 - momentum)


def teacher_temperature_at(step: int, warmup_steps: float, start: float, final: float) -> float:
    """Linear warm-up from `start` at step 0 to `final` at `warmup_steps`, then `final`."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return final
    return start + (final - start) * max(step, 0) / warmup_steps


# --- the head ------------------------------------------------------------------------------------

class DINOHead(nn.Module):
    """3-layer MLP (GELU; BatchNorm after the hidden Linears if batch_norm) -> bottleneck ->
    l2-normalise -> weight-normalised linear to K without bias, every row's norm fixed to 1 (weight
    norm with g = 1 frozen, the official norm_last_layer=True: W = v / ||v||, per row)."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, layers: int = HEAD_LAYERS,
                 batch_norm: bool = False):
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if batch_norm else []) + [nn.GELU()]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*blocks)
        for m in self.mlp.modules():  # official init: truncated normal, std 0.02, zero bias
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # the direction v of the last layer (PyTorch's default Linear init, as the official head)
        self.prototypes = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def logits(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(bottleneck, dim=-1), F.normalize(self.prototypes, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.bottleneck(x))


# --- the method ----------------------------------------------------------------------------------

UNIFORM_ENTROPY_RATIO, ONE_DIMENSION_ENTROPY_RATIO = 0.95, 0.1  # DINO.collapse_reason's thresholds
KNOBS = (
    Knob("dino_out_dim", int, per_scale(smoke=256, cpu=4096, gpu=65536), "K: dimensions of the teacher's and "
         "student's distributions", low=2),
    Knob("dino_teacher_temperature", float, 0.04, "final teacher temperature tau_t (sharpening)", low=0,
         low_open=True),
    Knob("dino_teacher_temperature_start", float, 0.04, "tau_t at step 0, warmed up linearly to the final one",
         low=0, low_open=True),
    Knob("dino_teacher_warmup_epochs", float, 0.0, "epochs of the tau_t warm-up (0: none; the paper: 30)", low=0),
    Knob("dino_center_momentum", float, 0.9, "rate m of the centre's EMA (eq. 4)", low=0, high=1),
    Knob("dino_centering", bool, True, "subtract the centre c (off: the ablation of Fig. 7, collapse to one "
         "dimension)"),
    Knob("dino_sharpening", bool, True, "teacher at tau_t (off: at the student's tau_s; the ablation of Fig. 7, "
         "collapse to uniform)"),
    Knob("dino_head_bn", bool, True, "BatchNorm in the head's hidden layers (the official --use_bn_in_head)"),
)


class DINO(Method):
    name = "dino"
    knobs = (TEMPERATURE, EMA_MOMENTUM, EMA_SCHEDULE, *KNOBS)
    # tau_s = 0.1 (Sec. 4.1); global crops of (0.4, 1) of the image (the official default); local crops of
    # (0.05, 0.4) when enabled, none by default at 28 px (see the module docstring). The official ResNet-50
    # recipe (github.com/facebookresearch/dino README): SGD, lr 0.03 x B/256, weight decay 1e-4 (the paper's
    # AdamW 0.0005 x B/256 is for ViTs). Under AdamW the lab's defaults apply.
    defaults = {"temperature": 0.1, "local_crops": 0, "crop_min_scale": 0.4, "local_crop_max_scale": 0.4,
                "ema_momentum": 0.996, "ema_schedule": "cosine", **sgd_recipe(base_lr=0.03, weight_decay=1e-4)}

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.head = DINOHead(backbone.out_dim, cfg.head_hidden_dim, cfg.head_out_dim, cfg.dino_out_dim,
                             batch_norm=cfg.dino_head_bn)
        self.teacher = MomentumNetworks(self, ("backbone", "head"), cfg.ema_momentum, cfg.ema_schedule)
        self.register_buffer("center", torch.zeros(1, cfg.dino_out_dim))
        # The step counter for the teacher-temperature schedule: set by before_epoch (so a resumed
        # run recomputes it) and advanced by after_step.
        self.global_step = 0
        self.steps_per_epoch: int | None = None

    # --- schedules -----------------------------------------------------------------------------
    def teacher_temperature(self) -> float:
        """tau_t at the current step; the student's tau_s when sharpening is off."""
        cfg = self.cfg
        if not cfg.dino_sharpening:
            return cfg.temperature
        if cfg.dino_teacher_warmup_epochs > 0 and self.steps_per_epoch is None:
            if self.global_step == 0:  # the warm-up's first value, whatever the epoch's length
                return cfg.dino_teacher_temperature_start
            raise RuntimeError("dino_teacher_warmup_epochs > 0 needs the steps per epoch: call "
                               "before_epoch(epoch, steps_per_epoch, ...) as lab.train does")
        warmup_steps = cfg.dino_teacher_warmup_epochs * (self.steps_per_epoch or 0)
        return teacher_temperature_at(self.global_step, warmup_steps, cfg.dino_teacher_temperature_start,
                                      cfg.dino_teacher_temperature)

    def before_epoch(self, epoch: int, steps_per_epoch: int, data=None) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.global_step = epoch * steps_per_epoch

    # --- one step ------------------------------------------------------------------------------
    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        n_global = self.n_views
        global_crops, local_crops = views[:n_global], views[n_global:]
        n = global_crops[0].shape[0]
        # student: every crop; the crops of one resolution go through backbone and head MLP together,
        # so every BatchNorm normalises within a resolution (global crops, then local crops)
        groups = [global_crops] + ([local_crops] if local_crops else [])
        bottleneck = torch.cat([self.head.bottleneck(self.backbone(torch.cat(group))) for group in groups])
        student_logits = list(self.head.logits(bottleneck).split(n))
        with torch.no_grad():
            teacher_logits = self.teacher["head"](self.teacher["backbone"](torch.cat(global_crops)))
        tau_t, tau_s = self.teacher_temperature(), self.cfg.temperature
        center = self.center if self.cfg.dino_centering else None
        teacher_probs = list(teacher_distribution(teacher_logits, center, tau_t).split(n))
        loss = dino_loss(student_logits, teacher_probs, tau_s)
        h = teacher_entropy(teacher_probs).detach()
        kl = loss.detach() - h  # eq. 5: KL = H - h, averaged over the same pairs
        if self.training and self.cfg.dino_centering:
            self.center.copy_(updated_center(self.center, teacher_logits, self.cfg.dino_center_momentum))
        log_k = math.log(self.center.shape[1])
        logs = {"teacher_entropy": h, "teacher_entropy_ratio": h.double() / log_k,
                "teacher_mean_entropy_ratio": mean_distribution_entropy(teacher_probs).double() / log_k,
                "teacher_student_kl": kl, "teacher_temperature": tau_t}
        return StepOutput(loss, bottleneck[:n].detach(), logs)

    def collapse_reason(self, last_epoch_logs: dict[str, float]) -> str | None:
        """Fig. 7's two collapses, read on the last epoch's mean teacher outputs: uniform (each
        output's entropy above 0.95 log K: sharpening off) or one dimension (the batch-mean output's
        entropy below 0.1 log K: every image on the same dimension, centring off)."""
        each, mean = last_epoch_logs.get("teacher_entropy_ratio"), last_epoch_logs.get("teacher_mean_entropy_ratio")
        if each is not None and each > UNIFORM_ENTROPY_RATIO:
            return f"teacher outputs uniform: entropy {each:.3f} log K > {UNIFORM_ENTROPY_RATIO} log K"
        if mean is not None and mean < ONE_DIMENSION_ENTROPY_RATIO:
            return (f"teacher outputs on one dimension: entropy of the batch-mean output {mean:.3f} log K < "
                    f"{ONE_DIMENSION_ENTROPY_RATIO} log K")
        return None

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """theta_t <- lambda_k theta_t + (1 - lambda_k) theta_s after the optimiser step."""
        self.teacher.update(self, step, total_steps)
        self.global_step = step + 1
        if self.steps_per_epoch is None and self.cfg.epochs:
            self.steps_per_epoch = max(1, total_steps // self.cfg.epochs)
