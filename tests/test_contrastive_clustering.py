"""Contrastive Clustering (Li et al., AAAI 2021) and the clustering metrics (NMI, ACC, ARI).

Worked examples with the arithmetic written out; a direct loop-by-loop implementation of the
paper's eq. 2-3 and 7-9 on random tensors; 2 gloo workers x B/2 = 1 worker x B for the
loss and the gradients (the cluster-level columns span the GLOBAL batch).
"""

import math
import types

import numpy as np
import pytest
import torch

from lab.backbones import build_backbone
from lab.clustering import ari, cluster_scores, clustering_accuracy, contingency, nmi
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.contrastive_clustering import (ContrastiveClustering, assignment_entropy, cluster_level_loss,
                                                nt_xent_between_columns)
from lab.methods.simclr import nt_xent_loss
from lab.views import EvalView
from tests.gloo import run_on_gloo_workers


def tiny_cfg(**changes) -> RunConfig:
    """A small Contrastive Clustering config (the paper's tau_I, tau_C)."""
    values = dict(scale="smoke", head="mlp", head_layers=2, head_hidden_dim=32, head_out_dim=16, temperature=0.5,
                  cc_cluster_temperature=1.0, cc_clusters=4)
    values.update(changes)
    return RunConfig(method="contrastive_clustering", **values)


def build(seed: int = 0, **changes) -> ContrastiveClustering:
    torch.manual_seed(seed)
    return ContrastiveClustering(tiny_cfg(**changes), build_backbone("convnet_tiny", 1))


def random_views(n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)]


# --- cluster-level contrast and entropy, by hand -------------------------------------------------

def test_cluster_contrast_worked_example():
    # N = 2 images, M = 2 clusters, tau_C = 0.5.
    # Y^a = [[3/4, 1/4], [1/4, 3/4]] -> columns a1 = (3/4, 1/4), a2 = (1/4, 3/4), |a_i| = sqrt(10)/4
    # Y^b = [[1, 0], [0, 1]]         -> columns b1 = (1, 0),     b2 = (0, 1)
    # cosines: s(a1, a2) = (3/16 + 3/16) / (10/16) = 0.6; s(a1, b1) = s(a2, b2) = 3/sqrt(10);
    #          s(a1, b2) = s(a2, b1) = 1/sqrt(10); s(b1, b2) = 0.
    # anchor a1 (positive b1; candidates a2, b1, b2; the anchor itself excluded):
    #   l = -3/sqrt(10)/tau + log(e^{0.6/tau} + e^{3/sqrt(10)/tau} + e^{1/sqrt(10)/tau}); a2 the same by symmetry
    # anchor b1 (positive a1; candidates a1, a2, b2):
    #   l = -3/sqrt(10)/tau + log(e^{3/sqrt(10)/tau} + e^{1/sqrt(10)/tau} + e^{0}); b2 the same
    # contrast = mean over the 2M = 4 anchors = (l_a1 + l_b1) / 2
    tau = 0.5
    ya = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    yb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos, neg = 3 / math.sqrt(10), 1 / math.sqrt(10)
    l_a = -pos / tau + math.log(math.exp(0.6 / tau) + math.exp(pos / tau) + math.exp(neg / tau))
    l_b = -pos / tau + math.log(math.exp(pos / tau) + math.exp(neg / tau) + 1.0)
    expected = (l_a + l_b) / 2  # = 0.9474...
    assert nt_xent_between_columns(ya, yb, tau).item() == pytest.approx(expected, rel=1e-6)
    # A dot product instead of the cosine (|a_i| = sqrt(10)/4 != 1) or the rows instead of the
    # columns (here Y^a is symmetric, so take a non-symmetric case below) would change the number.
    # Both P's are (1/2, 1/2): H(Y) = 2 log 2, and L_clu = contrast - 2 log 2.
    loss, contrast, entropy = cluster_level_loss(ya, yb, tau)
    assert contrast.item() == pytest.approx(expected, rel=1e-6)
    assert entropy.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert loss.item() == pytest.approx(expected - 2 * math.log(2), rel=1e-6)


