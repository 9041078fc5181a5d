"""Metric learning of document 003: triplet and N-pair losses, the VAT positive, the N-pair
class-pair sampler, Recall@K, and 2 gloo workers x B/2 = 1 worker x B for the method.

Hand-worked tensors with the arithmetic written out, loops over the papers' equations on random
tensors, and the bad inputs that must fail early.
"""

import math

import pytest
import torch
from torch import nn

from lab.backbones import build_backbone
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.metric_learning import (MetricLearning, check_pair_layout, npair_loss, random_negatives,
                                         triplet_loss, vat_perturbation)
from lab.retrieval import recall_at_k
from lab.samplers import class_pair_batches, class_pair_steps, random_batches
from tests.gloo import run_on_gloo_workers


def config(**knobs) -> RunConfig:
    """A small metric-learning config (the knobs' defaults)."""
    fields = dict(scale="smoke", head_out_dim=8, metric_loss="triplet", npair_form="distance", triplet_margin=1.0,
                  vat_epsilon=0.0, vat_lambda=1.0, vat_xi=1e-6, vat_iterations=1, batch_size=8, seed=0)
    return RunConfig(method="metric", **{**fields, **knobs})


def build(**knobs) -> MetricLearning:
    torch.manual_seed(0)
    return MetricLearning(config(**knobs), build_backbone("convnet_tiny", 1))


def pair_batch(pairs: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images laid out as a class-pair batch [a0, p0, a1, p1, ...] of classes 0..pairs-1."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * pairs, 1, 28, 28, generator=g), torch.arange(pairs).repeat_interleave(2)


def _sq(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b))


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _rows(t):
    return [list(map(float, row)) for row in t]


# ---------------------------------------------------------------- triplet (eq. 1, 2)

def test_triplet_worked_example():
    # triplet 1: a = (0, 0), p = (1, 0), n = (0, 2): d(a,p) = 1, d(a,n) = 4 -> max(0, 1 - 4 + 1) = 0
    # triplet 2: a = (1, 1), p = (2, 3), n = (1, 2): d(a,p) = 1 + 4 = 5, d(a,n) = 0 + 1 = 1 -> 5 - 1 + 1 = 5
    # mean (2 triplets) 2.5. Plain Euclidean distances (1, 2 | sqrt 5, 1) would give (0 + sqrt 5) / 2 ~ 1.12,
    # a sum instead of the mean 5.
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    n = torch.tensor([[0.0, 2.0], [1.0, 2.0]])
    assert triplet_loss(a, p, n, margin=1.0).item() == pytest.approx(2.5)
    # margin 0: triplet 2 gives 5 - 1 = 4, mean 2; margin 3.5: triplet 1 gives 1 - 4 + 3.5 = 0.5, 2 gives 7.5 -> 4
    assert triplet_loss(a, p, n, margin=0.0).item() == pytest.approx(2.0)
    assert triplet_loss(a, p, n, margin=3.5).item() == pytest.approx(4.0)


def test_triplet_matches_a_loop_over_triplets():
    g = torch.Generator().manual_seed(1)
    a, p, n = (torch.randn(7, 5, generator=g) for _ in range(3))
    expected = sum(max(0.0, _sq(ai, pi) - _sq(ai, ni) + 0.7) for ai, pi, ni in zip(_rows(a), _rows(p), _rows(n))) / 7
    assert triplet_loss(a, p, n, 0.7).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- N-pair (eq. 3; Sohn 2016)

