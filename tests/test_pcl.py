"""PCL (Li et al., ICLR 2021) against its definitions.

The concentration estimate and its normalisation, the prototype term and ProtoNCE (eq. 11) on
hand-worked tensors and against loops over the paper's formulas; k-means recovering separated
groups, deterministically and without the global RNG; the E-step recomputed on resume; the
method's forward; 2 gloo workers x B/2 = 1 worker x B with prototypes present; the loop's resume.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab.backbones import build_backbone
from lab.checkpoint import MemoryStore
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.base import EpochData
from lab.methods.moco import infonce_loss
from lab.methods.pcl import (
    PCL,
    kmeans,
    kmeans_seed,
    normalise_concentration,
    proto_nce_loss,
    prototype_loss,
    prototype_nce,
    raw_concentration,
)
from lab.views import EvalView
from tests.gloo import run_on_gloo_workers

E = math.e


def config(**knobs) -> RunConfig:
    fields = {"scale": "smoke", "head": "mlp", "head_layers": 2, "head_hidden_dim": 16, "head_out_dim": 8,
              "temperature": 0.2, "ema_momentum": 0.99, "moco_queue_size": 16, "moco_variant": "queue",
              "moco_symmetric": False, "batch_size": 8, "seed": 0, "pcl_clusters": (3, 5), "pcl_warmup_epochs": 0}
    return RunConfig(method="pcl", **{**fields, **knobs})


def build(dataset_size: int = 32, **knobs) -> PCL:
    torch.manual_seed(0)
    return PCL(config(**knobs), build_backbone("convnet_tiny", 1), dataset_size=dataset_size)


def epoch_data(n: int = 32, seed: int = 0) -> EpochData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return EpochData(images, torch.zeros(n, dtype=torch.long), EvalView("fashion_mnist", 28), torch.device("cpu"))


def random_views(n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)]


def prototype_state(method: PCL) -> dict:
    return {k: v.clone() for k, v in method.state_dict().items()
            if k.startswith(("prototypes", "concentration", "assignments"))}


# ------------------------------------------------------------------ definitions as loops

def _unit(row):
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def proto_nce_by_definition(q, k, negatives, tau, prototype_sets):
    """Eq. 11 per query, then the mean: InfoNCE + 1/M sum_m -log exp(v.c_s/phi_s) / sum_j exp(v.c_j/phi_j)."""
    total = 0.0
    queries = [_unit(list(map(float, r))) for r in q]
    for i, v in enumerate(queries):
        key = _unit(list(map(float, k[i])))
        positive = math.exp(_dot(v, key) / tau)
        others = sum(math.exp(_dot(v, _unit(list(map(float, n)))) / tau) for n in negatives)
        loss = -math.log(positive / (positive + others))
        proto_terms = []
        for prototypes, phi, assigned in prototype_sets:
            cs = [_unit(list(map(float, c))) for c in prototypes]
            s = int(assigned[i])
            own = math.exp(_dot(v, cs[s]) / float(phi[s]))
            rest = sum(math.exp(_dot(v, cs[j]) / float(phi[j])) for j in range(len(cs)) if j != s)
            proto_terms.append(-math.log(own / (own + rest)))
        total += loss + (sum(proto_terms) / len(proto_terms) if proto_terms else 0.0)
    return total / len(queries)


def concentration_by_definition(features, centroids, assigned, k, tau, alpha=10.0):
    """Sec. 3.3 and the official normalisation, with numpy: mean distance / log(Z + alpha) per
    cluster of Z > 1 points, the maximum for the others, clip to the 10th-90th percentile, mean = tau."""
    per_cluster = [[] for _ in range(k)]
    for v, s in zip(features.tolist(), assigned.tolist()):
        per_cluster[s].append(math.dist(v, centroids[s].tolist()))
    phi = np.zeros(k)
    for j, d in enumerate(per_cluster):
        if len(d) > 1:
            phi[j] = np.mean(d) / np.log(len(d) + alpha)
    phi[[j for j, d in enumerate(per_cluster) if len(d) <= 1]] = phi.max()
    phi = phi.clip(np.percentile(phi, 10), np.percentile(phi, 90))
    return tau * phi / phi.mean()


# ------------------------------------------------------------------ concentration phi

def test_concentration_worked_example():
    # cluster 0: distances 1, 3 (Z = 2)     -> (1 + 3) / (2 log 12) = 2 / log 12 = 0.80486 (a)
    # cluster 1: distances 2, 2, 2, 2 (Z = 4) -> 8 / (4 log 14)     = 2 / log 14 = 0.75784 (b)
    # cluster 2: one point                   -> the max of the others = a
    distances = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 2.0, 0.5])
    assigned = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    a, b = 2 / math.log(12), 2 / math.log(14)
    phi = raw_concentration(distances, assigned, 3)
    torch.testing.assert_close(phi, torch.tensor([a, b, a], dtype=torch.float64))
    # Normalisation: sorted [b, a, a]; 10th percentile at rank 0.1 * 2 = 0.2 -> b + 0.2 (a - b),
    # 90th at rank 1.8 -> a. Clamped: [a, b + 0.2 (a - b), a]; mean (2.2 a + 0.8 b) / 3; scaled to mean tau.
    tau = 0.2
    clamped = [a, b + 0.2 * (a - b), a]
    mean = (2.2 * a + 0.8 * b) / 3
    expected = torch.tensor([tau * c / mean for c in clamped], dtype=torch.float64)
    torch.testing.assert_close(normalise_concentration(phi, tau), expected)
    assert math.isclose(normalise_concentration(phi, tau).mean().item(), tau, rel_tol=1e-12)


def test_alpha_keeps_small_loose_clusters_from_a_tiny_phi():
    # Same mean distance 1, Z = 2 vs Z = 100: phi = 1 / log(12) = 0.402 vs 1 / log(110) = 0.213;
    # the bigger cluster (more evidence of a tight group) gets the smaller phi, the sharper logits.
    distances = torch.ones(102)
    assigned = torch.tensor([0, 0] + [1] * 100)
    torch.testing.assert_close(raw_concentration(distances, assigned, 2),
                               torch.tensor([1 / math.log(12), 1 / math.log(110)], dtype=torch.float64))


def test_concentration_of_kmeans_output_matches_the_definition():
    g = torch.Generator().manual_seed(4)
    x = F.normalize(torch.randn(200, 6, generator=g), dim=1)
    for k in (3, 7, 20):
        centroids, assigned, distances = kmeans(x, k, torch.Generator().manual_seed(k))
        torch.testing.assert_close(distances, (x - centroids[assigned]).norm(dim=1), atol=1e-5, rtol=1e-5)
        ours = normalise_concentration(raw_concentration(distances, assigned, k), 0.2)
        expected = concentration_by_definition(x, centroids, assigned, k, 0.2)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)


# ------------------------------------------------------------------ ProtoNCE (eq. 11)

def test_prototype_term_worked_example():
    # Granularity A: c0 = (1,0), c1 = (0,1), c2 = (-1,0), phi = (0.5, 1, 1).
    #   v1 = (1,0) in cluster 0: logits [1/0.5, 0/1, -1/1] = [2, 0, -1] -> log(e^2 + 1 + e^-1) - 2
    #   v2 = (0,1) in cluster 1: logits [0/0.5, 1/1, 0/1]  = [0, 1, 0]  -> log(1 + e + 1) - 1
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    set_a = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0.5, 1.0, 1.0]), torch.tensor([0, 1]))
    term_a = (math.log(E**2 + 1 + E**-1) - 2 + math.log(2 + E) - 1) / 2
    assert math.isclose(prototype_nce(q, *set_a).item(), term_a, rel_tol=1e-6)
    # Granularity B: d0 = (1,0), d1 = (-1,0), phi = (0.2, 0.2); v1 in 0, v2 in 1.
    #   v1: logits [5, -5] -> log(e^5 + e^-5) - 5 = log(1 + e^-10);   v2: logits [0, 0] -> log 2
    set_b = (torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0.2, 0.2]), torch.tensor([0, 1]))
    term_b = (math.log(1 + E**-10) + math.log(2)) / 2
    assert math.isclose(prototype_nce(q, *set_b).item(), term_b, rel_tol=1e-6)
    assert math.isclose(prototype_loss(q, [set_a, set_b]).item(), (term_a + term_b) / 2, rel_tol=1e-6)
    # ProtoNCE adds InfoNCE: keys = the queries, one negative (-1,0), tau = 1:
    #   v1: logits [1, -1] -> log(e + e^-1) - 1;   v2: logits [1, 0] -> log(e + 1) - 1
    infonce = (math.log(E + 1 / E) - 1 + math.log(E + 1) - 1) / 2
    negatives = torch.tensor([[-1.0, 0.0]])
    assert math.isclose(proto_nce_loss(q, q.clone(), negatives, 1.0, [set_a, set_b]).item(),
                        infonce + (term_a + term_b) / 2, rel_tol=1e-6)
    # No prototypes (the warm-up): InfoNCE alone.
    assert math.isclose(proto_nce_loss(q, q.clone(), negatives, 1.0, []).item(), infonce, rel_tol=1e-6)
    # Unnormalised queries and prototypes give the same value: cosine similarities.
    scaled_a = (3 * set_a[0], set_a[1], set_a[2])
    assert math.isclose(prototype_nce(5 * q, *scaled_a).item(), term_a, rel_tol=1e-6)


def test_proto_nce_matches_definition_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    for tau in (0.1, 0.2, 1.0):
        q, k, negatives = (torch.randn(n, 4, generator=g) for n in (6, 6, 9))
        sets = []
        for clusters in (3, 5):
            prototypes = torch.randn(clusters, 4, generator=g)
            phi = 0.05 + torch.rand(clusters, generator=g)
            sets.append((prototypes, phi, torch.randint(0, clusters, (6,), generator=g)))
        assert math.isclose(proto_nce_loss(q, k, negatives, tau, sets).item(),
                            proto_nce_by_definition(q, k, negatives, tau, sets), rel_tol=1e-5)


def test_prototype_gradient_pulls_the_query_towards_its_prototype():
    q = torch.tensor([[0.6, 0.8]], requires_grad=True)
    prototypes, phi = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.2, 0.2])
    prototype_nce(q, prototypes, phi, torch.tensor([0])).backward()
    step = F.normalize(q.detach() - 0.01 * q.grad, dim=1)
    assert step[0, 0] > 0.6  # one gradient step moves v towards c0 = (1, 0)


# ------------------------------------------------------------------ k-means

def _blobs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, -4.0]])
    truth = torch.arange(3).repeat_interleave(20)
    return centres[truth] + 0.1 * torch.randn(60, 4, generator=g), truth


def test_kmeans_recovers_separated_groups():
    x, truth = _blobs()
    for seed in range(5):
        centroids, assigned, distances = kmeans(x, 3, torch.Generator().manual_seed(seed))
        # one cluster per true group, and three distinct clusters: the partition is the truth's
        labels = [set(assigned[truth == t].tolist()) for t in range(3)]
        assert all(len(s) == 1 for s in labels) and len(set.union(*labels)) == 3
        for t in range(3):
            torch.testing.assert_close(centroids[assigned[truth == t][0]], x[truth == t].mean(0))
        torch.testing.assert_close(distances, (x - centroids[assigned]).norm(dim=1))


def test_kmeans_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(300, 5, generator=g), dim=1)
    rng = torch.get_rng_state()
    a = kmeans(x, 8, torch.Generator().manual_seed(kmeans_seed(0, 3, 8)))
    torch.manual_seed(999)  # the global RNG plays no part
    b = kmeans(x, 8, torch.Generator().manual_seed(kmeans_seed(0, 3, 8)))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    torch.manual_seed(0)
    torch.set_rng_state(rng)
    c = kmeans(x, 8, torch.Generator().manual_seed(kmeans_seed(0, 4, 8)))  # another epoch, another seeding
    assert not torch.equal(a[0], c[0])
    assert len({kmeans_seed(s, e, k) for s in range(3) for e in range(50) for k in (10, 25, 50)}) == 450


def test_kmeans_with_fewer_distinct_points_than_clusters_stays_finite():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    centroids, assigned, distances = kmeans(x, 4, torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all() and torch.isfinite(distances).all()
    assert distances.max() == 0 and assigned.max() < 4
    phi = normalise_concentration(raw_concentration(distances, assigned, 4), 0.2)
    assert torch.isfinite(phi).all() and math.isclose(phi.mean().item(), 0.2, rel_tol=1e-9)
    with pytest.raises(ValueError, match="k=6"):
        kmeans(x, 6, torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ the E-step in the method

def test_before_epoch_builds_normalised_prototypes_and_respects_the_warmup():
    pcl = build(pcl_warmup_epochs=2)
    data = epoch_data()
    pcl.before_epoch(1, 4, data)
    assert not pcl.has_prototypes  # epoch 1 < warm-up 2: InfoNCE only
    views = random_views()
    with torch.no_grad():
        q, k = pcl._query(views[0]), pcl._key(views[1])
    negatives = pcl.queue.view()
    out = pcl(views, None, torch.arange(8))
    torch.testing.assert_close(out.loss, infonce_loss(q, k, negatives, 0.2))
    assert out.logs == {}

    pcl.before_epoch(2, 4, data)
    assert pcl.has_prototypes and int(pcl.prototypes_epoch) == 2
    features = pcl.momentum_features(data.images, data.eval_view, data.device)
    assert pcl.assignments.shape == (2, 32)
    for m, clusters in enumerate((3, 5)):
        prototypes, phi = getattr(pcl, f"prototypes_{m}"), getattr(pcl, f"concentration_{m}")
        assert prototypes.shape == (clusters, 8)
        torch.testing.assert_close(prototypes.norm(dim=1), torch.ones(clusters))
        assert math.isclose(phi.mean().item(), 0.2, rel_tol=1e-5) and (phi > 0).all()
        centroids, assigned, _ = kmeans(features, clusters, torch.Generator().manual_seed(kmeans_seed(0, 2, clusters)))
        assert torch.equal(pcl.assignments[m], assigned)
        torch.testing.assert_close(prototypes, F.normalize(centroids, dim=1))
    assert pcl.momentum["backbone"].training  # eval mode only during the features


def test_prototypes_recomputed_on_resume_are_identical():
    original = build()
    checkpoint = {k: v.clone() for k, v in original.state_dict().items()}  # the end-of-epoch checkpoint
    data = epoch_data()
    rng = torch.get_rng_state()
    original.before_epoch(3, 4, data)
    assert torch.equal(torch.get_rng_state(), rng)  # the E-step draws nothing from the global RNG
    expected = prototype_state(original)

    torch.manual_seed(1234)
    resumed = PCL(config(), build_backbone("convnet_tiny", 1), dataset_size=32)
    resumed.load_state_dict(checkpoint)
    resumed.before_epoch(3, 4, data)
    got = prototype_state(resumed)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key

    # A checkpoint written after the E-step carries the prototypes: the same step's loss.
    carried = PCL(config(), build_backbone("convnet_tiny", 1), dataset_size=32)
    carried.load_state_dict(original.state_dict())
    views, indexes = random_views(seed=3), torch.tensor([0, 5, 9, 12, 17, 20, 28, 31])
    torch.testing.assert_close(carried(views, None, indexes).loss, original(views, None, indexes).loss)


def test_forward_is_proto_nce_of_the_stored_prototypes():
    pcl = build()
    pcl.before_epoch(0, 4, epoch_data())
    views, indexes = random_views(), torch.tensor([3, 1, 4, 15, 9, 26, 5, 31])
    with torch.no_grad():
        q, k = pcl._query(views[0]), pcl._key(views[1])
    negatives = pcl.queue.view()
    out = pcl(views, None, indexes)
    expected = proto_nce_loss(q, k, negatives, 0.2, pcl.prototype_sets(indexes))
    torch.testing.assert_close(out.loss, expected)
    assert math.isclose(out.logs["info_nce"] + out.logs["proto_nce"], out.loss.item(), rel_tol=1e-5)
    assert out.logs["pcl_kmeans_s"] >= 0 and out.logs["pcl_features_s"] >= 0
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pcl.backbone.parameters())
    assert all(p.grad is None for p in pcl.momentum["backbone"].parameters())
    assert pcl.queue.ptr.item() == 8  # the keys entered MoCo's queue
    with pytest.raises(ValueError, match="indexes"):
        pcl(views)
    with pytest.raises(ValueError, match="32 training images"):
        pcl(views, None, indexes + 10)


def test_symmetric_variant_averages_both_directions():
    pcl = build(moco_symmetric=True, moco_queue_size=32)
    pcl.before_epoch(0, 4, epoch_data())
    views, indexes = random_views(), torch.arange(8)
    with torch.no_grad():
        q1, q2, k1, k2 = pcl._query(views[0]), pcl._query(views[1]), pcl._key(views[0]), pcl._key(views[1])
    negatives = pcl.queue.view()
    sets = pcl.prototype_sets(indexes)
    out = pcl(views, None, indexes)
    expected = (proto_nce_loss(q1, k2, negatives, 0.2, sets) + proto_nce_loss(q2, k1, negatives, 0.2, sets)) / 2
    torch.testing.assert_close(out.loss, expected)
    assert pcl.queue.ptr.item() == 16


def test_assign_clusters_is_the_nearest_first_granularity_prototype():
    pcl = build()
    data = epoch_data()
    x = data.eval_view(data.images[:8])
    assert pcl.assign_clusters(x) is None
    pcl.before_epoch(0, 4, data)
    clusters = pcl.assign_clusters(x)
    assert clusters.shape == (8,) and clusters.max() < 3
    assert pcl.training  # the mode is restored


# ------------------------------------------------------------------ validate

def test_config_messages():
    config(batch_size=8, moco_queue_size=16)
    with pytest.raises(ConfigError, match="moco_variant='queue'"):
        config(moco_variant="end_to_end")
    from lab.config import knob_table

    knob = knob_table().knobs["pcl_clusters"]  # the command line's form
    assert knob.parse("10") == (10,) and knob.parse(" 10, 25 ,50") == (10, 25, 50)
    with pytest.raises(ConfigError, match="pcl_clusters='10,x': needs a comma-separated list of integers"):
        knob.parse("10,x")
    with pytest.raises(ConfigError, match="a prototype needs other prototypes"):
        config(pcl_clusters=(1, 10))
    with pytest.raises(ConfigError, match="repeated"):
        config(pcl_clusters=(10, 10))
    with pytest.raises(ConfigError, match="use at most 100"):
        PCL.check_data(config(pcl_clusters=(10, 500)), train_size=100)
    with pytest.raises(ConfigError, match="pcl_warmup_epochs=-1"):
        config(pcl_warmup_epochs=-1)
    with pytest.raises(ConfigError, match="moco_queue_size=12 must be a multiple"):
        config(moco_queue_size=12)


def test_registered_and_resolved_from_the_scale():
    from lab.methods import get_method_class

    assert get_method_class("pcl") is PCL
    cpu = RunConfig(method="pcl", scale="cpu")
    assert (cpu.pcl_clusters, cpu.pcl_warmup_epochs, cpu.temperature) == ((10, 25, 50), 1, 0.2)
    with pytest.raises(ConfigError, match="moco_variant"):
        RunConfig(method="pcl", moco_variant="memory_bank")


# ------------------------------------------------------------------ 2 gloo workers x B/2 = 1 worker x B

def _one_step(world: int, worker: int) -> dict:
    """E-step on all 32 images, then one optimisation step of the loop on this worker's slice."""
    from lab.distributed import convert_to_global_batchnorm
    from lab.train import optimisation_step

    pcl = build()
    if world > 1:
        pcl = convert_to_global_batchnorm(pcl)
    pcl.before_epoch(0, 4, epoch_data())
    prototypes = prototype_state(pcl)
    optimizer = torch.optim.SGD([p for p in pcl.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    views = random_views(8, seed=9)
    indexes = torch.tensor([30, 2, 7, 11, 19, 0, 25, 13])
    local = slice(worker * 8 // world, (worker + 1) * 8 // world)
    out = optimisation_step(pcl, optimizer, [v[local] for v in views], None, 0, 1, indexes[local])
    return {"loss": out.loss.detach(), "proto_nce": out.logs["proto_nce"], "prototypes": prototypes,
            "grads": {n: p.grad.clone() for n, p in pcl.named_parameters() if p.grad is not None},
            "state": {n: t.clone() for n, t in pcl.state_dict().items()}}


def test_two_gloo_workers_equal_one_worker_with_prototypes(tmp_path):
    workers = run_on_gloo_workers(_one_step, tmp_path)
    single = _one_step(1, 0)
    # The E-step needs no communication: both workers found exactly the 1-worker prototypes.
    for key, value in single["prototypes"].items():
        assert torch.equal(workers[0]["prototypes"][key], workers[1]["prototypes"][key]), key
        assert torch.equal(workers[0]["prototypes"][key], value), key
    # Each worker's loss is the mean over its queries: the global loss is the workers' mean.
    torch.testing.assert_close((workers[0]["loss"] + workers[1]["loss"]) / 2, single["loss"], atol=1e-5, rtol=1e-5)
    assert math.isclose((workers[0]["proto_nce"] + workers[1]["proto_nce"]) / 2, single["proto_nce"], rel_tol=1e-5)
    for w in workers:
        assert w["grads"].keys() == single["grads"].keys()
        for name, value in single["grads"].items():  # the averaged gradients = the global batch's
            torch.testing.assert_close(w["grads"][name], value, atol=1e-5, rtol=1e-4, msg=name)
        for name, value in single["state"].items():  # weights, EMA, queue, BN statistics, prototypes
            if value.is_floating_point():
                torch.testing.assert_close(w["state"][name], value, atol=1e-5, rtol=1e-4, msg=name)
            else:
                assert torch.equal(w["state"][name], value), name


# ------------------------------------------------------------------ through the loop

class _CrashAfterSecondEpoch(MemoryStore):
    """A MemoryStore that dies once, right after the second checkpoint (a killed worker): the
    checkpoint holds epoch 2's prototypes, and the resumed run recomputes epoch 3's."""

    def __init__(self):
        super().__init__()
        self.saves, self.crashed = 0, False

    def save(self, state, metrics):
        super().save(state, metrics)
        self.saves += 1
        if self.saves == 2 and not self.crashed:
            self.crashed = True
            raise RuntimeError("killed")


@pytest.mark.slow
def test_loop_resumed_after_the_second_epoch_gives_the_uninterrupted_run():
    from lab.config import RunConfig
    from lab.train import train

    cfg = RunConfig(method="pcl", scale="smoke", batch_size=64, epochs=3, train_subset=512, eval_subset=256,
                    test_subset=128, linear_epochs=1, pcl_warmup_epochs=1, moco_queue_size=256, threads=1)
    uninterrupted = train(cfg, progress=False)
    store = _CrashAfterSecondEpoch()
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, store, progress=False)
    resumed = train(cfg, store, progress=False)
    assert "proto_nce" not in uninterrupted["history"][0]  # epoch 1: the warm-up, InfoNCE only
    for key in ("loss", "info_nce", "proto_nce"):
        assert [h.get(key) for h in resumed["history"]] == [h.get(key) for h in uninterrupted["history"]], key
    assert resumed["knn_top1"] == uninterrupted["knn_top1"]