def test_cluster_contrast_uses_columns_not_rows():
    # N = 3, M = 2, tau = 1. Y^a = Y^b = [[1, 0], [1, 0], [0, 1]]: columns c1 = (1, 1, 0), c2 = (0, 0, 1),
    # orthogonal; each anchor's positive is its copy (cos 1), its negatives the other column twice (cos 0):
    #   l = -1 + log(e^1 + e^0 + e^0) = log(1 + 2/e) = 0.5514...
    # Rows would give 3 anchors per view and another number.
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nt_xent_between_columns(y, y, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # Entropy: column sums (2, 1) / 3 -> H = -(2/3 log 2/3 + 1/3 log 1/3) = 0.6365... per view
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    _, _, entropy = cluster_level_loss(y, y, 1.0)
    assert entropy.item() == pytest.approx(2 * h, rel=1e-6)


def test_assignment_entropy_worked_examples():
    # Y = [[0.9, 0.1], [0.7, 0.3]]: column sums (1.6, 0.4), ||Y||_1 = 2 -> P = (0.8, 0.2)
    # H = -(0.8 log 0.8 + 0.2 log 0.2) = 0.8 x 0.22314 + 0.2 x 1.60944 = 0.50040
    y = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    assert assignment_entropy(y).item() == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), rel=1e-6)
    # even spread over M = 4 clusters: log 4; everything in one cluster: 0
    assert assignment_entropy(torch.full((5, 4), 0.25)).item() == pytest.approx(math.log(4), rel=1e-6)
    one = torch.zeros(5, 4)
    one[:, 2] = 1.0
    assert assignment_entropy(one).item() == pytest.approx(0.0, abs=1e-9)
    # P divides by ||Y||_1, not by N: rows not summing to 1 still give a distribution.
    # [[2, 0], [0, 2], [0, 4]] -> sums (2, 6) / 8 -> P = (1/4, 3/4), H = 0.5623...
    y = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    assert assignment_entropy(y).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6)


def test_entropy_is_subtracted_so_a_spread_assignment_costs_less():
    # Eq. 9: L_clu = contrast - H(Y). Same contrast (the columns are permuted copies across views),
    # different spread: the even spread lowers L_clu by H = 2 log M, the single cluster by 0.
    m = 3
    spread = torch.eye(m).repeat(2, 1)  # 6 images, 2 per cluster
    loss, contrast, entropy = cluster_level_loss(spread, spread, 1.0)
    assert entropy.item() == pytest.approx(2 * math.log(m), rel=1e-6)
    assert loss.item() == pytest.approx(contrast.item() - 2 * math.log(m), rel=1e-6)
    collapsed = torch.zeros(6, m)
    collapsed[:, 0] = 1.0
    collapsed = collapsed * 0.98 + 0.01  # strictly positive columns (cosines defined)
    loss_c, contrast_c, entropy_c = cluster_level_loss(collapsed, collapsed, 1.0)
    assert entropy_c.item() < 0.2 * entropy.item()
    assert loss_c.item() == pytest.approx(contrast_c.item() - entropy_c.item(), rel=1e-6)


# --- the paper's equations, loop by loop, on random tensors ---------------------------------------

def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return (u @ v / (u.norm() * v.norm())).item()


def paper_pair_loss(a: list[torch.Tensor], b: list[torch.Tensor], tau: float) -> float:
    """1/(2K) sum_i (l_i^a + l_i^b) with l_i^a = -log e^{s(a_i,b_i)/tau} / sum_{j} [e^{s(a_i,a_j)/tau} [j != i]
    + e^{s(a_i,b_j)/tau}] (eq. 2-3 for rows, eq. 7 and 9's first term for columns; self excluded as in the
    official code and the text's "2K - 2 negatives")."""
    k = len(a)
    total = 0.0
    for first, second in ((a, b), (b, a)):
        for i in range(k):
            denominator = sum(math.exp(_cos(first[i], first[j]) / tau) for j in range(k) if j != i)
            denominator += sum(math.exp(_cos(first[i], second[j]) / tau) for j in range(k))
            total += -math.log(math.exp(_cos(first[i], second[i]) / tau) / denominator)
    return total / (2 * k)


def paper_entropy(ya: torch.Tensor, yb: torch.Tensor) -> float:
    """H(Y) of eq. 8: P(y_i^k) = sum_t Y^k_ti / ||Y^k||_1, summed over both views."""
    h = 0.0
    for y in (ya, yb):
        total = sum(y[t, i].item() for t in range(y.shape[0]) for i in range(y.shape[1]))
        for i in range(y.shape[1]):
            p = sum(y[t, i].item() for t in range(y.shape[0])) / total
            h -= p * math.log(p)
    return h


