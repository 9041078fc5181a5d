"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020).

Online clustering: K learnable prototypes c_1..c_K (unit vectors, the rows of C), the
projections z = g(f(x)) / ||g(f(x))|| of every crop, and their scores z . c_k. The code
q of a global crop is a soft assignment to the prototypes; the network predicts the code of
one crop from every *other* crop of the same image (swapped prediction, eq. 1):

    L(z_t, z_s) = l(z_t, q_s) + l(z_s, q_t),   l(z_t, q_s) = - sum_k q_s^(k) log p_t^(k),
    p_t^(k) = exp(z_t . c_k / tau) / sum_k' exp(z_t . c_k' / tau)                        (eq. 2)

With multi-crop (Sec. 3.2: 2 global crops and V small ones) codes come from the global
crops only, and each global crop i is predicted from the V + 1 other crops:

    L = 1/2 sum_{i in {1,2}} 1/(V + 1) sum_{v != i} l(z_v, q_i)

(averaged over the batch; the official code divides by the number of other crops and of
assigned crops, as here).

Codes (Sec. 3.1, eq. 3): Q maximises Tr(Q^T C^T Z) + eps H(Q) over the transportation
polytope {Q in R_+^{K x B}: Q 1_B = 1_K / K, Q^T 1_K = 1_B / B} -- the equal-partition
constraint: every prototype receives the same share B/K of the B samples, which forbids
the trivial solution that maps every image to one prototype. The solution
Q* = Diag(u) exp(C^T Z / eps) Diag(v) is found by Sinkhorn-Knopp: alternate normalisations
of the prototypes' rows to 1/K and the samples' columns to 1/B (3 iterations in the paper),
then columns rescaled to sum to 1: soft codes (the paper finds rounding them to one-hot codes
worse, Sec. 3.1). Computed without gradient. Note eps divides the raw scores z . c, not
z . c / tau (eq. 3; the official code exponentiates `out / epsilon` with out = z . c).

Design choices (the official code, facebookresearch/swav main_swav.py, read not copied):

- Global batch. Sinkhorn normalises over every sample of the global batch: the per-prototype
  sums and the number of samples are all_reduced over workers, as the official
  `distributed_sinkhorn` does; the per-sample normalisation is local. So codes on W workers x
  B/W equal codes on 1 worker x B (tests/test_swav.py, 2 gloo processes).
- Small batches and the queue (Sec. 3.1, "Working with small batches": with B < K the batch
  cannot be split equally over the K prototypes, so features of previous batches join Z in
  eq. 3 and only the batch's codes enter the loss; the official batch-256 recipe stores 3840).
  One FIFO queue per global crop (as the official code), `swav_queue_size` rows of past
  l2-normalised z each, a buffer; each step the global batch's B embeddings of that crop enter
  it, gathered from all workers first, so every worker's queue is identical (the official code
  keeps a per-worker queue; the union is the same). Codes of crop i are computed on
  [queue_i ; global batch's crop i] and only the batch's rows are used; each worker takes an
  even share of the queue's rows into the all_reduced sums, so each stored row counts once.
  The queue is filled and used from epoch `swav_queue_start_epoch` (the method learns the
  epoch in `before_epoch`); until it is full its filled rows are used (the official code waits
  until the zero-initialised queue is full; the two agree from then on). `swav_queue_size = 0`
  disables it (lab.methods.queue.FeatureQueue).
- Prototypes: a bias-free linear layer whose weight rows are l2-normalised under no_grad at
  the start of every training forward (the official code does it before each forward).
  For the first `swav_freeze_prototypes_steps` optimiser steps they get no update: the forward uses
  a detached weight, so their grad stays None and SGD / AdamW skip them (the official code
  sets their grad to None after backward). The optimiser-step counter is a buffer
  (`steps_done`), so a resumed run knows where it is.
- Numerics: scores for the codes are float32 (outside autocast). Each prototype's scores are
  shifted by their maximum over the global batch before exp(. / eps): a per-prototype factor
  that the first (prototype) normalisation removes exactly, as it removes the official code's
  division by the total; nothing overflows for small eps (the official code's exp(1 / eps)
  is inf in float32 below eps ~ 0.011). Where the scores span more than 50 eps, whole samples
  could still underflow to 0, and the same iterations run in the log domain.
- Multi-resolution forward as the official code: the backbone runs once per group of
  same-size crops (2 global, then the small ones), the projector once on all crops together.
- Logged: `code_entropy`, the mean entropy of the batch's codes (nats; log K is uniform
  codes, 0 one-hot), and `code_usage`, the number of distinct prototypes that are the argmax
  of some code of this worker's batch over the most there can be, min(K, number of codes).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lab.distributed import gather, is_distributed, rank, world_size
