"""MoCo v2: Momentum Contrast (He et al., CVPR 2020; Chen et al. 2020, "Improved Baselines with
Momentum Contrastive Learning").

A query q = g(f(x1)) from the encoder trained by gradient, a key k = g'(f'(x2)) from the
key (momentum) encoder, and K negatives; InfoNCE with temperature tau:

    L_q = -log  exp(q.k+ / tau) / ( exp(q.k+ / tau) + sum_{i=1..K} exp(q.k_i / tau) )     (eq. 1)

written as cross-entropy over the logits [q.k+, q.k_1, ..., q.k_K] / tau with label 0, q and
the keys l2-normalised. The key encoder is an EMA of the query encoder, updated after each
optimiser step (`after_step`):

    theta_k <- m theta_k + (1 - m) theta_q                                               (eq. 2)

(lab.methods.momentum, cfg.ema_momentum, constant: ema_schedule='constant').

v2 adds the MLP head (cfg.head), blur and the cosine schedule (the loop's), tau = 0.2.

The three ways to get negatives that the paper compares at equal K (Sec. 3.2, Fig. 2-3),
`cfg.moco_variant`:

- "queue" (MoCo): keys of past batches, a FIFO of K = cfg.moco_queue_size l2-normalised keys
  (lab.methods.queue.FeatureQueue, buffers: they travel with checkpoints).
- "end_to_end": keys of the current global batch from the *query* encoder with gradient;
  the negatives of q_i are the other N - 1 keys, so K is bounded by the batch (no key
  encoder, no queue).
- "memory_bank" (Wu et al., CVPR 2018): one stored feature per training image
  (one row per training image); the positive is the bank's feature of the same image, the
  K = cfg.moco_queue_size negatives are drawn uniformly from the bank (with replacement, one
  draw shared by the step's queries, like the queue's K, from a generator seeded by (seed, step): the
  same on every worker), and after the loss the images'
  rows move towards their new features with momentum 0.5 (a momentum on representations,
  not on the encoder). Needs each sample's dataset index: `forward(..., indexes=...)`.

Design choices:

- Queue update placement: in `forward`, after the loss is computed (as the official
  builder does), and only in training mode; the keys are gathered from all workers first
  (lab.distributed.gather, no grad), so every worker's queue is identical and holds the
  global batch's keys in rank order. `after_step` only does the EMA, so the queue moves
  exactly once per step. The memory bank is updated the same way.
- Symmetrisation: the paper's loss is asymmetric (x1 -> query, x2 -> key). The optional
  `cfg.moco_symmetric` (default False) adds the swapped term (x2 -> query, x1 -> key) and averages the two, as MoCo v3 and
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

from lab.distributed import gather, gather_with_grad, rank
from lab.errors import ConfigError
from lab.knobs import Knob
from lab.methods.base import TEMPERATURE, Method, StepOutput, checked_indexes, require_dataset_size, sgd_recipe
from lab.methods.momentum import EMA_MOMENTUM, EMA_SCHEDULE, MomentumNetworks
from lab.methods.queue import FeatureQueue
from lab.seeds import derived_seed

VARIANTS = ("queue", "end_to_end", "memory_bank")
MEMORY_BANK_MOMENTUM = 0.5  # Wu et al. 2018, Sec. 3.3: v_i <- 0.5 v_i + 0.5 f_i, renormalised
KNOBS = (
    Knob("moco_variant", str, "queue", "where the negatives come from (MoCo Sec. 3.2, Fig. 2-3)", choices=VARIANTS),
    Knob("moco_queue_size", int, 4096, "K: the queue's keys, or the memory bank's sampled negatives", low=1),
    Knob("moco_symmetric", bool, False, "add the swapped InfoNCE term (MoCo v3, solo-learn's v2+)"),
)


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
    knobs = (TEMPERATURE, EMA_MOMENTUM, EMA_SCHEDULE, *KNOBS)
    # MoCo v2: tau 0.2; SGD, lr 0.03 at batch 256, momentum 0.9, weight decay 1e-4, cosine schedule. The key
    # encoder's m: the paper's 0.999 suits its 10^5+ steps, 0.99 the lab's few thousand.
    defaults = {"temperature": 0.2, "ema_momentum": 0.99, "ema_schedule": "constant",
                **sgd_recipe(base_lr=0.03, weight_decay=1e-4)}

    def __init__(self, cfg, backbone: nn.Module, dataset_size: int | None = None, upstream=None):
        super().__init__(cfg, backbone)
        self.variant = cfg.moco_variant
        self.symmetric = cfg.moco_symmetric
        self.projector, dim = self.make_projector()
        self.projector_dim = dim
        if self.variant == "queue":
            self.momentum = MomentumNetworks(self, ("backbone", "projector"), cfg.ema_momentum, cfg.ema_schedule)
            self.queue = FeatureQueue(1, cfg.moco_queue_size, dim, init="random")
        elif self.variant == "memory_bank":
            size = require_dataset_size(dataset_size, "moco_variant='memory_bank'", "one stored feature")
            # Random unit vectors until each image's first visit (Wu et al. initialise randomly too).
            self.register_buffer("memory_bank", F.normalize(torch.randn(size, dim), dim=1))
            self.register_buffer("bank_draws", torch.zeros((), dtype=torch.long))  # steps drawn so far
        elif self.variant != "end_to_end":
            raise ValueError(f"moco_variant={self.variant!r}: choose one of {VARIANTS}")

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.moco_variant == "queue":
            keys_per_step = cfg.batch_size * (2 if cfg.moco_symmetric else 1)
            if cfg.moco_queue_size % keys_per_step:
                fix = math.ceil(cfg.moco_queue_size / keys_per_step) * keys_per_step
                what = "batch_size" if keys_per_step == cfg.batch_size else "2 x batch_size (moco_symmetric)"
                raise ConfigError(f"moco_queue_size={cfg.moco_queue_size} must be a multiple of {what}={keys_per_step} "
                                  f"(the global batch's keys enter the queue each step): use {fix}")

    @classmethod
    def check_data(cls, cfg, train_size: int) -> None:
        if cfg.moco_variant == "memory_bank" and cfg.moco_queue_size > train_size:
            raise ConfigError(f"moco_queue_size={cfg.moco_queue_size} negatives drawn from a memory bank of the "
                              f"{train_size} training images: use moco_queue_size <= {train_size}")

    def _query(self, view: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(view))

    @torch.no_grad()
    def _key_features(self, view: torch.Tensor) -> torch.Tensor:
        """g'(f'(x)) of the key (momentum) encoder, not normalised."""
        return self.momentum["projector"](self.momentum["backbone"](view))

    @torch.no_grad()
    def _key(self, view: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._key_features(view), dim=1)

    def forward(self, views, labels=None, indexes: torch.Tensor | None = None) -> StepOutput:
        x1, x2 = views
        if self.variant == "queue":
            return self._forward_queue(x1, x2)
        if self.variant == "end_to_end":
            return self._forward_end_to_end(x1, x2)
        return self._forward_memory_bank(x1, x2, indexes)

    def _forward_queue(self, x1: torch.Tensor, x2: torch.Tensor) -> StepOutput:
        z1 = self._query(x1)
        negatives = self.queue.view()  # a copy: the enqueue below is in place
        pairs = [(z1, self._key(x2))]
        if self.symmetric:
            pairs.append((self._query(x2), self._key(x1)))
        loss = sum(infonce_loss(q, k, negatives, self.cfg.temperature) for q, k in pairs) / len(pairs)
        if self.training:
            self.queue.enqueue([torch.cat([gather(k) for _, k in pairs])])
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
                                  f"the memory bank has one row for each of {bank_size} training images")
        queries = [self._query(x1)] + ([self._query(x2)] if self.symmetric else [])
        positives = self.memory_bank[indexes]  # indexing copies: the update below cannot touch it
        # One draw of the K negatives for the step's queries, from (seed, step): the same on every worker (their
        # global RNGs differ: each draws its own augmentations) and after a resume.
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, int(self.bank_draws), offset=23))
        negative_index = torch.randint(bank_size, (self.cfg.moco_queue_size,), generator=generator)
        negatives = self.memory_bank[negative_index.to(self.memory_bank.device)]
        loss = sum(infonce_loss(q, positives, negatives, self.cfg.temperature) for q in queries) / len(queries)
        if self.training:
            self.bank_draws += 1
            with torch.no_grad():
                feature = F.normalize(sum(F.normalize(q.detach(), dim=1) for q in queries), dim=1)
                self._update_bank(gather(indexes), gather(feature))
        return StepOutput(loss, queries[0].detach())

    @torch.no_grad()
    def _update_bank(self, indexes: torch.Tensor, features: torch.Tensor) -> None:
        m = MEMORY_BANK_MOMENTUM
        rows = self.memory_bank[indexes]
        self.memory_bank.index_copy_(0, indexes, F.normalize(m * rows + (1 - m) * features.to(rows.dtype), dim=1))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the key encoder (eq. 2); the queue moved already in forward."""
        if self.variant == "queue":
            self.momentum.update(self, step, total_steps)