def test_losses_equal_a_direct_implementation_of_the_paper():
    g = torch.Generator().manual_seed(3)
    n, m = 7, 5
    ya = torch.randn(n, m, generator=g).mul(2).softmax(1)
    yb = torch.randn(n, m, generator=g).mul(2).softmax(1)
    tau_c = 0.7
    loss, contrast, entropy = cluster_level_loss(ya, yb, tau_c)
    expected_contrast = paper_pair_loss(list(ya.T), list(yb.T), tau_c)
    expected_entropy = paper_entropy(ya, yb)
    assert contrast.item() == pytest.approx(expected_contrast, rel=1e-5)
    assert entropy.item() == pytest.approx(expected_entropy, rel=1e-5)
    assert loss.item() == pytest.approx(expected_contrast - expected_entropy, rel=1e-5)  # eq. 9
    # instance level (eq. 2-3) on the rows, through SimCLR's NT-Xent
    za, zb = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    assert nt_xent_loss(za, zb, 0.5).item() == pytest.approx(paper_pair_loss(list(za), list(zb), 0.5), rel=1e-5)


def test_method_loss_is_instance_plus_cluster_level_on_its_heads():
    # Eq. 10: L = L_ins (tau_I = cfg.temperature on g_I's rows) + L_clu (tau_C on softmax(g_C) columns).
    method = build(cc_clusters=3, temperature=0.3, cc_cluster_temperature=0.8)
    views = random_views(6)
    out = method(views)
    with torch.no_grad():  # train mode, so BatchNorm uses the same batch statistics
        ha, hb = method.backbone(views[0]), method.backbone(views[1])
        za, zb = method.instance_projector(ha), method.instance_projector(hb)
        ya, yb = method.cluster_projector(ha).softmax(1), method.cluster_projector(hb).softmax(1)
    assert ya.shape == (6, 3)
    expected = (paper_pair_loss(list(za), list(zb), 0.3) + paper_pair_loss(list(ya.T), list(yb.T), 0.8)
                - paper_entropy(ya, yb))
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    assert out.logs["instance_loss"] == pytest.approx(paper_pair_loss(list(za), list(zb), 0.3), rel=1e-4)
    assert out.logs["cluster_entropy"] == pytest.approx(paper_entropy(ya, yb) / 2, rel=1e-4)
    out.loss.backward()
    for module in (method.backbone, method.instance_projector, method.cluster_projector):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    assert method.encoder is method.backbone
    assert torch.equal(out.embedding, za)


def test_heads_follow_the_projector_knobs():
    method = build(cc_clusters=7, head_layers=3)
    assert method.cluster_projector[-1].out_features == 7
    assert sum(isinstance(x, torch.nn.Linear) for x in method.cluster_projector) == 3
    assert method.instance_projector[-1].out_features == 16
    for head in ("linear", "none"):  # the cluster head still maps to M: one linear layer
        m = build(head=head, cc_clusters=5)
        assert [type(x) for x in m.cluster_projector] == [torch.nn.Linear]
        assert m.cluster_projector[0].out_features == 5
        assert torch.isfinite(m(random_views(4)).loss)


# --- assign_clusters ------------------------------------------------------------------------------

def test_assign_clusters_is_the_argmax_of_the_cluster_head_in_eval_mode():
    method = build(cc_clusters=4)
    method(random_views(8))  # move BatchNorm's running statistics away from their initial values
    x = random_views(5, seed=1)[0]
    method.train()
    clusters = method.assign_clusters(x)
    assert method.training  # mode restored
    method.eval()
    with torch.no_grad():
        expected = method.cluster_projector(method.backbone(x)).softmax(1).argmax(1)
    assert torch.equal(clusters, expected)
    assert clusters.dtype == torch.int64 and clusters.shape == (5,) and not clusters.requires_grad
    # eval mode: one image alone gets the cluster it gets in a batch (no batch statistics)
    assert method.assign_clusters(x[2:3]).item() == clusters[2].item()


# --- config ---------------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    cfg = RunConfig(method="contrastive_clustering", scale="smoke")
    assert cfg.cc_clusters == 10 and cfg.temperature == 0.5 and cfg.cc_cluster_temperature == 1.0
    assert RunConfig(method="contrastive_clustering", scale="smoke", cc_clusters=20).cc_clusters == 20
    with pytest.raises(ConfigError, match="cc_clusters=1: needs an integer >= 2"):
        RunConfig(method="contrastive_clustering", cc_clusters=1)
    with pytest.raises(ConfigError, match="cc_cluster_temperature=0.0: needs a number > 0"):
        RunConfig(method="contrastive_clustering", cc_cluster_temperature=0.0)
    with pytest.raises(ConfigError, match="local_crops"):
        RunConfig(method="contrastive_clustering", local_crops=2)
    sgd = RunConfig(method="contrastive_clustering", optimizer="sgd")
    assert (sgd.base_lr, sgd.weight_decay) == (0.3, 1e-4)


# --- metrics --------------------------------------------------------------------------------------

