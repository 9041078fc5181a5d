"""MoCo (InfoNCE, queue, key encoder, variants) and SupCon against their definitions.

Hand-computed tensors, loops over the papers' equations compared on random tensors, the
queue's FIFO order, the EMA numerically, and 2 gloo workers x B/2 = 1 worker x B.
"""

import math

import pytest
import torch

from lab.backbones import build_backbone
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.moco import MoCo, in_batch_infonce_loss, infonce_loss
from lab.methods.simclr import nt_xent_loss
from lab.methods.supcon import SupCon, supcon_loss
from tests.gloo import run_on_gloo_workers


def config(method: str = "moco", **knobs) -> RunConfig:
    fields = dict(scale="smoke", head="mlp", head_layers=2, head_hidden_dim=16, head_out_dim=8, temperature=0.2,
                  batch_size=8)
    if method == "moco":
        fields.update(ema_momentum=0.99, moco_queue_size=16, moco_variant="queue")
    return RunConfig(method=method, **{**fields, **knobs})


def build(cls, dataset_size: int | None = None, **knobs):
    torch.manual_seed(0)
    return cls(config(cls.name, **knobs), build_backbone("convnet_tiny", 1), dataset_size=dataset_size)


def random_views(n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)]


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _rows(t):
    return [list(map(float, row)) for row in t]


def infonce_by_definition(q, k, negatives, tau):
    """MoCo eq. 1 as a loop: -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_i exp(q.k_i/tau)), mean over queries."""
    q, k, negatives = _rows(q), _rows(k), _rows(negatives)
    total = 0.0
    for qi, ki in zip(q, k):
        positive = math.exp(_cos(qi, ki) / tau)
        total += -math.log(positive / (positive + sum(math.exp(_cos(qi, n) / tau) for n in negatives)))
    return total / len(q)


def in_batch_by_definition(q, k, tau):
    """End-to-end: q_i's positive is k_i, its negatives the keys k_j, j != i."""
    q, k = _rows(q), _rows(k)
    total = 0.0
    for i, qi in enumerate(q):
        positive = math.exp(_cos(qi, k[i]) / tau)
        total += -math.log(positive / (positive + sum(math.exp(_cos(qi, k[j]) / tau) for j in range(len(k)) if j != i)))
    return total / len(q)


def supcon_by_definition(z1, z2, labels, tau):
    """SupCon eq. 2 (L_out) as loops over the 2N views: P(i) same label but not i, A(i) all but i."""
    views = _rows(torch.cat([z1, z2]))
    view_labels = [int(y) for y in labels] * 2
    total = 0.0
    for i in range(len(views)):
        A = [a for a in range(len(views)) if a != i]
        P = [p for p in A if view_labels[p] == view_labels[i]]
        denominator = sum(math.exp(_cos(views[i], views[a]) / tau) for a in A)
        total += -sum(math.log(math.exp(_cos(views[i], views[p]) / tau) / denominator) for p in P) / len(P)
    return total / len(views)


# ---------------------------------------------------------------- InfoNCE (MoCo eq. 1)

def test_infonce_worked_example():
    # q = (1,0), k+ = (1,0), negatives (0,1), (-1,0): logits [1, 0, -1] / tau, label 0.
    # tau = 1:   -log e / (e + 1 + e^-1)        = log(e + 1 + e^-1) - 1
    # tau = 0.5: -log e^2 / (e^2 + 1 + e^-2)    = log(e^2 + 1 + e^-2) - 2
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert math.isclose(infonce_loss(q, k, negatives, 1.0).item(), math.log(math.e + 1 + 1 / math.e) - 1, rel_tol=1e-6)
    assert math.isclose(infonce_loss(q, k, negatives, 0.5).item(), math.log(math.e**2 + 1 + math.e**-2) - 2,
                        rel_tol=1e-6)
    # Unnormalised inputs give the same value: cosine similarities.
    assert math.isclose(infonce_loss(3 * q, 2 * k, 5 * negatives, 1.0).item(), math.log(math.e + 1 + 1 / math.e) - 1,
                        rel_tol=1e-6)


