"""Deep metric learning with virtual adversarial positives (document 003: Matsuoka, "Virtual
adversarial similar point to improve generalization of deep metric learning", Hosei University 2019).

Embedding f(x) = W h(x) + b: the backbone h (the document's VGG16-BN up to pool5.3) and one linear
embedding layer to head_out_dim (its fc6), not l2-normalised: the document's distance is the
squared Euclidean distance of the raw embeddings,

    d(x, y) = ||x - y||_2^2                                                              (eq. 2)

Losses (pure functions below), on batches of one pair (x_a, x_p) per class from N distinct
classes (N-pair sampling, Sohn 2016; lab.samplers.class_pair_batches, layout [a0, p0, a1, p1, ...]):

- triplet hinge (eq. 1):  L = max(0, d(f(x_a), f(x_p)) - d(f(x_a), f(x_n)) + m)
  x_n: one image drawn uniformly from the batch's other classes per anchor. The document mines
  nothing (its Sec. 1 argues that mining hard examples is what it wants to avoid), so the
  negative is random, not hardest.
- N-pair (eq. 3 summed over the batch's negatives, as Sohn's N-pair-mc), the other pairs'
  positives x_p^j (j != i) being anchor i's negatives, mean over the N anchors:
    "distance" (the document's eq. 3):  L_i = log(1 + sum_{j != i} exp(d(a_i, p_i) - d(a_i, p_j)))
    "inner_product" (Sohn 2016):         L_i = log(1 + sum_{j != i} exp(a_i . p_j - a_i . p_i))

Virtual adversarial positive (Sec. 2(3), VAT of Miyato et al., TPAMI 2018):

    r_adv = argmax_{||r||_2 <= eps} ||f(x) - f(x + r)||_2          (eq. 6),   x_adv = x + r_adv   (eq. 5)
    total = L(x_a, x_p, x_n) + lambda L(x_a, x_adv, x_n)                                       (eq. 4)

r_adv by power iteration (VAT's second-order approximation, Miyato et al. 2018): D(r) =
||f(x) - f(x + r)||^2 has zero gradient and Hessian H at r = 0; d <- grad_r D(r)|_{r = xi d} ~ xi H d,
repeated `iterations` times from a random unit d, approximates H's dominant eigenvector; r_adv =
eps d / ||d||_2 per sample (the norm over all of a sample's pixels). x is the anchor, so
L(x_a, x_adv, x_n) has the same anchor and negative as the clean term, the adversarial image taking
the positive's place; r_adv is a constant (no gradient through the probe).

Design choices:

- The probe (`vat_perturbation`) sees f in the mode the method is in: during training BatchNorm
  normalises with the probe batch's own statistics, as the loss's forward passes do (Miyato's
  reference code, takerum/vat_tf: `forward(x + d, update_batch_stats=False)` in training mode).
  The probe runs through torch.func.functional_call on *copies* of the parameters and buffers,
  so its passes write BN running statistics only into throw-away copies and accumulate no
  parameter gradient (the only gradient taken is d D / d r). The x_adv pass of the loss likewise keeps the running statistics
  as they are (update_batch_stats=False in Miyato's code): they stay those of clean images.
- Probe precision: D is evaluated in float64 (autocast off). With xi = 1e-6 (Miyato's value) a
  float32 pass perturbs each of 784 pixels below float32's resolution of the input, so
  f(x + xi d) - f(x) is rounding noise and the step returns J^T (noise) instead of H d (at xi >= 1e-3
  float32 recovers the float64 direction; under bf16 autocast the difference is exactly 0). The noise
  depends on the summation order: with a float32 probe 2 workers no longer reproduce 1 worker's loss
  (tests/test_metric_learning.py's gloo test fails), with float64 they do. The float64 probe costs
  about a third more per VAT step on CPU. `vat_probe_dtype="float32"` trades exactness for
  speed, best with vat_xi >= 1e-3.
- Global batch: every worker gathers the embeddings with gradients (gather_with_grad) and computes
  the loss of the whole global batch (the mean of the workers' losses is then the global loss, and
  gather_with_grad's summed backward with the loop's gradient average gives its gradient); the random negatives and the VAT start directions are drawn
  for the global batch from a generator seeded by (seed, `draws`), a step counter kept as a buffer,
  so 2 workers x B/2 give the 1 worker x B loss and gradients, and a resumed run draws what the
  uninterrupted run would have.
- Evaluation: `encoder` is the backbone (pool5.3's analogue, where GDML, Vo & Hays 2018, and the
  document find retrieval generalises best); `embedder()` is backbone + embedding layer (fc6).
- Optimiser (Sec. 3(2)): momentum SGD 0.9, weight decay 5e-4, lr 1e-3 at batch 32 on CUB-200-2011,
  i.e. 8e-3 at batch 256 under the linear scaling rule. The document's margin m is not given;
  triplet_margin defaults to 1.0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lab.data import DATASETS
from lab.distributed import gather, gather_with_grad, rank
from lab.errors import ConfigError
from lab.knobs import Knob
from lab.methods.base import Method, StepOutput, at_least_float32, sgd_recipe
from lab.seeds import derived_seed

LOSSES = ("triplet", "npair")
NPAIR_FORMS = ("distance", "inner_product")
PROBE_DTYPES = {"float64": torch.float64, "float32": torch.float32}
KNOBS = (
    Knob("metric_loss", str, "triplet", "triplet (eq. 1) or N-pair (eq. 3)", choices=LOSSES),
    Knob("npair_form", str, "distance", "N-pair similarity: distance (the document's eq. 3) or inner_product "
         "(Sohn 2016)", choices=NPAIR_FORMS),
    Knob("triplet_margin", float, 1.0, "margin m of the triplet hinge (the document gives none)", low=0),
    Knob("metric_classes_per_batch", int, None, "N: distinct classes per batch, 2 images each (None: batch_size / 2)",
         low=2, nullable=True, why="the negatives are the other classes"),
    Knob("vat_epsilon", float, 0.0, "radius eps of the virtual adversarial positive, l2 in normalised pixel space "
         "(0: no VAT; the document's best: 2-10 on CUB, 7-32 on Cars)", low=0),
    Knob("vat_lambda", float, 1.0, "weight lambda of L(a, x_adv, n) (eq. 4)", low=0),
    Knob("vat_xi", float, 1e-6, "finite-difference step xi of the power iteration (Miyato et al.: 1e-6)", low=0,
         low_open=True),
    Knob("vat_iterations", int, 1, "power iterations for r_adv (Miyato et al.: 1)", low=1),
    Knob("vat_probe_dtype", str, "float64", "precision of the VAT probe (float32: faster, needs vat_xi >= 1e-3)",
         choices=tuple(PROBE_DTYPES)),
)


# ------------------------------------------------------------------------------- losses

def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, m) matrix of ||x_i - y_j||^2 (eq. 2), as |x|^2 + |y|^2 - 2 x.y, clamped at 0."""
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)