def test_a_relabelling_scores_one_everywhere():
    true = [0, 0, 1, 1, 2, 2, 2]
    pred = [2, 2, 0, 0, 5, 5, 5]  # a bijection of the labels, even with other label values
    assert nmi(true, pred) == pytest.approx(1.0)
    assert clustering_accuracy(true, pred) == pytest.approx(1.0)
    assert ari(true, pred) == pytest.approx(1.0)
    t = torch.tensor(true)
    assert nmi(t, torch.tensor(pred)) == pytest.approx(1.0)  # tensors too


def test_two_cluster_contingency_worked_example():
    # true = [0,0,0,1,1,1], pred = [0,0,1,1,1,1] -> n_ij (rows = classes) = [[2, 1], [0, 3]],
    # a = (3, 3), b = (2, 4), n = 6.
    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]
    np.testing.assert_array_equal(contingency(true, pred), [[2, 1], [0, 3]])
    # NMI: MI = (2/6) log((2/6)/(1/2 . 2/6)) + (1/6) log((1/6)/(1/2 . 4/6)) + (3/6) log((3/6)/(1/2 . 4/6))
    #         = (1/3) log 2 - (1/6) log 2 + (1/2) log(3/2) = (1/6) log 2 + (1/2) log(3/2) = 0.318257
    # H(true) = log 2 = 0.693147; H(pred) = -(1/3 log 1/3 + 2/3 log 2/3) = 0.636514
    # NMI = 0.318257 / ((0.693147 + 0.636514) / 2) = 0.478704
    mi = math.log(2) / 6 + math.log(1.5) / 2
    h_pred = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert nmi(true, pred) == pytest.approx(mi / ((math.log(2) + h_pred) / 2), rel=1e-9)
    assert nmi(true, pred) == pytest.approx(0.478704, abs=1e-6)
    # ARI: sum C(n_ij, 2) = C(2,2) + C(1,2) + C(0,2) + C(3,2) = 1 + 0 + 0 + 3 = 4
    #      sum C(a_i, 2) = 3 + 3 = 6; sum C(b_j, 2) = 1 + 6 = 7; C(6, 2) = 15; E = 6 . 7 / 15 = 2.8
    #      ARI = (4 - 2.8) / ((6 + 7) / 2 - 2.8) = 1.2 / 3.7 = 0.324324
    assert ari(true, pred) == pytest.approx(1.2 / 3.7, rel=1e-9)
    # ACC: class 0 <-> cluster 0 (2), class 1 <-> cluster 1 (3): 5/6
    assert clustering_accuracy(true, pred) == pytest.approx(5 / 6)
    # NMI and ARI are symmetric in their arguments
    assert nmi(pred, true) == pytest.approx(nmi(true, pred)) and ari(pred, true) == pytest.approx(ari(true, pred))


def test_independent_labelling_and_negative_ari():
    # true = [0,0,1,1], pred = [0,1,0,1]: n_ij all 1 -> MI = 0 -> NMI 0.
    # ARI: sum C(n_ij,2) = 0; sum C(a,2) = 2; sum C(b,2) = 2; C(4,2) = 6; E = 4/6
    #      ARI = (0 - 2/3) / (2 - 2/3) = -1/2. ACC: any matching gets 2 of 4 = 1/2.
    true, pred = [0, 0, 1, 1], [0, 1, 0, 1]
    assert nmi(true, pred) == pytest.approx(0.0, abs=1e-12)
    assert ari(true, pred) == pytest.approx(-0.5)
    assert clustering_accuracy(true, pred) == pytest.approx(0.5)


def test_accuracy_when_the_number_of_clusters_differs_from_the_number_of_classes():
    # More clusters than classes: true [0,0,1,1], pred [0,1,2,2] -> n_ij = [[1,1,0],[0,0,2]]
    # best one-to-one: class 0 -> cluster 0 or 1 (1), class 1 -> cluster 2 (2): 3/4; the other cluster is wrong.
    assert clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == pytest.approx(3 / 4)
    # Fewer: true [0,1,2,2], pred [0,0,1,1] -> n_ij = [[1,0],[1,0],[0,2]]: class 2 -> cluster 1 (2),
    # one of classes 0/1 -> cluster 0 (1): 3/4
    assert clustering_accuracy([0, 1, 2, 2], [0, 0, 1, 1]) == pytest.approx(3 / 4)
    # one-to-one forbids mapping two clusters onto one class (a majority vote per cluster would):
    # true [0,0,0,0], pred [0,0,1,1] -> 2/4, not 4/4
    assert clustering_accuracy([0, 0, 0, 0], [0, 0, 1, 1]) == pytest.approx(0.5)