def test_npair_worked_example_both_forms():
    # anchors a0 = (0, 0), a1 = (1, 0), a2 = (0, 1); positives p0 = (0, 1), p1 = (2, 0), p2 = (1, 1)
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    # distance form, L_i = log(1 + sum_{j != i} exp(d(a_i, p_i) - d(a_i, p_j))):
    # a0: d(a0,p0) = 1, d(a0,p1) = 4, d(a0,p2) = 2        -> log(1 + e^(1-4) + e^(1-2)) = log(1 + e^-3 + e^-1)
    # a1: d(a1,p1) = 1, d(a1,p0) = 1 + 1 = 2, d(a1,p2) = 1 -> log(1 + e^(1-2) + e^(1-1)) = log(2 + e^-1)
    # a2: d(a2,p2) = 1, d(a2,p0) = 0, d(a2,p1) = 4 + 1 = 5 -> log(1 + e^(1-0) + e^(1-5)) = log(1 + e + e^-4)
    e = math.exp
    distance = (math.log(1 + e(-3) + e(-1)) + math.log(2 + e(-1)) + math.log(1 + e(1) + e(-4))) / 3
    assert npair_loss(a, p, "distance").item() == pytest.approx(distance, rel=1e-6)
    # inner-product form, L_i = log(1 + sum_{j != i} exp(a_i.p_j - a_i.p_i)):
    # a0 = 0: every product 0                    -> log(1 + 1 + 1) = log 3
    # a1: a1.p1 = 2, a1.p0 = 0, a1.p2 = 1        -> log(1 + e^-2 + e^-1)
    # a2: a2.p2 = 1, a2.p0 = 1, a2.p1 = 0        -> log(1 + e^0 + e^-1) = log(2 + e^-1)
    inner = (math.log(3) + math.log(1 + e(-2) + e(-1)) + math.log(2 + e(-1))) / 3
    assert npair_loss(a, p, "inner_product").item() == pytest.approx(inner, rel=1e-6)


def test_npair_with_separate_negatives_worked_example():
    # The VAT term L(a, x_adv, n): positive of a_i is adv_i, negatives the clean positives p_j, j != i.
    # a0 = (0, 0), a1 = (1, 0); adv0 = (1, 1), adv1 = (1, 0); p0 = (0, 1), p1 = (2, 0)
    # a0: d(a0, adv0) = 2, d(a0, p1) = 4 -> log(1 + e^(2-4)) = log(1 + e^-2)   (p0 is not a negative of a0)
    # a1: d(a1, adv1) = 0, d(a1, p0) = 2 -> log(1 + e^(0-2)) = log(1 + e^-2)
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert npair_loss(a, adv, "distance", negatives=p).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def npair_by_definition(a, p, form, negatives=None):
    a, p = _rows(a), _rows(p)
    negatives = p if negatives is None else _rows(negatives)
    total = 0.0
    for i, ai in enumerate(a):
        terms = []
        for j, nj in enumerate(negatives):
            if j == i:
                continue
            terms.append(_sq(ai, p[i]) - _sq(ai, nj) if form == "distance" else _dot(ai, nj) - _dot(ai, p[i]))
        total += math.log(1 + sum(math.exp(t) for t in terms))
    return total / len(a)