def test_infonce_matches_definition_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    for tau in (0.07, 0.2, 1.0):
        q, k, negatives = (torch.randn(n, 4, generator=g) for n in (5, 5, 7))
        assert math.isclose(infonce_loss(q, k, negatives, tau).item(), infonce_by_definition(q, k, negatives, tau),
                            rel_tol=1e-5)


def test_in_batch_infonce_worked_example_and_definition():
    # q = k = {(1,0), (0,1)}, tau = 1: each query has positive cos 1 and one negative cos 0 -> log(e + 1) - 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert math.isclose(in_batch_infonce_loss(z, z.clone(), 1.0).item(), math.log(math.e + 1) - 1, rel_tol=1e-6)
    g = torch.Generator().manual_seed(1)
    for tau in (0.1, 0.5):
        q, k = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
        assert math.isclose(in_batch_infonce_loss(q, k, tau).item(), in_batch_by_definition(q, k, tau), rel_tol=1e-5)


# ---------------------------------------------------------------- SupCon (eq. 2, L_out)

def test_supcon_all_same_labels_worked_example():
    # 2 images, views (1,0),(0,1) | (1,0),(0,1), both label 0, tau = 1.
    # Anchor (1,0): the other views have cos 0, 1, 0 -> denominator 2 + e; all three are positives:
    #   -1/3 [ (0 - log(2+e)) + (1 - log(2+e)) + (0 - log(2+e)) ] = log(2 + e) - 1/3,
    # the same for every anchor by symmetry. (SimCLR, the partner as the only positive: log(2 + e) - 1.)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = torch.tensor([0, 0])
    assert math.isclose(supcon_loss(z, z.clone(), same, 1.0).item(), math.log(2 + math.e) - 1 / 3, rel_tol=1e-6)
    assert math.isclose(supcon_loss(z, z.clone(), torch.tensor([0, 1]), 1.0).item(), math.log(2 + math.e) - 1,
                        rel_tol=1e-6)


def test_supcon_matches_definition_on_random_tensors():
    g = torch.Generator().manual_seed(2)
    for tau in (0.1, 0.5, 2.0):
        z1, z2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
        labels = torch.randint(0, 3, (6,), generator=g)
        assert math.isclose(supcon_loss(z1, z2, labels, tau).item(), supcon_by_definition(z1, z2, labels, tau),
                            rel_tol=1e-5)


def test_supcon_with_distinct_labels_is_nt_xent():
    g = torch.Generator().manual_seed(3)
    for tau in (0.1, 0.5):
        z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
        labels = torch.randperm(7, generator=g) + 10
        torch.testing.assert_close(supcon_loss(z1, z2, labels, tau), nt_xent_loss(z1, z2, tau))


def test_supcon_gradient_is_finite_with_the_self_mask():
    z1, z2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    supcon_loss(z1, z2, torch.tensor([0, 1, 0, 1]), 0.1).backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all() and z1.grad.abs().sum() > 0


# ---------------------------------------------------------------- MoCo's queue and key encoder

def test_queue_is_fifo_and_wraps_around():
    moco = build(MoCo, moco_queue_size=8)
    a, b, c = (torch.nn.functional.normalize(torch.randn(4, 8), dim=1) for _ in range(3))
    moco.queue.enqueue([a])
    assert moco.queue.ptr.item() == 4
    moco.queue.enqueue([b])  # queue = [a; b], full, pointer back at the oldest row
    torch.testing.assert_close(moco.queue.view(), torch.cat([a, b]))
    assert moco.queue.ptr.item() == 0
    moco.queue.enqueue([c])  # c overwrites a, the oldest; b stays
    torch.testing.assert_close(moco.queue.view(), torch.cat([c, b]))
    assert moco.queue.ptr.item() == 4


