"""PCL: Prototypical Contrastive Learning of Unsupervised Representations (Li, Zhou, Xiong & Hoi,
ICLR 2021).

PCL is MoCo v2 (lab.methods.moco, queue variant: query encoder, EMA key encoder, queue of K keys,
InfoNCE with tau = 0.2) plus prototypes found by clustering the whole dataset, an EM loop:

E-step, at the start of every epoch >= cfg.pcl_warmup_epochs (`before_epoch`, Sec. 3.2-3.3): the
momentum encoder embeds every training image (the deterministic eval view, eval mode, no grad,
batches of 512; v' = g'(f'(x)) / ||.||), and k-means runs M times, once per granularity
k_m in cfg.pcl_clusters ("10,25,50" at cpu scale; the paper's ImageNet 25000,50000,100000).
Each granularity gives prototypes c (the centroids, l2-normalised), each image's cluster s(i)
and a concentration per prototype (Sec. 3.3, "concentration estimation"):

    phi = sum_{z=1..Z} ||v'_z - c||_2 / (Z log(Z + alpha)),     alpha = 10,

over the Z momentum features of the cluster (distances to the k-means centroid, before the
centroid is normalised, as the official code's faiss distances are). A cluster of one point (or
none) gets the largest phi of the others. Then the official normalisation: phi is clamped to its
10th-90th percentile and scaled so that mean(phi) = tau (the same tau as InfoNCE).

M-step, every step (eq. 11), for query v = g(f(x1)) / ||.|| and key v' from the key encoder:

    L_ProtoNCE = -log exp(v.v'/tau) / sum_{j=0..r} exp(v.v'_j/tau)                 (InfoNCE, MoCo)
                 + 1/M sum_{m=1..M} -log exp(v.c^m_s/phi^m_s) / sum_{j=0..r} exp(v.c^m_j/phi^m_j)

with c^m_s the image's own prototype at granularity m and the c^m_j, j != s, negative prototypes.
Before the warm-up ends (epochs < cfg.pcl_warmup_epochs; the paper: 20 of 200) the loss is the
InfoNCE term alone: the features of a random network are not worth clustering.

Design choices:

- Negative prototypes: the paper samples r of them (NCE). The lab's granularities (10-50 at cpu,
  250-1000 at gpu scale) are smaller than any sensible r, so every other prototype of the
  granularity is a negative: the prototype term is exactly a cross-entropy over all k_m
  prototypes with per-prototype temperature phi_j, i.e. eq. 11 with r >= k_m - 1 (the paper's
  r = 16000 is below its k_m = 25000+, so it has to sample; the lab never does). The official
  code's logits also hold one column per query of the batch (the batch's positive prototypes,
  duplicates included) besides r sampled others; here each prototype is counted once, as eq. 11
  writes it.
- k-means: this file's vectorised torch Lloyd's algorithm on the l2-normalised features
  (Euclidean, as the official faiss.Clustering with an L2 index), k-means++ initialisation, a
  fixed KMEANS_ITERATIONS = 20 (faiss' niter; the official nredo = 5 restarts are not done), an
  emptied cluster re-seeded at the point farthest from its centroid (faiss splits a large
  cluster instead). The random draws come ONLY from a local torch.Generator seeded by
  (cfg.seed, epoch, k_m): never the global RNG, which the loop reseeds for the augmentations
  after `before_epoch`, so a resumed run recomputes exactly the same prototypes from the same
  weights. Cluster sums are one-hot matmuls, not index_add_ (whose CUDA atomics reorder sums).
- State: each granularity's normalised prototypes (`prototypes_m`, k_m x d), concentrations
  (`concentration_m`, k_m) and every image's cluster (`assignments`, M x N, indexed by dataset
  position: forward takes `indexes`) are buffers, with `prototypes_epoch` (the epoch they were
  computed at, -1 none), so a checkpoint carries them. `before_epoch` also recomputes them on
  resume; as that is deterministic, the buffers and the recomputation agree
  (tests/test_pcl.py). N is the training set's size (the loop's dataset_size).
- Distributed: every worker holds all training images (EpochData) and, after each step,
  identical weights and BatchNorm statistics (GlobalBatchNorm, averaged gradients), so the
  features, the k-means and the concentrations are identical on every worker with no
  communication (checked by the 2-gloo-process test, which compares the prototypes; on GPUs
  this assumes the eval-mode forward is deterministic for identical inputs, as cuDNN's forward
  convolutions are unless an autotuner picks different algorithms per process). The
  prototype term is a mean over this worker's queries against prototypes every worker holds, so
  the gradient average over workers is the global batch's gradient; the InfoNCE term and the
  queue are MoCo's (keys gathered before they are enqueued).
- `moco_symmetric` (MoCo v3 / solo-learn's v2+) carries over: each of the two queries gets its
  InfoNCE and its prototype term, and the two ProtoNCE losses are averaged.
- Logged (epoch means in the run's history, once the prototypes exist): `info_nce`, `proto_nce`
  (the mean prototype term), `pcl_features_s` and `pcl_kmeans_s` (the E-step's two costs).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from lab.distributed import gather
from lab.errors import ConfigError
from lab.knobs import Knob, per_scale
from lab.methods.base import EpochData, StepOutput, at_least_float32, checked_indexes, require_dataset_size
from lab.methods.moco import MoCo, infonce_loss
from lab.seeds import derived_seed

ALPHA = 10.0  # the smoothing of phi: small clusters do not get a tiny phi (Sec. 3.3)
KMEANS_ITERATIONS = 20  # the official run_kmeans: faiss niter = 20
FEATURE_BATCH = 512
CLAMP_PERCENTILES = (0.10, 0.90)  # the official code clamps phi to its 10th-90th percentile
KNOBS = (
    Knob("pcl_clusters", tuple, per_scale(smoke=(10, 20), cpu=(10, 25, 50), gpu=(250, 500, 1000)),
         "k-means granularities k_1..k_M (the paper's ImageNet 25000,50000,100000)", low=2,
         why="a prototype needs other prototypes to be contrasted with"),
    Knob("pcl_warmup_epochs", int, per_scale(smoke=0, cpu=1, gpu=20), "InfoNCE alone before this epoch "
         "(the paper: 20 of 200)", low=0),
)


def kmeans_seed(seed: int, epoch: int, clusters: int) -> int:
    """The k-means generator's seed: a function of (run seed, epoch, granularity) only."""
    return derived_seed(seed, epoch, clusters, offset=17)