@pytest.mark.parametrize("form", ["distance", "inner_product"])
def test_npair_matches_a_loop_over_pairs(form):
    g = torch.Generator().manual_seed(2)
    a, p, n = (0.5 * torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    assert npair_loss(a, p, form).item() == pytest.approx(npair_by_definition(a, p, form), rel=1e-10)
    assert npair_loss(a, p, form, negatives=n).item() == pytest.approx(npair_by_definition(a, p, form, n), rel=1e-10)


def test_npair_is_finite_for_far_apart_embeddings():
    # exp(d(a,p) - d(a,n)) overflows float32 beyond ~88; the log-sum-exp gives ~ the difference itself.
    a = torch.tensor([[0.0], [1000.0]])
    # positives (100), (0):  a0: d(a0,p0) = 1e4, d(a0,p1) = 0      -> log(1 + e^(1e4)) ~ 1e4
    #                        a1: d(a1,p1) = 1e6, d(a1,p0) = 900^2  -> log(1 + e^(1e6 - 810000)) ~ 190000
    loss = npair_loss(a, torch.tensor([[100.0], [0.0]]), "distance")
    assert loss.item() == pytest.approx((1e4 + (1e6 - 810000)) / 2, rel=1e-6)
    # positives (100), (1000): a0: 1e4 - 1e6, a1: 0 - 810000 -> log(1 + e^-990000), log(1 + e^-810000) ~ 0
    assert npair_loss(a, torch.tensor([[100.0], [1000.0]]), "distance").item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- VAT positive (eq. 5, 6)

def test_vat_power_iteration_worked_example_on_a_linear_map():
    # f(x) = W x with W = [[3, 0, 0], [0, 1, 0]]: D(r) = ||W r||^2, grad = 2 W^T W r, W^T W = diag(9, 1, 0).
    # start d = (1, 1, 1): one step -> (9, 1, 0), r_adv = eps (9, 1, 0) / sqrt(82);
    # two steps -> (81, 1, 0), r_adv = eps (81, 1, 0) / sqrt(6562) (converging to W's top right singular vector e1)
    f = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        f.weight.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    x = torch.tensor([[0.5, -1.0, 2.0]])
    start = torch.ones(1, 3)
    one = vat_perturbation(f, x, epsilon=2.0, xi=1e-6, iterations=1, direction=start)
    torch.testing.assert_close(one, 2.0 * torch.tensor([[9.0, 1.0, 0.0]]) / math.sqrt(82))
    two = vat_perturbation(f, x, epsilon=2.0, xi=1e-6, iterations=2, direction=start)
    torch.testing.assert_close(two, 2.0 * torch.tensor([[81.0, 1.0, 0.0]]) / math.sqrt(6562))
    assert f.weight.grad is None  # the probe leaves no parameter gradient


def test_vat_direction_is_the_hessian_vector_product_on_a_nonlinear_net():
    # One power-iteration step is H d / ||H d|| for H the Hessian of D(r) = ||f(x) - f(x + r)||^2 at r = 0
    # (VAT's second-order approximation, Miyato et al. 2018): compared with torch's exact Hessian-vector
    # product, per sample.
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    d = torch.randn(5, 6, dtype=torch.float64)
    r = vat_perturbation(f, x, epsilon=1.0, xi=1e-6, direction=d)
    for i in range(5):
        def D(v, i=i):
            return ((f(x[i:i + 1]) - f(x[i:i + 1] + v)) ** 2).sum()
        _, hd = torch.autograd.functional.hvp(D, torch.zeros(1, 6, dtype=torch.float64), d[i:i + 1] / d[i].norm())
        torch.testing.assert_close(r[i:i + 1], hd / hd.norm(), atol=1e-5, rtol=1e-5)


def _embedder():
    torch.manual_seed(3)
    backbone = build_backbone("convnet_tiny", 1)
    return nn.Sequential(backbone, nn.Linear(backbone.out_dim, 16))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vat_norm_is_epsilon_per_sample_and_beats_random_directions(dtype):
    f = _embedder().train()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 1, 28, 28, generator=g)
    xi = 1e-6 if dtype == torch.float64 else 1e-3  # float32 needs a larger step (module docstring)
    r = vat_perturbation(f, x, epsilon=2.0, xi=xi, iterations=1, generator=g, dtype=dtype)
    assert r.shape == x.shape and r.dtype == x.dtype
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((12,), 2.0))
    f.eval()  # compare displacements per sample (running statistics, no coupling through the batch)
    with torch.no_grad():
        clean = f(x)
        adversarial = (f(x + r) - clean).norm(dim=1).mean()
        random = []
        for _ in range(10):
            u = torch.randn(x.shape, generator=g)
            u = 2.0 * u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            random.append((f(x + u) - clean).norm(dim=1).mean())
        random = torch.stack(random)
    # averaged over samples, the adversarial displacement exceeds every one of 10 random draws, and by a lot
    assert adversarial > 2 * random.max(), (adversarial, random)


def test_vat_probe_keeps_bn_statistics_and_gradients_untouched():
    f = _embedder().train()
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    before = {k: v.clone() for k, v in f.state_dict().items()}
    r = vat_perturbation(f, x, epsilon=1.0, iterations=3, generator=torch.Generator().manual_seed(6))
    for name, value in f.state_dict().items():
        assert torch.equal(value, before[name]), name  # running_mean/var, num_batches_tracked included
    assert all(p.grad is None for p in f.parameters())
    assert not r.requires_grad
    # deterministic given the generator (and given the start direction)
    again = vat_perturbation(f, x, epsilon=1.0, iterations=3, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(r, again, rtol=0, atol=0)


def test_vat_bad_inputs_fail_early():
    f, x = nn.Linear(3, 2), torch.randn(2, 3)
    with pytest.raises(ValueError, match="epsilon=-0.5"):
        vat_perturbation(f, x, epsilon=-0.5)
    with pytest.raises(ValueError, match="xi=0"):
        vat_perturbation(f, x, epsilon=1.0, xi=0)
    with pytest.raises(ValueError, match="iterations=0"):
        vat_perturbation(f, x, epsilon=1.0, iterations=0)
    with pytest.raises(TypeError, match="nn.Module"):
        vat_perturbation(lambda v: v, x, epsilon=1.0)
    assert torch.equal(vat_perturbation(f, x, epsilon=0.0), torch.zeros_like(x))


# ---------------------------------------------------------------- Recall@K

def test_recall_at_k_worked_example():
    # 1-d embeddings 0, 1, 3, 7, 12, 13.5 with classes 0, 1, 0, 1, 0, 0; neighbours by distance (self excluded):
    # i0 (0, c0):  i1 1 (c1), i2 3 (c0), ...            -> hit at K = 2
    # i1 (1, c1):  i0 1 (c0), i2 2 (c0), i3 6 (c1)      -> hit at K = 3, so at 4
    # i2 (3, c0):  i1 2 (c1), i0 3 (c0), ...            -> hit at K = 2
    # i3 (7, c1):  i2 4 (c0), i4 5 (c0), i1 6 (c1)      -> hit at K = 3, so at 4
    # i4 (12, c0): i5 1.5 (c0)                          -> hit at K = 1
    # i5 (13.5, c0): i4 1.5 (c0)                        -> hit at K = 1
    # Recall@1 = 2/6, Recall@2 = 4/6, Recall@4 = 6/6 (percent)
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0], [12.0], [13.5]])
    y = torch.tensor([0, 1, 0, 1, 0, 0])
    scores = recall_at_k(x, y, ks=(1, 2, 4))
    assert scores == pytest.approx({"recall_at_1": 100 * 2 / 6, "recall_at_2": 100 * 4 / 6, "recall_at_4": 100.0})