def test_forward_enqueues_this_steps_keys_once_and_only_in_training():
    moco = build(MoCo, moco_queue_size=16)
    views = random_views(8)
    before = moco.queue.view()
    with torch.no_grad():
        keys = moco._key(views[1])
    moco.train()
    out = moco(views)
    out.loss.backward()
    moco.after_step(0, 1)  # EMA only: the queue moved once, in forward
    assert moco.queue.ptr.item() == 8
    torch.testing.assert_close(moco.queue.view()[:8], keys)  # the l2-normalised keys of view 2, in batch order
    torch.testing.assert_close(moco.queue.view()[8:], before[8:])
    torch.testing.assert_close(moco.queue.view().norm(dim=1), torch.ones(16))
    moco.eval()
    with torch.no_grad():
        moco(views)
    assert moco.queue.ptr.item() == 8


def test_key_encoder_gets_no_gradient_and_moves_by_ema():
    moco = build(MoCo, ema_momentum=0.9)
    out = moco(random_views(8))
    out.loss.backward()
    momentum_params = list(moco.momentum["backbone"].parameters()) + list(moco.momentum["projector"].parameters())
    assert all(not p.requires_grad and p.grad is None for p in momentum_params)
    assert all(p.grad is not None for p in moco.backbone.parameters())
    torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.5).step()  # query != key now
    query = [p.detach().clone() for p in list(moco.backbone.parameters()) + list(moco.projector.parameters())]
    key = [p.clone() for p in momentum_params]
    assert any(not torch.equal(q, k) for q, k in zip(query, key))
    moco.after_step(0, 1)
    for q, k_before, k_after in zip(query, key, momentum_params):
        torch.testing.assert_close(k_after, 0.9 * k_before + 0.1 * q)  # eq. 2
    key = [p.clone() for p in momentum_params]
    moco.after_step(500, 1000)  # constant schedule: m at every step, whatever the progress
    for q, k_before, k_after in zip(query, key, momentum_params):
        torch.testing.assert_close(k_after, 0.9 * k_before + 0.1 * q)


def test_momentum_zero_makes_the_key_encoder_a_copy():
    moco = build(MoCo, ema_momentum=0.0)
    moco(random_views(8)).loss.backward()
    torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.5).step()
    moco.after_step(0, 1)
    for q, k in zip(list(moco.backbone.parameters()) + list(moco.projector.parameters()),
                    list(moco.momentum["backbone"].parameters()) + list(moco.momentum["projector"].parameters())):
        assert torch.equal(q, k)
    x = random_views(8, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(moco._key(x), torch.nn.functional.normalize(moco._query(x), dim=1))


# ---------------------------------------------------------------- validate

def test_check_wants_a_queue_that_is_a_multiple_of_the_global_batch():
    with pytest.raises(ConfigError, match=r"moco_queue_size=1000 must be a multiple of batch_size=256.*use 1024"):
        config(moco_queue_size=1000, batch_size=256)
    config(moco_queue_size=1024, batch_size=256)
    config(moco_queue_size=1000, batch_size=256, moco_variant="end_to_end")  # no queue
    with pytest.raises(ConfigError, match=r"use 1536"):  # symmetric: 2 x 256 keys a step
        config(moco_queue_size=1280, batch_size=256, moco_symmetric=True)
    with pytest.raises(ConfigError, match="moco_variant='bank' is unknown"):
        config(moco_variant="bank")
    with pytest.raises(ConfigError, match="ema_momentum=1.5"):
        config(ema_momentum=1.5)
    with pytest.raises(ConfigError, match="memory bank of the 10 training images"):
        MoCo.check_data(config(moco_variant="memory_bank", moco_queue_size=16), train_size=10)


# ---------------------------------------------------------------- the modules, forward + backward

@pytest.mark.parametrize("knobs", [dict(moco_variant="queue"), dict(moco_variant="queue", moco_symmetric=True),
                                   dict(moco_variant="end_to_end"), dict(moco_variant="memory_bank")])
def test_moco_forward_backward(knobs):
    moco = build(MoCo, dataset_size=20, **knobs)
    indexes = torch.arange(3, 11) if knobs["moco_variant"] == "memory_bank" else None
    out = moco(random_views(8), torch.zeros(8, dtype=torch.long), indexes=indexes)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.embedding.shape == (8, 8)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in moco.backbone.parameters())