# ------------------------------------------------------------------ E-step: k-means and phi

def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """||x_i - c_j||^2 = ||x_i||^2 - 2 x_i.c_j + ||c_j||^2 for every pair, N x k (x_sq: N x 1)."""
    return (x_sq - 2 * x @ centroids.T + (centroids * centroids).sum(1)).clamp_min(0)


def _nearest(x: torch.Tensor, x_sq: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's nearest centroid and its squared distance (ties: the lowest index)."""
    best, index = _squared_distances(x, x_sq, centroids).min(dim=1)
    return index, best


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniform, each next one
    drawn with probability proportional to the squared distance to the nearest centre so far.
    `generator` is a CPU generator; only scalars are drawn from it."""
    n = x.shape[0]
    x_sq = (x * x).sum(1, keepdim=True)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = _squared_distances(x, x_sq, x[chosen[0]:chosen[0] + 1]).squeeze(1)
    for _ in range(1, k):
        u = float(torch.rand((), generator=generator))
        cumulative = d2.double().cumsum(0)
        total = float(cumulative[-1])
        if total <= 0:  # every point sits on a centre already (fewer distinct points than k)
            index = int(torch.randint(n, (1,), generator=generator))
        else:
            target = torch.tensor([u * total], dtype=torch.float64, device=x.device)
            index = min(int(torch.searchsorted(cumulative, target, right=True)), n - 1)
        chosen.append(index)
        d2 = torch.minimum(d2, _squared_distances(x, x_sq, x[index:index + 1]).squeeze(1))
    return x[chosen].clone()


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator,
           iterations: int = KMEANS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding and a fixed number of iterations.

    x: N x d (the l2-normalised features). Returns the centroids (k x d, the means of their
    points, not normalised), each point's cluster (N) under the final centroids and its
    Euclidean distance to that centroid (N), as faiss' train-then-search gives them.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k={k} clusters needs 1 <= k <= the number of points ({n})")
    x = at_least_float32(x)
    x_sq = (x * x).sum(1, keepdim=True)
    centroids = kmeans_plus_plus(x, k, generator)
    for _ in range(iterations):
        assigned, d2 = _nearest(x, x_sq, centroids)
        one_hot = F.one_hot(assigned, k).to(x.dtype)  # N x k: deterministic sums (no atomics)
        counts = one_hot.sum(0)
        centroids = (one_hot.T @ x) / counts.clamp_min(1).unsqueeze(1)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed an emptied cluster at the points farthest from their centroids
            centroids[empty] = x[d2.topk(empty.numel()).indices]
    assigned, _ = _nearest(x, x_sq, centroids)
    return centroids, assigned, (x - centroids[assigned]).norm(dim=1)  # direct: no cancellation


def raw_concentration(distances: torch.Tensor, assigned: torch.Tensor, k: int, alpha: float = ALPHA) -> torch.Tensor:
    """Sec. 3.3 per cluster: phi = sum_z ||v'_z - c|| / (Z log(Z + alpha)); a cluster with Z <= 1
    gets the largest phi of the others (the official code's rule). float64, on the CPU."""
    distances, assigned = distances.detach().double().cpu(), assigned.detach().cpu()
    counts = torch.bincount(assigned, minlength=k).double()
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assigned, distances)  # CPU: a fixed order
    several = counts > 1
    phi = torch.zeros(k, dtype=torch.float64)
    phi[several] = sums[several] / (counts[several] * torch.log(counts[several] + alpha))
    phi[~several] = phi.max()
    if phi.max() <= 0:  # no cluster with two distinct points: no estimate, one common value
        phi.fill_(1.0)
    return phi


def normalise_concentration(phi: torch.Tensor, temperature: float,
                            percentiles: tuple[float, float] = CLAMP_PERCENTILES) -> torch.Tensor:
    """The official normalisation: clamp phi to its [10th, 90th] percentile (linear interpolation,
    as numpy's), then scale it so that its mean is the temperature tau."""
    phi = phi.double()
    low, high = torch.quantile(phi, torch.tensor(percentiles, dtype=phi.dtype))
    phi = phi.clamp(low, high)
    return temperature * phi / phi.mean()


# ------------------------------------------------------------------ M-step: ProtoNCE

def prototype_nce(q: torch.Tensor, prototypes: torch.Tensor, concentration: torch.Tensor,
                  assigned: torch.Tensor) -> torch.Tensor:
    """One granularity's term of eq. 11, mean over the n queries:

        -log exp(v.c_s/phi_s) / (exp(v.c_s/phi_s) + sum_{j != s} exp(v.c_j/phi_j)),

    every other prototype a negative. q: n x d queries (normalised here); prototypes: k x d
    (normalised here); concentration: k; assigned: n cluster indices s.
    """
    q, prototypes = F.normalize(q, dim=1), F.normalize(prototypes.to(q.dtype), dim=1)
    logits = q @ prototypes.T / concentration.to(q.dtype)
    return F.cross_entropy(logits, assigned)


def prototype_loss(q: torch.Tensor, prototype_sets) -> torch.Tensor:
    """(1/M) sum over the M granularities of `prototype_nce`; prototype_sets holds
    (prototypes, concentration, assigned) per granularity."""
    return sum(prototype_nce(q, *s) for s in prototype_sets) / len(prototype_sets)


def proto_nce_loss(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float,
                   prototype_sets) -> torch.Tensor:
    """Eq. 11: MoCo's InfoNCE (q against its key k and the queue's negatives, temperature tau)
    plus the mean over granularities of the prototype terms; InfoNCE alone if there are none."""
    loss = infonce_loss(q, k, negatives, temperature)
    return loss + prototype_loss(q, prototype_sets) if prototype_sets else loss


# ------------------------------------------------------------------ the method

class PCL(MoCo):
    name = "pcl"
    knobs = KNOBS
    # PCL v2 follows MoCo v2: SGD lr 0.03 at batch 256, wd 1e-4, tau 0.2 (inherited from MoCo).

    def __init__(self, cfg, backbone, dataset_size: int | None = None, upstream=None):
        if cfg.moco_variant != "queue":
            raise ValueError(f"pcl builds on MoCo's queue; moco_variant={cfg.moco_variant!r}: use 'queue'")
        super().__init__(cfg, backbone)
        self.granularities = tuple(cfg.pcl_clusters)
        dim = self.projector_dim
        n = require_dataset_size(dataset_size, "pcl", "one cluster assignment per granularity")
        self.register_buffer("assignments", torch.zeros(len(self.granularities), n, dtype=torch.long))
        self.register_buffer("prototypes_epoch", torch.full((1,), -1, dtype=torch.long))
        for m, k in enumerate(self.granularities):
            self.register_buffer(f"prototypes_{m}", torch.zeros(k, dim))
            self.register_buffer(f"concentration_{m}", torch.full((k,), float(cfg.temperature)))
        self.last_timing: dict[str, float] = {}

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.moco_variant != "queue":
            raise ConfigError(f"moco_variant={cfg.moco_variant!r}: PCL builds on MoCo v2's queue of keys; "
                              "use moco_variant='queue'")
        super().check(cfg)
        clusters = cfg.pcl_clusters
        if len(set(clusters)) != len(clusters):
            raise ConfigError(f"pcl_clusters={clusters}: a granularity is repeated; list each number of clusters once")

    @classmethod
    def check_data(cls, cfg, train_size: int) -> None:
        super().check_data(cfg, train_size)
        if max(cfg.pcl_clusters) > train_size:
            raise ConfigError(f"pcl_clusters={cfg.pcl_clusters}: {max(cfg.pcl_clusters)} clusters of only "
                              f"{train_size} training images; use at most {train_size} clusters")

    # --- state ----------------------------------------------------------------------------
    @property
    def has_prototypes(self) -> bool:
        return int(self.prototypes_epoch) >= 0

    def prototype_sets(self, indexes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(prototypes, concentration, the batch's clusters) per granularity, for these dataset positions."""
        return [(getattr(self, f"prototypes_{m}"), getattr(self, f"concentration_{m}"), self.assignments[m, indexes])
                for m in range(len(self.granularities))]

    # --- E-step ---------------------------------------------------------------------------
    @torch.no_grad()
    def momentum_features(self, images: torch.Tensor, eval_view, device: torch.device) -> torch.Tensor:
        """v' = g'(f'(x)) / ||.|| of the momentum encoder on the eval view of every image (eval mode)."""
        modules = (self.momentum["backbone"], self.momentum["projector"])
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        try:
            features = [F.normalize(at_least_float32(self._key_features(eval_view(images[i:i + FEATURE_BATCH].to(device)))),
                                    dim=1)
                for i in range(0, len(images), FEATURE_BATCH)]
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        return torch.cat(features)

    @torch.no_grad()
    def before_epoch(self, epoch: int, steps_per_epoch: int, data: EpochData) -> None:
        """The E-step: features of every training image, k-means per granularity, concentrations."""
        self.last_timing = {}
        if epoch < self.cfg.pcl_warmup_epochs:
            self.prototypes_epoch.fill_(-1)
            return
        n = len(data.images)
        if max(self.granularities) > n:
            raise ValueError(f"pcl_clusters={self.cfg.pcl_clusters!r}: {max(self.granularities)} clusters of "
                             f"only {n} training images")
        start = time.perf_counter()
        features = self.momentum_features(data.images, data.eval_view, data.device)
        clustered = time.perf_counter()
        assignments = torch.empty(len(self.granularities), n, dtype=torch.long, device=features.device)
        for m, k in enumerate(self.granularities):
            generator = torch.Generator().manual_seed(kmeans_seed(self.cfg.seed, epoch, k))
            centroids, assigned, distances = kmeans(features, k, generator)
            phi = normalise_concentration(raw_concentration(distances, assigned, k), self.cfg.temperature)
            getattr(self, f"prototypes_{m}").copy_(F.normalize(centroids, dim=1))
            getattr(self, f"concentration_{m}").copy_(phi)
            assignments[m] = assigned
        if self.assignments.shape != assignments.shape:
            raise ValueError(f"pcl was built for {self.assignments.shape[1]} training images, the epoch has {n}")
        self.assignments.copy_(assignments)
        self.prototypes_epoch.fill_(epoch)
        done = time.perf_counter()
        self.last_timing = {"pcl_features_s": clustered - start, "pcl_kmeans_s": done - clustered}

    # --- M-step ---------------------------------------------------------------------------
    def forward(self, views, labels=None, indexes: torch.Tensor | None = None) -> StepOutput:
        x1, x2 = views
        prototype_sets = []
        if self.has_prototypes:
            n = self.assignments.shape[1]
            indexes = checked_indexes(indexes, n, self.assignments.device, "pcl (to look up its prototypes)",
                                      f"the prototypes were computed for {n} training images")
            prototype_sets = self.prototype_sets(indexes)
        negatives = self.queue.view()  # a copy: the enqueue below is in place
        z1 = self._query(x1)
        pairs = [(z1, self._key(x2))]
        if self.symmetric:
            pairs.append((self._query(x2), self._key(x1)))
        instance = sum(infonce_loss(q, k, negatives, self.cfg.temperature) for q, k in pairs) / len(pairs)
        logs = {}
        loss = instance
        if prototype_sets:
            proto = sum(prototype_loss(q, prototype_sets) for q, _ in pairs) / len(pairs)
            loss = instance + proto
            logs = {"info_nce": instance.detach(), "proto_nce": proto.detach(), **self.last_timing}
        if self.training:
            self.queue.enqueue([torch.cat([gather(k) for _, k in pairs])])
        return StepOutput(loss, z1.detach(), logs)

    @torch.no_grad()
    def assign_clusters(self, x: torch.Tensor) -> torch.Tensor | None:
        """The nearest prototype (cosine) of the first granularity to the momentum encoder's
        embedding of the normalised images x; None before the first E-step."""
        if not self.has_prototypes:
            return None
        was_training = self.training
        self.eval()
        try:
            v = F.normalize(at_least_float32(self._key_features(x)), dim=1)
        finally:
            self.train(was_training)
        return (v @ self.prototypes_0.T).argmax(dim=1)