from lab.errors import ConfigError
from lab.knobs import Knob, per_scale
from lab.methods.base import TEMPERATURE, Method, StepOutput, at_least_float32, sgd_recipe
from lab.methods.queue import FeatureQueue


def _reduce(x: torch.Tensor, op=None, distributed: bool = False) -> torch.Tensor:
    """x all_reduced over workers (SUM unless op) when distributed; unchanged otherwise."""
    if distributed and is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op is None else op)
    return x


# Largest (max - min) / eps of a prototype's scores for which exp((s - max) / eps) is computed in
# float32 without losing whole samples to underflow (exp(-50) ~ 2e-22 stays a normal float after
# the 1/(K B) scalings).
LINEAR_DOMAIN_MAX_RANGE = 50.0  # per prototype: its (max - min) over the global batch, / eps


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int, distributed: bool = False,
                   log_domain: bool | None = None, overwrite: bool = False) -> torch.Tensor:
    """Codes Q of eq. 3 by Sinkhorn-Knopp, one row per sample, each row summing to 1.

    scores: (n, K) this worker's rows of z . c (queue rows and batch rows alike). With
    distributed=True under torch.distributed, the matrix is the concatenation of every
    worker's rows: the per-prototype sums and the number of samples B are all_reduced (the
    official distributed_sinkhorn), the per-sample normalisation is local.

    P = exp(scores / eps); then `iterations` times: each prototype's total to 1/K, each
    sample's total to 1/B; the last sample normalisation to 1 instead (soft codes).
    Each prototype's scores are first shifted by that prototype's maximum over the global
    batch: a per-prototype factor, which the first normalisation (prototypes first) removes
    exactly, as it removes the official code's division by the total. When the scores span
    more than LINEAR_DOMAIN_MAX_RANGE * eps (small eps), the same iterations run on log P
    (log_domain=None chooses; True / False forces), where nothing underflows.
    overwrite=True lets the linear domain reuse the float32 `scores` as its workspace (a
    buffer of the caller's own, outside autograd): no second n x K allocation.
    """
    s = at_least_float32(scores.detach())
    n_local, k = s.shape
    low, high = s.aminmax(dim=0)
    extremes = _reduce(torch.cat([high, -low]), dist.ReduceOp.MAX, distributed)
    prototype_max, prototype_min = extremes[:k], -extremes[k:]
    n_samples = _reduce(torch.tensor(float(n_local), device=s.device, dtype=s.dtype), None, distributed)
    if log_domain is None:
        log_domain = bool((prototype_max - prototype_min).max() / epsilon > LINEAR_DOMAIN_MAX_RANGE)
    if not log_domain:
        # The iterations in their scaling-vector form Q = Diag(v) P Diag(u) (n x K here): the same
        # normalisations as rescaling the matrix in place, with two matrix-vector products each.
        p = s if overwrite and s.data_ptr() == scores.data_ptr() else s.clone()
        p.sub_(prototype_max).mul_(1 / epsilon).exp_()  # every prototype's best sample has 1
        v = torch.ones(n_local, device=s.device, dtype=s.dtype)
        for it in range(iterations):
            u = 1 / (k * _reduce(p.T @ v, None, distributed))  # each prototype's total: 1/K
            sample_total = p @ u
            v = 1 / (n_samples * sample_total)  # each sample's total: 1/B
        return p.mul_(u).div_(sample_total[:, None])  # each sample's code: total 1
    log_q = s / epsilon
    for it in range(iterations):
        local = torch.logsumexp(log_q, dim=0)  # each prototype's log-total over this worker's rows
        top = _reduce(local.clone(), dist.ReduceOp.MAX, distributed)
        log_total = top + torch.log(_reduce(torch.exp(local - top), None, distributed))
        log_q = log_q - log_total - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        if it < iterations - 1:
            log_q = log_q - torch.log(n_samples)
    return torch.exp(log_q)