def test_limit_cases_match_sklearn_conventions():
    # one group on both sides, or all singletons on both sides: identical partitions -> 1.0
    assert nmi([3, 3, 3], [1, 1, 1]) == 1.0 and ari([3, 3, 3], [1, 1, 1]) == 1.0
    assert ari([0, 1, 2], [5, 6, 7]) == 1.0 and nmi([0, 1, 2], [5, 6, 7]) == pytest.approx(1.0)
    # one group against a split: no information -> NMI 0, ARI 0 (E = numerator = sum C(n_ij, 2))
    assert nmi([0, 0, 0, 0], [0, 0, 1, 1]) == 0.0
    assert ari([0, 0, 0, 0], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        nmi([0, 1], [0, 1, 1])


def test_cluster_scores_over_batches():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (11, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (11,), generator=g)
    view = EvalView("fashion_mnist", 28)
    method = build(cc_clusters=3)
    method(random_views(8))
    full = cluster_scores(method, images, labels, view, torch.device("cpu"))
    batched = cluster_scores(method, images, labels, view, torch.device("cpu"), batch_size=4)
    assert full == pytest.approx(batched)
    pred = method.assign_clusters(view(images))
    assert full == pytest.approx({"cluster_nmi": nmi(labels, pred), "cluster_acc": clustering_accuracy(labels, pred),
                                  "cluster_ari": ari(labels, pred)})

    class Oracle:  # a "method" whose clusters are the labels themselves, relabelled
        def assign_clusters(self, x):
            return (labels[: len(x)] + 1) % 3 if len(x) == len(labels) else None

    assert cluster_scores(Oracle(), images, labels, view, torch.device("cpu")) == {
        "cluster_nmi": pytest.approx(1.0), "cluster_acc": pytest.approx(1.0), "cluster_ari": pytest.approx(1.0)}

    class NotClustering:
        def assign_clusters(self, x):
            return None

    assert cluster_scores(NotClustering(), images, labels, view, torch.device("cpu")) == {}


# --- 2 gloo workers x B/2 = 1 worker x B --------------------------------------------------------

def _one_step(world: int, worker: int) -> dict:
    """The cluster-level loss on raw logits, and one full method step (GlobalBatchNorm, gradient average)."""
    from lab.distributed import average_gradients, convert_to_global_batchnorm, is_distributed

    batch = 8
    local = slice(worker * batch // world, (worker + 1) * batch // world)
    g = torch.Generator().manual_seed(5)
    logits_a, logits_b = torch.randn(batch, 3, generator=g), torch.randn(batch, 3, generator=g)
    a, b = logits_a[local].clone().requires_grad_(), logits_b[local].clone().requires_grad_()
    loss, contrast, entropy = cluster_level_loss(a.softmax(1), b.softmax(1), 0.7)
    loss.backward()
    out = {"cluster": (loss.detach(), contrast.detach(), entropy.detach(), a.grad, b.grad)}

    method = build(cc_clusters=3, temperature=0.4, cc_cluster_temperature=0.7)
    if world > 1:
        method = convert_to_global_batchnorm(method)
    views = random_views(batch, seed=11)
    step = method([v[local] for v in views])
    step.loss.backward()
    if is_distributed():
        average_gradients(method)
    out["method"] = (step.loss.detach(), {n: p.grad.clone() for n, p in method.named_parameters()})
    return out


def test_two_gloo_workers_equal_one_worker(tmp_path):
    workers = run_on_gloo_workers(_one_step, tmp_path)
    single = _one_step(1, 0)

    loss, contrast, entropy, grad_a, grad_b = single["cluster"]
    for w in workers:  # the columns span the global batch: every worker holds the global L_clu
        torch.testing.assert_close(w["cluster"][0], loss)
        torch.testing.assert_close(w["cluster"][1], contrast)
        torch.testing.assert_close(w["cluster"][2], entropy)
    # the loop averages gradients over workers: (1/W) x each worker's gradient on its rows = the global gradient
    torch.testing.assert_close(torch.cat([w["cluster"][3] for w in workers]) / 2, grad_a)
    torch.testing.assert_close(torch.cat([w["cluster"][4] for w in workers]) / 2, grad_b)

    loss, grads = single["method"]
    torch.testing.assert_close((workers[0]["method"][0] + workers[1]["method"][0]) / 2, loss, atol=1e-5, rtol=1e-5)
    for w in workers:
        assert w["method"][1].keys() == grads.keys()
        for name, value in grads.items():
            torch.testing.assert_close(w["method"][1][name], value, atol=1e-5, rtol=1e-4, msg=name)