def test_recall_excludes_only_the_query_itself():
    # Two identical points of different classes and one far point: each duplicate's nearest neighbour is the
    # other (distance 0, other class: a miss), not itself (which would be a trivial hit).
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [5.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    # i0: i1 (c1) miss; i1: i0 (c0) miss; i2: i3 (c1) hit; i3: i2 (c1) hit -> 50 %
    assert recall_at_k(x, y, ks=(1,))["recall_at_1"] == pytest.approx(50.0)


def test_recall_matches_a_loop_on_random_embeddings():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (40,), generator=g)
    expected = {}
    for k in (1, 2, 4, 8):
        hits = 0
        for i in range(40):
            others = sorted((float(((x[i] - x[j]) ** 2).sum()), j) for j in range(40) if j != i)
            hits += any(int(y[j]) == int(y[i]) for _, j in others[:k])
        expected[f"recall_at_{k}"] = 100.0 * hits / 40
    assert recall_at_k(x, y, chunk=7) == pytest.approx(expected)


def test_recall_bad_inputs_fail_early():
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[1, N - 1\]"):
        recall_at_k(x, y, ks=(1, 5))
    with pytest.raises(ValueError, match="at least 2 classes"):
        recall_at_k(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be"):
        recall_at_k(x, y[:4])


# ---------------------------------------------------------------- samplers

def _check_class_pairs(batches, labels):
    for row in batches:
        a, p = row[0::2], row[1::2]
        assert torch.equal(labels[a], labels[p])  # each pair one class
        assert bool((a != p).all())  # two different images
        assert labels[a].unique().numel() == len(a)  # the pairs' classes distinct


def test_class_pair_batches_balanced_cover_every_image_once():
    labels = torch.arange(6).repeat(8)  # 6 classes x 8 images = 24 pairs; 3 classes a batch -> 8 batches
    batches = class_pair_batches(labels, 3, torch.Generator().manual_seed(0))
    assert batches.shape == (8, 6) and batches.dtype == torch.long
    _check_class_pairs(batches, labels)
    assert torch.equal(batches.flatten().sort().values, torch.arange(48))  # every image exactly once
    same = class_pair_batches(labels, 3, torch.Generator().manual_seed(0))
    other = class_pair_batches(labels, 3, torch.Generator().manual_seed(1))
    assert torch.equal(batches, same) and not torch.equal(batches, other)


def test_class_pair_batches_unbalanced_classes():
    g = torch.Generator().manual_seed(3)
    for trial in range(5):
        labels = torch.randint(0, 7, (int(torch.randint(20, 60, (1,), generator=g)),), generator=g)
        labels[:1] = 9  # a class with a single image cannot form a pair: never used
        classes, counts = labels.unique(return_counts=True)
        per_batch = min(4, int((counts >= 2).sum()))
        batches = class_pair_batches(labels, per_batch, torch.Generator().manual_seed(trial))
        _check_class_pairs(batches, labels)
        # as many batches as the pair counts allow: max{R : sum_c min(P_c, R) >= C R}, P_c = ceil(n_c / 2)
        pairs = (counts[counts >= 2] + 1) // 2
        best = max(r for r in range(100) if int(pairs.clamp(max=r).sum()) >= per_batch * r)
        assert len(batches) == best == class_pair_steps(labels, per_batch)
        assert 0 not in batches.flatten().tolist()  # position 0 holds the single-image class
        used = set(batches.flatten().tolist())
        # fullest classes first: pairs are only left over in fewer than per_batch classes, so an image of a
        # class with >= 2 images is unused only if its class is one of those
        pairable = set(classes[counts >= 2].tolist())
        unused_classes = {int(labels[i]) for i in range(len(labels)) if i not in used} & pairable
        assert len(unused_classes) < per_batch
        assert all(int(labels[i]) in pairable for i in used)


def test_class_pair_batches_odd_class_reuses_one_image():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])  # 3 images a class -> 2 pairs each, one image used twice
    batches = class_pair_batches(labels, 2, torch.Generator().manual_seed(0))
    assert batches.shape == (2, 4)
    _check_class_pairs(batches, labels)
    assert set(batches.flatten().tolist()) == set(range(6))