def swav_loss(codes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Swapped prediction with multi-crop (eq. 1-2, Sec. 3.2).

    codes[i]: (n, K) the codes of crop i (the global crops, i = 0 .. len(codes) - 1, no gradient);
    scores[v]: (n, K) z_v . c of every crop v (global crops first, in the same order).
    For each coded crop i: mean over the other crops v != i of the batch mean of
    -sum_k q_i^(k) log softmax(scores_v / tau)^(k); then the mean over i.
    """
    if len(scores) < 2:
        raise ValueError("swav_loss needs at least 2 crops (codes of one are predicted from the others)")
    log_p = [F.log_softmax(at_least_float32(s) / temperature, dim=1) for s in scores]  # once per crop
    total = log_p[0].new_zeros(())
    for i, q in enumerate(codes):
        q = q.detach()
        cross = [-(q * log_p[v]).sum(dim=1).mean() for v in range(len(scores)) if v != i]
        total = total + sum(cross) / len(cross)
    return total / len(codes)


def _same_size_groups(views: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive views of equal spatial size (the 2 global crops, then the small crops)."""
    groups: list[list[torch.Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[1:] == v.shape[1:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


# At 28 px and ~700 steps (smoke, cpu) the paper's recipe collapses the codes early (the official README's
# warning); sharper codes (eps 0.02), 256 prototypes for 10 classes, no queue (a batch of 256 then covers
# K) and no 12-px crops train (README, "Per-scale defaults"). The gpu scale keeps the paper's values.
KNOBS = (
    Knob("swav_prototypes", int, per_scale(smoke=256, cpu=256, gpu=3000), "K: learnable prototypes (the paper: "
         "3000)", low=1),
    Knob("swav_sinkhorn_epsilon", float, per_scale(smoke=0.02, cpu=0.02, gpu=0.05), "entropic regularisation eps "
         "of the codes (eq. 3; the paper: 0.05)", low=0, low_open=True),
    Knob("swav_sinkhorn_iterations", int, 3, "Sinkhorn-Knopp iterations (the paper: 3)", low=1),
    Knob("swav_queue_size", int, per_scale(smoke=0, cpu=0, gpu=3840), "stored features per global crop for the "
         "codes when the batch is small (0: none; the paper: 3840 at batch 256)", low=0),
    Knob("swav_queue_start_epoch", int, 0, "epoch from which the queue is used (the paper: 15 of 800)", low=0),
    Knob("swav_freeze_prototypes_steps", int, 313, "optimiser steps without prototype updates (the paper: one "
         "epoch)", low=0),
)


class SwAV(Method):
    name = "swav"
    n_views = 2  # global crops; the loop appends cfg.local_crops small crops
    knobs = (TEMPERATURE, *KNOBS)
    # Sec. 4 / Appendix: tau = 0.1, multi-crop 2 x 224 (scale 0.14-1) + 6 x 96 (0.05-0.14). The official
    # small-batch recipe (scripts/swav_200ep_bs256_pretrain.sh): batch 256, base lr 0.6 (LARS), weight decay
    # 1e-6; the lab uses SGD + momentum at gpu scale.
    defaults = {"temperature": 0.1, "local_crops": per_scale(smoke=0, cpu=0, gpu=6), "crop_min_scale": 0.14,
                "local_crop_max_scale": 0.14, **sgd_recipe(base_lr=0.6, weight_decay=1e-6)}

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.projector, dim = self.make_projector()
        self.sinkhorn_epsilon = cfg.swav_sinkhorn_epsilon
        self.prototypes = nn.Linear(dim, cfg.swav_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.queue = FeatureQueue(self.n_views, cfg.swav_queue_size, dim, init="zeros")
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # optimiser steps taken
        self.epoch = 0  # set by before_epoch (resumed runs included)

    @classmethod
    def check(cls, cfg) -> None:
        k, size, b = cfg.swav_prototypes, cfg.swav_queue_size, cfg.batch_size
        if size % b:
            fix = math.ceil(size / b) * b
            raise ConfigError(f"swav_queue_size={size} must be a multiple of batch_size={b} (each global crop's "
                              f"queue takes the global batch's {b} embeddings per step): use swav_queue_size={fix} "
                              f"or {fix - b}")
        if k > size + b:
            fix = math.ceil((k - b) / b) * b
            raise ConfigError(f"swav_prototypes={k} > swav_queue_size + batch_size = {size} + {b} = {size + b}: the "
                              f"equal-partition constraint (each prototype gets an equal share of the samples the "
                              f"codes are computed on) cannot hold with fewer samples than prototypes; use "
                              f"swav_prototypes <= {size + b} or swav_queue_size >= {fix}")

    # --- the network -------------------------------------------------------------------------
    def embed(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """z of every crop, l2-normalised, stacked crop by crop: (len(views) * n, d)."""
        features = [self.backbone(torch.cat(group)) for group in _same_size_groups(views)]
        return F.normalize(at_least_float32(self.projector(torch.cat(features))), dim=1)

    def _prototype_weight(self) -> torch.Tensor:
        frozen = int(self.steps_done) < self.cfg.swav_freeze_prototypes_steps
        return self.prototypes.weight.detach() if frozen else self.prototypes.weight

    def _queue_in_use(self) -> bool:
        return self.queue.size > 0 and self.epoch >= self.cfg.swav_queue_start_epoch

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, crop: int) -> torch.Tensor:
        """Sinkhorn codes of this worker's rows of global crop `crop`, computed over
        [queue of that crop (if in use); the global batch's crop]."""
        rows = scores
        filled = int(self.queue.filled)
        if self._queue_in_use() and filled:
            # this worker's share of the stored rows: each row enters the all_reduced sums once
            share = torch.tensor_split(self.queue.rows[crop, :filled], world_size())[rank()]
            rows = scores.new_empty(share.shape[0] + scores.shape[0], scores.shape[1])
            torch.mm(share, at_least_float32(self.prototypes.weight.detach()).T, out=rows[:share.shape[0]])
            rows[share.shape[0]:] = scores
        return sinkhorn_knopp(rows, self.sinkhorn_epsilon, self.cfg.swav_sinkhorn_iterations, distributed=True,
                              overwrite=rows is not scores)[-scores.shape[0]:]

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        n = views[0].shape[0]
        if self.training:
            with torch.no_grad():  # prototypes on the unit sphere before each step
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = self.embed(views)
        with torch.autocast(z.device.type, enabled=False):
            scores = (z @ at_least_float32(self._prototype_weight()).T).split(n)  # z_v . c_k, one block per crop
            codes = [self.codes(scores[i], i) for i in range(self.n_views)]
            loss = swav_loss(codes, scores, self.cfg.temperature)
        if self.training and self._queue_in_use():
            self.queue.enqueue([gather(z[i * n:(i + 1) * n].detach()) for i in range(self.n_views)])
        with torch.no_grad():
            q = torch.cat(codes)
            entropy = -(q * torch.log(q.clamp_min(1e-30))).sum(dim=1).mean()
            # distinct prototypes that are some sample's code, without a host sync (torch.unique would wait)
            used = torch.zeros(q.shape[1], device=q.device).index_fill_(0, q.argmax(dim=1), 1.0).sum()
            usage = used.double() / min(q.shape)
        return StepOutput(loss, z[:n].detach(), {"code_entropy": entropy, "code_usage": usage})

    def before_epoch(self, epoch: int, steps_per_epoch: int, data) -> None:
        self.epoch = epoch

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.steps_done += 1