def test_memory_bank_needs_indexes_and_updates_their_rows_with_momentum_half():
    moco = build(MoCo, dataset_size=20, moco_variant="memory_bank")
    views = random_views(8)
    with pytest.raises(ValueError, match="indexes"):
        moco(views)
    before = moco.memory_bank.clone()
    indexes = torch.tensor([0, 2, 4, 6, 8, 10, 12, 14])
    out = moco(views, None, indexes=indexes)
    new = torch.nn.functional.normalize(out.embedding, dim=1)
    # Wu et al. 2018: v_i <- normalise(0.5 v_i + 0.5 f_i) at the batch's indices, other rows untouched.
    expected = torch.nn.functional.normalize(0.5 * before[indexes] + 0.5 * new, dim=1)
    torch.testing.assert_close(moco.memory_bank[indexes], expected)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[indexes] = False
    assert torch.equal(moco.memory_bank[untouched], before[untouched])
    with pytest.raises(ValueError, match="each of 20 training images"):
        moco(views, None, indexes=indexes + 10)


def test_supcon_forward_backward_and_needs_labels():
    supcon = build(SupCon)
    views = random_views(8)
    with pytest.raises(ValueError, match="labels"):
        supcon(views)
    out = supcon(views, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in supcon.parameters())


def test_registered_names_and_optimiser_defaults():
    moco, supcon = (RunConfig(method=m, optimizer="sgd") for m in ("moco", "supcon"))
    assert (moco.base_lr, moco.weight_decay, moco.temperature, moco.ema_momentum) == (0.03, 1e-4, 0.2, 0.99)
    assert (supcon.base_lr, supcon.weight_decay, supcon.temperature) == (0.05, 1e-4, 0.1)
    assert RunConfig(method="moco").ema_schedule == "constant"  # MoCo's m is fixed (eq. 2)


# ---------------------------------------------------------------- 2 gloo workers x B/2 = 1 worker x B

def _one_step(world: int, worker: int) -> dict:
    """SupCon and end-to-end InfoNCE on raw tensors, and one MoCo queue step, on this worker's slice."""
    from lab.distributed import convert_to_global_batchnorm

    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    views = random_views(8, seed=9)
    local = slice(worker * 8 // world, (worker + 1) * 8 // world)
    out = {}
    for name, loss_fn in (("supcon", lambda a, b: supcon_loss(a, b, labels[local], 0.3)),
                          ("end_to_end", lambda a, b: in_batch_infonce_loss(a, b, 0.3))):
        a, b = z1[local].clone().requires_grad_(), z2[local].clone().requires_grad_()
        loss = loss_fn(a, b)
        loss.backward()
        out[name] = (loss.detach(), a.grad, b.grad)
    moco = build(MoCo, moco_queue_size=16)
    moco = convert_to_global_batchnorm(moco) if world > 1 else moco
    out["moco"] = (moco([v[local] for v in views]).loss.detach(), moco.queue.view(), moco.queue.ptr.clone())
    return out


def test_two_gloo_workers_equal_one_worker(tmp_path):
    workers = run_on_gloo_workers(_one_step, tmp_path)
    single = _one_step(1, 0)
    for name in ("supcon", "end_to_end"):
        loss, grad_a, grad_b = single[name]
        # The loop averages: the global mean loss is the mean of the workers' losses, the gradient 1/W of the sum.
        torch.testing.assert_close((workers[0][name][0] + workers[1][name][0]) / 2, loss)
        torch.testing.assert_close(torch.cat([w[name][1] for w in workers]) / 2, grad_a)
        torch.testing.assert_close(torch.cat([w[name][2] for w in workers]) / 2, grad_b)
    loss, queue, ptr = single["moco"]
    torch.testing.assert_close((workers[0]["moco"][0] + workers[1]["moco"][0]) / 2, loss, atol=1e-5, rtol=1e-4)
    for w in workers:  # every worker holds the global batch's keys, in rank order = the 1-worker queue
        torch.testing.assert_close(w["moco"][1], queue, atol=1e-5, rtol=1e-4)
        assert torch.equal(w["moco"][2], ptr)