def test_class_pair_batches_bad_inputs():
    labels = torch.arange(5).repeat(4)
    with pytest.raises(ValueError, match="only 5 classes"):
        class_pair_batches(labels, 6, torch.Generator())
    with pytest.raises(ValueError, match=">= 2"):
        class_pair_batches(labels, 1, torch.Generator())
    with pytest.raises(ValueError, match="1-d integer"):
        class_pair_batches(labels.float(), 2, torch.Generator())


def test_random_batches_are_the_loops_permutation_in_full_batches():
    batches = random_batches(10, 3, torch.Generator().manual_seed(5))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(batches, order[:9].view(3, 3))
    with pytest.raises(ValueError, match="exceeds"):
        random_batches(2, 3, torch.Generator())


# ---------------------------------------------------------------- the method

def test_config_refuses_bad_knobs():
    config()
    bad = [(dict(vat_epsilon=-1.0), "vat_epsilon=-1.0"), (dict(metric_loss="lifted"), "metric_loss"),
           (dict(npair_form="cosine"), "npair_form"), (dict(triplet_margin=-0.1), "triplet_margin"),
           (dict(vat_xi=0.0), "vat_xi"), (dict(vat_iterations=0), "vat_iterations"),
           (dict(batch_size=7), "even batch_size"), (dict(metric_classes_per_batch=3), "batch_size=6"),
           (dict(batch_size=2), "metric_classes_per_batch=1"), (dict(batch_size=12, workers=4), "multiple of 8"),
           (dict(batch_size=24), "only 10 classes"), (dict(vat_probe_dtype="float16"), "vat_probe_dtype")]
    for knobs, message in bad:
        with pytest.raises(ConfigError, match=message):
            config(**knobs)


def test_pair_layout_is_checked():
    check_pair_layout(torch.tensor([3, 3, 1, 1]))
    for labels in ([0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 1], [0, 0]):
        with pytest.raises(ValueError, match="class-pair batches"):
            check_pair_layout(torch.tensor(labels))
    method = build()
    x, y = pair_batch()
    with pytest.raises(ValueError, match="needs the class labels"):
        method([x])
    with pytest.raises(ValueError, match="class-pair batches"):
        method([x], torch.arange(8))


def test_random_negatives_are_other_classes_and_uniform():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([random_negatives(4, g) for _ in range(4000)])  # (4000, 4): positions in 0..7
    own = 2 * torch.arange(4)
    assert bool(((draws != own) & (draws != own + 1)).all())
    counts = torch.stack([(draws[:, 0] == j).sum() for j in range(2, 8)]).float()
    assert counts.min() > 0.8 * 4000 / 6 and counts.max() < 1.2 * 4000 / 6  # uniform over the 6 others


@pytest.mark.parametrize("loss", ["triplet", "npair"])
def test_method_loss_is_the_pure_loss_of_its_embeddings(loss):
    method = build(metric_loss=loss, triplet_margin=0.5)
    x, y = pair_batch()
    generator = method._generator()  # what the step will draw from
    out = method([x], y)
    z = build(metric_loss=loss).embed(x)  # same initial weights, train mode: the same batch statistics
    if loss == "triplet":
        expected = triplet_loss(z[0::2], z[1::2], z[random_negatives(4, generator)], 0.5)
    else:
        expected = npair_loss(z[0::2], z[1::2], "distance")
    torch.testing.assert_close(out.loss, expected)
    assert out.embedding.shape == (4, 8) and int(method.draws) == 1