def _check_rows(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"expected (n, d) embeddings of one shape, got {shapes}")
    if first[0] < 1:
        raise ValueError(f"expected at least one row, got {shapes}")


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet hinge (eq. 1), mean over the n triplets (anchor[i], positive[i], negative[i]):
    max(0, ||a - p||^2 - ||a - n||^2 + margin)."""
    _check_rows(anchor=anchor, positive=positive, negative=negative)
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin={margin}: the triplet margin m must be a finite value >= 0")
    d_ap = ((anchor - positive) ** 2).sum(1)
    d_an = ((anchor - negative) ** 2).sum(1)
    return F.relu(d_ap - d_an + margin).mean()


def npair_loss(anchors: torch.Tensor, positives: torch.Tensor, form: str = "distance",
               negatives: torch.Tensor | None = None) -> torch.Tensor:
    """N-pair loss over N pairs of N distinct classes, mean over the anchors.

    Row i: anchor anchors[i], positive positives[i], negatives negatives[j] for j != i
    (negatives defaults to positives: the other pairs' positives, Sohn's N-pair-mc). With s the
    similarity, -d (form="distance", the document's eq. 3) or the inner product (form="inner_product",
    Sohn 2016),  L_i = log(1 + sum_{j != i} exp(s(a_i, n_j) - s(a_i, p_i))),  computed as a
    log-sum-exp over {0} and the differences (no overflow for large distances).
    """
    negatives = positives if negatives is None else negatives
    _check_rows(anchors=anchors, positives=positives, negatives=negatives)
    if form not in NPAIR_FORMS:
        raise ValueError(f"form={form!r}: choose one of {NPAIR_FORMS}")
    n = anchors.shape[0]
    if n < 2:
        raise ValueError(f"an N-pair batch needs pairs of at least 2 classes (got {n}): an anchor's negatives are "
                         "the other pairs")
    if form == "distance":
        positive = -((anchors - positives) ** 2).sum(1)
        negative = -squared_distances(anchors, negatives)
    else:
        positive = (anchors * positives).sum(1)
        negative = anchors @ negatives.T
    margins = (negative - positive[:, None]).masked_fill(torch.eye(n, dtype=torch.bool, device=anchors.device),
                                                         float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros_like(positive)[:, None], margins], 1), dim=1).mean()


# ------------------------------------------------------------------ virtual adversarial direction

def _unit(d: torch.Tensor) -> torch.Tensor:
    """d / ||d||_2 per sample (norm over all of a sample's entries); divided by max |d| first so
    that tiny finite-difference gradients neither underflow nor lose precision (Miyato's
    get_normalized_vector)."""
    flat = d.flatten(1)
    flat = flat / flat.abs().amax(1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    return flat.view_as(d)


def vat_perturbation(f: nn.Module, x: torch.Tensor, epsilon: float, xi: float = 1e-6, iterations: int = 1,
                     direction: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """r_adv of eq. 6 by power iteration (Miyato et al. 2018): ||r_adv_i||_2 = epsilon for every sample.

    d: `direction` (same shape as x) or standard normal noise from `generator`. `iterations` times:
    d <- grad_r ||f(x) - f(x + r)||^2 at r = xi d / ||d|| (summed over the batch; a sample whose
    gradient is exactly 0 keeps its d). Returns epsilon d / ||d||, detached, in x's dtype.
    f runs in its current mode (train: batch statistics) on `dtype` copies of its parameters and
    buffers: no parameter gradient, no BatchNorm running-statistics update (see the module docstring).
    """
    if not isinstance(f, nn.Module):
        raise TypeError(f"f must be an nn.Module (its parameters are copied for the probe), got {type(f).__name__}")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon={epsilon}: the radius of the adversarial perturbation must be finite and >= 0 "
                         "(0: no perturbation)")
    if not (xi > 0 and math.isfinite(xi)):
        raise ValueError(f"xi={xi}: the power iteration's finite-difference step must be > 0 (Miyato et al.: 1e-6)")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ValueError(f"iterations={iterations!r}: the power iteration needs an integer >= 1 (Miyato et al.: 1)")
    if direction is None:
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else x.device)
    if direction.shape != x.shape:
        raise ValueError(f"direction has shape {tuple(direction.shape)}, x has {tuple(x.shape)}")
    if epsilon == 0:
        return torch.zeros_like(x)
    params = {name: p.detach().to(dtype) for name, p in f.named_parameters()}
    buffers = {name: b.detach().to(dtype, copy=True) if b.is_floating_point() else b.detach().clone()
               for name, b in f.named_buffers()}

    def probe(inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(f, (params, buffers), (inputs,))

    x64 = x.detach().to(dtype)
    d = direction.detach().to(device=x.device, dtype=dtype)
    with torch.autocast(x.device.type, enabled=False):
        with torch.no_grad():
            reference = probe(x64)
        for _ in range(iterations):
            d = _unit(d)
            r = (xi * d).requires_grad_(True)
            with torch.enable_grad():
                distance = ((probe(x64 + r) - reference) ** 2).sum()
                (grad,) = torch.autograd.grad(distance, r)
            moved = grad.flatten(1).abs().amax(1) > 0
            d = torch.where(moved.view(-1, *[1] * (x.dim() - 1)), grad, d)
    return (epsilon * _unit(d)).to(x.dtype).detach()


# ------------------------------------------------------------------------------- the method

def check_pair_layout(labels: torch.Tensor) -> None:
    """A global batch laid out by lab.samplers.class_pair_batches: [a0, p0, a1, p1, ...], positions
    2i and 2i+1 of one class, the pairs of distinct classes."""
    n = labels.numel()
    pair_classes = labels[0::2]
    if n % 2 or n < 4 or not torch.equal(pair_classes, labels[1::2]) or pair_classes.unique().numel() != n // 2:
        shown = labels[:16].tolist()
        raise ValueError("metric learning needs class-pair batches (lab.samplers.class_pair_batches): "
                         "[a0, p0, a1, p1, ...] with positions 2i, 2i+1 of one class and the pairs of >= 2 distinct "
                         f"classes; got {n} labels {shown}{' ...' if n > 16 else ''}")


def random_negatives(pairs: int, generator: torch.Generator) -> torch.Tensor:
    """For anchor i (position 2i of a class-pair batch of `pairs` pairs): a position drawn uniformly
    among the 2 (pairs - 1) images of the other classes."""
    u = torch.randint(2 * pairs - 2, (pairs,), generator=generator)
    own = 2 * torch.arange(pairs)
    return u + 2 * (u >= own)  # skip positions 2i and 2i + 1


class MetricLearning(Method):
    name = "metric"
    n_views = 1
    knobs = KNOBS
    # Sec. 3(2): momentum SGD 0.9, wd 5e-4, lr 1e-3 at batch 32 (CUB) -> 8e-3 at 256 (linear rule).
    defaults = sgd_recipe(base_lr=8e-3, weight_decay=5e-4)

    def __init__(self, cfg, backbone: nn.Module, **context):
        super().__init__(cfg, backbone, **context)
        self.embedding_layer = nn.Linear(backbone.out_dim, cfg.head_out_dim)  # the document's fc6
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))  # training steps drawn so far

    @staticmethod
    def classes_per_batch(cfg) -> int:
        return cfg.metric_classes_per_batch if cfg.metric_classes_per_batch is not None else cfg.batch_size // 2

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.batch_size % 2:
            raise ConfigError(f"batch_size={cfg.batch_size}: metric learning's batches are pairs (2 images of each "
                              f"class): use an even batch_size, e.g. {cfg.batch_size + 1}")
        classes = cls.classes_per_batch(cfg)
        if cfg.metric_classes_per_batch is not None and 2 * cfg.metric_classes_per_batch != cfg.batch_size:
            raise ConfigError(f"metric_classes_per_batch={cfg.metric_classes_per_batch} with batch_size="
                              f"{cfg.batch_size}: a batch is 2 images of each class, use batch_size="
                              f"{2 * cfg.metric_classes_per_batch} (or metric_classes_per_batch=None)")
        if classes < 2:
            raise ConfigError(f"metric_classes_per_batch={classes}: needs >= 2 classes a batch (the negatives are the "
                              "other classes): use batch_size >= 4")
        if (cfg.batch_size // cfg.workers) % 2:
            raise ConfigError(f"batch_size={cfg.batch_size} over workers={cfg.workers} gives each worker "
                              f"{cfg.batch_size // cfg.workers} images: it must be even so that no pair is split; use "
                              f"a batch_size that is a multiple of {2 * cfg.workers}")
        total = DATASETS[cfg.dataset].num_classes
        seen = "" if cfg.class_split == "all" else " training (class_split='half')"
        if seen:
            total //= 2
        if classes > total:
            raise ConfigError(f"metric_classes_per_batch={classes} distinct classes a batch, but {cfg.dataset} has "
                              f"only {total}{seen} classes: use batch_size <= {2 * total} (N-pair sampling takes one "
                              "pair per class)")

    # -- networks
    @classmethod
    def epoch_batches(cls, cfg, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N-pair's class-balanced batches: classes_per_batch distinct classes, 2 images each, [a0, p0, a1, p1, ...]."""
        from lab.samplers import class_pair_batches

        return class_pair_batches(labels, cls.classes_per_batch(cfg), generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_layer(self.backbone(x))

    def embedder(self) -> nn.Module:
        """backbone + embedding layer (the document's fc6 features), sharing this method's modules."""
        return nn.Sequential(self.backbone, self.embedding_layer).train(self.training)

    def evaluated_networks(self) -> dict[str, nn.Module]:
        """Recall@K on the encoder (pool5's analogue) and on the trained embedding layer (fc6): fc_ columns."""
        return {"": self.encoder, "fc_": self.embedder()}

    def _embed_keeping_bn_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) with gradients to the parameters, the BN running statistics left as they are."""
        net = self.embedder()
        buffers = {name: b.clone() for name, b in net.named_buffers()}
        return functional_call(net, (dict(net.named_parameters()), buffers), (x,))

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.cfg.seed, int(self.draws), offset=17))

    # -- one step
    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        cfg = self.cfg
        x = views[0]
        if labels is None:
            raise ValueError("metric learning is supervised: forward(views, labels) needs the class labels of the "
                             "class-pair batch")
        if x.shape[0] % 2:
            raise ValueError(f"this worker holds {x.shape[0]} images: an odd count splits a pair; each worker's slice "
                             "of a class-pair batch must be even")
        check_pair_layout(gather(labels.to(x.device)))
        generator = self._generator()
        if self.training:
            self.draws += 1

        z = at_least_float32(self.embed(x))  # losses in float32 under autocast
        batch = gather_with_grad(z)  # the global batch, every worker computes its loss
        anchors, positives = batch[0::2], batch[1::2]
        pairs = anchors.shape[0]
        if cfg.metric_loss == "triplet":
            negatives = batch[random_negatives(pairs, generator).to(z.device)]
            loss = triplet_loss(anchors, positives, negatives, cfg.triplet_margin)
        else:
            negatives = positives
            loss = npair_loss(anchors, positives, cfg.npair_form)
        logs = {"metric_loss": loss.detach()}

        if cfg.vat_epsilon > 0:
            x_anchor = x[0::2]
            local = x_anchor.shape[0]
            noise = torch.randn((pairs, *x.shape[1:]), generator=generator)  # the global batch's start directions
            direction = noise[rank() * local:(rank() + 1) * local].to(x.device)
            r_adv = vat_perturbation(self.embedder(), x_anchor, cfg.vat_epsilon, cfg.vat_xi, cfg.vat_iterations,
                                     direction=direction,
                                     dtype=PROBE_DTYPES[cfg.vat_probe_dtype])
            adversarial = gather_with_grad(at_least_float32(self._embed_keeping_bn_statistics(x_anchor + r_adv)))
            if cfg.metric_loss == "triplet":
                adversarial_loss = triplet_loss(anchors, adversarial, negatives, cfg.triplet_margin)
            else:
                adversarial_loss = npair_loss(anchors, adversarial, cfg.npair_form, negatives=negatives)
            loss = loss + cfg.vat_lambda * adversarial_loss
            logs["vat_loss"] = adversarial_loss.detach()
        return StepOutput(loss, z[0::2].detach(), logs)
