"""MoCo v2: Momentum Contrast (He et al., CVPR 2020; Chen et al. 2020, "Improved Baselines with
Momentum Contrastive Learning").

A query q = g(f(x1)) from the encoder trained by gradient, a key k = g'(f'(x2)) from the
key (momentum) encoder, and K negatives; InfoNCE with temperature tau:

    L_q = -log  exp(q.k+ / tau) / ( exp(q.k+ / tau) + sum_{i=1..K} exp(q.k_i / tau) )     (eq. 1)

written as cross-entropy over the logits [q.k+, q.k_1, ..., q.k_K] / tau with label 0, q and
the keys l2-normalised. The key encoder is an EMA of the query encoder, updated after each
optimiser step (`after_step`):

    theta_k <- m theta_k + (1 - m) theta_q                                               (eq. 2)

v2 adds the MLP head (cfg.head), blur and the cosine schedule (the loop's), tau = 0.2.

The three ways to get negatives that the paper compares at equal K (Sec. 3.2, Fig. 2-3),
`cfg.moco_variant`:

- "queue" (MoCo): keys of past batches, a FIFO of K = cfg.queue_size l2-normalised keys
  (buffers `queue` (K x d) and `queue_ptr`, so they travel with checkpoints).
- "end_to_end": keys of the current global batch from the *query* encoder with gradient;
  the negatives of q_i are the other N - 1 keys, so K is bounded by the batch (no key
  encoder, no queue).
- "memory_bank" (Wu et al., CVPR 2018): one stored feature per training image
  (cfg.memory_bank_size rows); the positive is the bank's feature of the same image, the
  K = cfg.queue_size negatives are drawn uniformly from the bank (with replacement, one
  draw shared by the step's queries, like the queue's K), and after the loss the images'
  rows move towards their new features with momentum 0.5 (a momentum on representations,
  not on the encoder). Needs each sample's dataset index: `forward(..., indexes=...)`.

Design choices:

- Queue update placement: in `forward`, after the loss is computed (as the official
  builder does), and only in training mode; the keys are gathered from all workers first
  (lab.distributed.gather, no grad), so every worker's queue is identical and holds the
  global batch's keys in rank order. `after_step` only does the EMA, so the queue moves
  exactly once per step. The memory bank is updated the same way.
- Symmetrisation: the paper's loss is asymmetric (x1 -> query, x2 -> key). The optional
  `cfg.moco_symmetric` (default False; read with getattr, not yet a RunConfig field) adds
  the swapped term (x2 -> query, x1 -> key) and averages the two, as MoCo v3 and
  solo-learn's "MoCo v2+" do; both keys then enter the queue (2N keys a step).
- BatchNorm leakage: the official code shuffles the keys' batch over GPUs before the key
  encoder (shuffle-BN, Sec. 3.3) so that a query and its key do not share per-GPU batch
  statistics. Here BatchNorm is synchronised over the global batch (GlobalBatchNorm under
  more than one worker, plain BN on one), for the query and the key encoder alike: the
  statistics are those of the whole batch, not of a sub-batch that contains the positive
  pair, which is the alternative the MoCo paper mentions (global BN, as in SimCLR).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lab.config import ConfigError
from lab.distributed import gather, gather_with_grad, rank
from lab.methods.base import Method, StepOutput, checked_indexes, ema_update, frozen_copy

VARIANTS = ("queue", "end_to_end", "memory_bank")
MEMORY_BANK_MOMENTUM = 0.5  # Wu et al. 2018, Sec. 3.3: v_i <- 0.5 v_i + 0.5 f_i, renormalised


def infonce_loss(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (MoCo eq. 1), mean over the n queries.

    q, k: (n, d) queries and their positive keys; negatives: (K, d), shared by all queries.
    All three are l2-normalised here (cosine similarities). Logits [q.k, q.negatives^T] / tau,
    cross-entropy with label 0. No gradient is stopped here: the caller detaches what the
    method does not train (the keys of the momentum encoder, the queue, the bank).
    """
    q, k, negatives = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(negatives, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # n x 1
    negative = q @ negatives.T  # n x K
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def in_batch_infonce_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other keys of the global batch as negatives (MoCo's end-to-end, Fig. 2a).

    q, k: (n, d) this worker's queries and keys, both with gradient. The keys are gathered
    from all workers with gradients (N = global batch); q_i's positive is its own key (index
    offset by this worker's rank), its N - 1 negatives the other keys. Mean over this worker's
    queries, so that the gradient average over workers gives the global mean.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    keys = gather_with_grad(k)  # N x d
    logits = q @ keys.T / temperature
    positive_index = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    return F.cross_entropy(logits, positive_index)


class MoCo(Method):
    name = "moco"
    # MoCo v2: SGD, lr 0.03 at batch 256, momentum 0.9, weight decay 1e-4, cosine schedule.
    optim_defaults = {"base_lr": 0.03, "weight_decay": 1e-4}
    knob_defaults = {"temperature": 0.2}  # MoCo v2

    def __init__(self, cfg, backbone: nn.Module):
        super().__init__(cfg, backbone)
        self.variant = cfg.moco_variant
        self.symmetric = bool(getattr(cfg, "moco_symmetric", False))
        self.projector, dim = self.make_projector()
        if self.variant == "queue":
            self.momentum_backbone = frozen_copy(self.backbone)
            self.momentum_projector = frozen_copy(self.projector)
            self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        elif self.variant == "memory_bank":
            if cfg.memory_bank_size is None:
                raise ValueError("moco_variant='memory_bank' needs memory_bank_size (the number of training "
                                 "images, one stored feature each); it is None")
            # Random unit vectors until each image's first visit (Wu et al. initialise randomly too).
            self.register_buffer("memory_bank", F.normalize(torch.randn(cfg.memory_bank_size, dim), dim=1))
        elif self.variant != "end_to_end":
            raise ValueError(f"moco_variant={self.variant!r}: choose one of {VARIANTS}")

    @classmethod
    def validate(cls, cfg) -> None:
        variant = cfg.moco_variant
        if variant not in VARIANTS:
            raise ConfigError(f"moco_variant={variant!r}: choose one of {VARIANTS}")
        if not 0.0 <= cfg.moco_momentum <= 1.0:
            raise ConfigError(f"moco_momentum={cfg.moco_momentum}: the EMA momentum m must be in [0, 1] "
                              "(MoCo: 0.999; 0.99 at small scale)")
        if variant in ("queue", "memory_bank") and not (isinstance(cfg.queue_size, int) and cfg.queue_size >= 1):
            raise ConfigError(f"queue_size={cfg.queue_size!r}: the number of negatives K needs an integer >= 1")
        if variant == "queue":
            keys_per_step = cfg.batch_size * (2 if getattr(cfg, "moco_symmetric", False) else 1)
            if cfg.queue_size % keys_per_step:
                fix = math.ceil(cfg.queue_size / keys_per_step) * keys_per_step
                what = "batch_size" if keys_per_step == cfg.batch_size else "2 x batch_size (moco_symmetric)"
                raise ConfigError(f"queue_size={cfg.queue_size} must be a multiple of {what}={keys_per_step} "
                                  f"(the global batch's keys enter the queue each step): use {fix}")
        if variant == "memory_bank" and cfg.memory_bank_size is not None:
            if cfg.memory_bank_size < 2:
                raise ConfigError(f"memory_bank_size={cfg.memory_bank_size}: needs >= 2 (one row per training image)")
            if cfg.queue_size > cfg.memory_bank_size:
                raise ConfigError(f"queue_size={cfg.queue_size} negatives drawn from a memory bank of "
                                  f"memory_bank_size={cfg.memory_bank_size} images: use queue_size <= "
                                  f"{cfg.memory_bank_size}")

    def _query(self, view: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(view))

    @torch.no_grad()
    def _key(self, view: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.momentum_projector(self.momentum_backbone(view)), dim=1)

    def forward(self, views, labels=None, indexes: torch.Tensor | None = None) -> StepOutput:
        x1, x2 = views
        if self.variant == "queue":
            return self._forward_queue(x1, x2)
        if self.variant == "end_to_end":
            return self._forward_end_to_end(x1, x2)
        return self._forward_memory_bank(x1, x2, indexes)

    def _forward_queue(self, x1: torch.Tensor, x2: torch.Tensor) -> StepOutput:
        z1 = self._query(x1)
        negatives = self.queue.clone().detach()  # the enqueue below is in place
        pairs = [(z1, self._key(x2))]
        if self.symmetric:
            pairs.append((self._query(x2), self._key(x1)))
        loss = sum(infonce_loss(q, k, negatives, self.cfg.temperature) for q, k in pairs) / len(pairs)
        if self.training:
            self._enqueue(torch.cat([gather(k) for _, k in pairs]))
        return StepOutput(loss, z1.detach())

    def _forward_end_to_end(self, x1: torch.Tensor, x2: torch.Tensor) -> StepOutput:
        z1, z2 = self._query(x1), self._query(x2)
        loss = in_batch_infonce_loss(z1, z2, self.cfg.temperature)
        if self.symmetric:
            loss = 0.5 * (loss + in_batch_infonce_loss(z2, z1, self.cfg.temperature))
        return StepOutput(loss, z1.detach())

    def _forward_memory_bank(self, x1: torch.Tensor, x2: torch.Tensor, indexes: torch.Tensor | None) -> StepOutput:
        bank_size = self.memory_bank.shape[0]
        indexes = checked_indexes(indexes, bank_size, self.memory_bank.device, "moco_variant='memory_bank'",
                                  f"the memory bank has memory_bank_size={bank_size} rows")
        queries = [self._query(x1)] + ([self._query(x2)] if self.symmetric else [])
        positives = self.memory_bank[indexes]  # indexing copies: the update below cannot touch it
        negative_index = torch.randint(bank_size, (self.cfg.queue_size,), device=self.memory_bank.device)
        negatives = self.memory_bank[negative_index]
        loss = sum(infonce_loss(q, positives, negatives, self.cfg.temperature) for q in queries) / len(queries)
        if self.training:
            with torch.no_grad():
                feature = F.normalize(sum(F.normalize(q.detach(), dim=1) for q in queries), dim=1)
                self._update_bank(gather(indexes), gather(feature))
        return StepOutput(loss, queries[0].detach())

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: overwrite the oldest len(keys) rows, starting at queue_ptr (identical on every worker)."""
        size = self.queue.shape[0]
        rows = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    @torch.no_grad()
    def _update_bank(self, indexes: torch.Tensor, features: torch.Tensor) -> None:
        m = MEMORY_BANK_MOMENTUM
        rows = self.memory_bank[indexes]
        self.memory_bank.index_copy_(0, indexes, F.normalize(m * rows + (1 - m) * features.to(rows.dtype), dim=1))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the key encoder (eq. 2); the queue moved already in forward."""
        if self.variant != "queue":
            return
        ema_update(self.backbone, self.momentum_backbone, self.cfg.moco_momentum)
        ema_update(self.projector, self.momentum_projector, self.cfg.moco_momentum)