@pytest.mark.parametrize("loss", ["triplet", "npair"])
def test_method_with_vat_adds_lambda_times_the_adversarial_term(loss):
    method = build(metric_loss=loss, vat_epsilon=3.0, vat_lambda=0.5)
    reference = build(metric_loss=loss)
    x, y = pair_batch()
    out = method([x], y)
    clean = reference([x], y)
    assert float(out.logs["metric_loss"]) == pytest.approx(clean.loss.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(float(out.logs["metric_loss"]) + 0.5 * float(out.logs["vat_loss"]), rel=1e-6)
    # only the clean pass moves the BN running statistics: the same state as the step without VAT
    for (name, value), other in zip(method.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(value, other, msg=name)
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters())


def test_resumed_method_draws_what_the_uninterrupted_one_draws():
    # No optimiser step and train-mode BN: the two steps differ only by the triplet negatives drawn (VAT's
    # start directions come from the same generator), which follow the `draws` buffer of the state dict.
    x, y = pair_batch()
    straight = build()
    first_loss = straight([x], y).loss
    second_loss = straight([x], y).loss
    assert not torch.isclose(first_loss, second_loss)
    checkpoint = build()
    checkpoint([x], y)
    resumed = build()
    resumed.load_state_dict(checkpoint.state_dict())
    torch.testing.assert_close(resumed([x], y).loss, second_loss)


# ---------------------------------------------------------------- 2 gloo workers x B/2 = 1 worker x B

KNOBS = [dict(metric_loss="triplet", vat_epsilon=2.0, vat_lambda=0.7),
         dict(metric_loss="npair", npair_form="inner_product", vat_epsilon=2.0, vat_iterations=2)]


def _method_step(world: int, worker: int) -> list:
    from lab.distributed import average_gradients, convert_to_global_batchnorm

    x, y = pair_batch(4, seed=11)  # global batch of 8: 4 classes x 2
    local = slice(worker * 8 // world, (worker + 1) * 8 // world)
    results = []
    for knobs in KNOBS:
        method = build(**knobs, batch_size=8, workers=world)
        if world > 1:
            method = convert_to_global_batchnorm(method)
        out = method([x[local]], y[local])
        out.loss.backward()
        if world > 1:
            average_gradients(method)
        results.append({"loss": out.loss.detach(),
                        "grads": {n: p.grad.clone() for n, p in method.named_parameters()},
                        "state": {n: t.clone() for n, t in method.state_dict().items()}})
    return results


def test_two_gloo_workers_equal_one_worker(tmp_path):
    workers = run_on_gloo_workers(_method_step, tmp_path)
    torch.set_num_threads(1)
    single = _method_step(1, 0)
    for i, knobs in enumerate(KNOBS):
        expected = single[i]
        for w in workers:
            # every worker computes the global batch's loss; gradients averaged = the 1-worker gradients
            torch.testing.assert_close(w[i]["loss"], expected["loss"], rtol=1e-5, atol=1e-5, msg=str(knobs))
            for kind in ("grads", "state"):
                for name, value in expected[kind].items():
                    torch.testing.assert_close(w[i][kind][name], value, rtol=1e-4, atol=1e-5,
                                               msg=f"{knobs} {kind} {name}")


def test_a_zero_shot_run_scores_recall_on_the_encoder_and_on_the_embedding_layer():
    from lab.checkpoint import MemoryStore
    from lab.train import train

    cfg = RunConfig(method="metric", metric_loss="npair", class_split="half", batch_size=10, epochs=1, scale="smoke",
                    train_subset=300, eval_subset=200, test_subset=200, linear_epochs=1, threads=1, vat_epsilon=1.0)
    row = train(cfg, MemoryStore(), progress=False)
    assert row["status"] == "ok"
    for layer in ("", "fc_"):
        scores = [row[f"{prefix}{layer}recall_at_{k}"] for prefix in ("", "random_") for k in (1, 2, 4, 8)]
        assert all(0 <= s <= 100 for s in scores), (layer, scores)
        assert scores[:4] == sorted(scores[:4])  # Recall@K grows with K
    # two feature spaces (the backbone, the embedding layer on top): not one score copied into both
    assert [row[f"recall_at_{k}"] for k in (1, 2, 4, 8)] != [row[f"fc_recall_at_{k}"] for k in (1, 2, 4, 8)]
