"""SwAV (Caron et al. 2020) against its paper: Sinkhorn-Knopp codes, swapped prediction with
multi-crop, the queue, frozen prototypes, the config's refusals, and 2 gloo workers x B/2 = 1 x B.

The worked examples are chosen so that a wrong reading changes the number: rows before columns
in Sinkhorn, scores divided (not multiplied) by eps and tau, the mean (not the sum) over the
other crops and over the coded crops.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lab.backbones import build_backbone
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.swav import SwAV, sinkhorn_knopp, swav_loss
from tests.gloo import run_on_gloo_workers

B = 4  # batch of the method-level tests


def config(**knobs) -> RunConfig:
    fields = dict(scale="smoke", head="mlp", head_layers=2, head_hidden_dim=16, head_out_dim=8, swav_prototypes=6,
                  temperature=0.1, swav_sinkhorn_epsilon=0.05, swav_sinkhorn_iterations=3, swav_queue_size=2 * B,
                  swav_queue_start_epoch=0, swav_freeze_prototypes_steps=0, batch_size=B)
    return RunConfig(method="swav", **{**fields, **knobs})


def build(**knobs) -> SwAV:
    torch.manual_seed(0)
    return SwAV(config(**knobs), build_backbone("convnet_tiny", 1))


def crops(n: int = B, seed: int = 0, local: int = 2) -> list[torch.Tensor]:
    """2 global 28-px crops and `local` small 12-px crops of n images."""
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)]
            + [torch.randn(n, 1, 12, 12, generator=g) for _ in range(local)])


# ---------------------------------------------------------------- Sinkhorn-Knopp (eq. 3)

@pytest.mark.parametrize("log_domain", [False, True])
def test_sinkhorn_2x2_worked_example(log_domain):
    # exp(scores / eps) = M = [[1, 2], [3, 4]] (rows: samples 1, 2; columns: prototypes 1, 2).
    # Iteration 1 -- prototypes first: their totals are 1 + 3 = 4 and 2 + 4 = 6, so prototype 1 is
    # scaled by 1/4 and prototype 2 by 1/6 (the common factor 1/K and the /total are irrelevant):
    #   sample 1: (1/4, 2/6) -> normalised (3/7, 4/7);  sample 2: (3/4, 4/6) -> (9/17, 8/17).
    # (Columns first would give sample 1 (1/3, 2/3), a different answer.)
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    one = torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]])
    torch.testing.assert_close(sinkhorn_knopp(m.log(), 1.0, 1, log_domain=log_domain), one)
    # Iteration 2: prototype totals 3/7 + 9/17 = 114/119 and 4/7 + 8/17 = 124/119:
    #   sample 1: (3/114, 4/124) = (1/38, 1/31) -> (31/69, 38/69);
    #   sample 2: (9/114, 8/124) = (3/38, 2/31) -> (93/169, 76/169).
    two = torch.tensor([[31 / 69, 38 / 69], [93 / 169, 76 / 169]])
    torch.testing.assert_close(sinkhorn_knopp(m.log(), 1.0, 2, log_domain=log_domain), two)
    # scores are divided by eps: 0.5 log M at eps = 0.5 is the same matrix (x eps would give M^0.25)
    torch.testing.assert_close(sinkhorn_knopp(0.5 * m.log(), 0.5, 2, log_domain=log_domain), two)


def test_sinkhorn_reaches_the_equal_partition_marginals():
    g = torch.Generator().manual_seed(1)
    scores = F.normalize(torch.randn(12, 4, generator=g), dim=1)  # B = 12 samples, K = 4 prototypes
    for iterations in (3, 500):
        q = sinkhorn_knopp(scores, 0.5, iterations)
        assert (q >= 0).all()
        torch.testing.assert_close(q.sum(dim=1), torch.ones(12))  # every sample's code sums to 1
    # the transportation polytope of eq. 3 (columns rescaled to 1): every prototype gets B/K = 3 samples
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0), atol=1e-5, rtol=0)


def test_sinkhorn_spreads_identical_samples_evenly():
    # Every sample prefers prototype 1 strongly: the argmax would put all of them in one cluster,
    # the equal-partition constraint gives every sample the uniform code instead.
    scores = torch.tensor([[1.0, -1.0, 0.0]]).repeat(6, 1)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3), torch.full((6, 3), 1 / 3))


def sinkhorn_by_definition(scores: torch.Tensor, eps: float, iterations: int) -> list[list[float]]:
    """Q* = Diag(u) P Diag(v), P = exp(C^T Z / eps) (K x B), u <- r / (P v), v <- c / (P^T u),
    r = 1/K, c = 1/B, v = 1 at the start; the code of sample b is column b rescaled to sum 1."""
    rows = [list(map(float, row)) for row in scores]
    n, k = len(rows), len(rows[0])
    p = [[math.exp(rows[b][j] / eps) for b in range(n)] for j in range(k)]
    v = [1.0] * n
    for _ in range(iterations):
        u = [(1 / k) / sum(p[j][b] * v[b] for b in range(n)) for j in range(k)]
        v = [(1 / n) / sum(p[j][b] * u[j] for j in range(k)) for b in range(n)]
    codes = []
    for b in range(n):
        column = [u[j] * p[j][b] * v[b] for j in range(k)]
        codes.append([x / sum(column) for x in column])
    return codes


def test_sinkhorn_matches_definition_on_random_tensors():
    g = torch.Generator().manual_seed(2)
    scores = F.normalize(torch.randn(10, 3, generator=g), dim=1) @ F.normalize(torch.randn(7, 3, generator=g), dim=1).T
    for iterations in (1, 3):
        expected = torch.tensor(sinkhorn_by_definition(scores.double(), 0.05, iterations), dtype=torch.float32)
        torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, iterations), expected, atol=1e-5, rtol=1e-4)


def test_sinkhorn_is_shift_invariant_and_exact_at_small_eps():
    g = torch.Generator().manual_seed(3)
    scores = F.normalize(torch.randn(8, 5, generator=g), dim=1)
    before = scores.clone()
    torch.testing.assert_close(sinkhorn_knopp(scores + 7.0, 0.05, 3), sinkhorn_knopp(scores, 0.05, 3))
    assert torch.equal(scores, before)  # the input is left alone unless the caller allows overwriting it
    torch.testing.assert_close(sinkhorn_knopp(scores.clone(), 0.05, 3, overwrite=True), sinkhorn_knopp(scores, 0.05, 3))
    # the two domains are the same iterations
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3, log_domain=True),
                               sinkhorn_knopp(scores, 0.05, 3, log_domain=False))
    # eps = 0.002: exp(1 / eps) overflows float32 (the official code's NaN) and, even shifted,
    # exp(-range / eps) underflows whole samples to 0 (NaN codes in the linear domain); the scores
    # span > 50 eps, so the log domain runs, and matches the definition computed in double precision
    expected = torch.tensor(sinkhorn_by_definition(scores.double(), 0.002, 3), dtype=torch.float32)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.002, 3), expected, atol=1e-5, rtol=1e-4)
    assert torch.isnan(sinkhorn_knopp(scores, 0.002, 3, log_domain=False)).any()  # why the switch exists


# ---------------------------------------------------------------- swapped prediction (eq. 1-2)

def test_swav_loss_worked_example():
    tau = 0.5
    ln2, ln3 = math.log(2), math.log(3)
    # scores / tau: crop 1 -> (0, ln 3), softmax (1/4, 3/4); crop 2 -> (0, 0), softmax (1/2, 1/2)
    s1, s2 = torch.tensor([[0.0, tau * ln3]]), torch.tensor([[0.0, 0.0]])
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])
    # q1 predicted from crop 2: -log(1/2) = ln 2
    # q2 predicted from crop 1: -(1/4 log 1/4 + 3/4 log 3/4) = 2 ln 2 - 3/4 ln 3
    # mean over the two coded crops: (3 ln 2 - 3/4 ln 3) / 2
    assert swav_loss([q1, q2], [s1, s2], tau).item() == pytest.approx((3 * ln2 - 0.75 * ln3) / 2, rel=1e-6)
    # + a small crop 3 with softmax (3/4, 1/4): each code is predicted from the 2 other crops, mean of the two
    # q1: (ln 2 + -log 3/4) / 2 = (3 ln 2 - ln 3) / 2
    # q2: (2 ln 2 - 3/4 ln 3  +  -(1/4 log 3/4 + 3/4 log 1/4) = 2 ln 2 - 1/4 ln 3) / 2 = 2 ln 2 - 1/2 ln 3
    # total: ((3 ln 2 - ln 3) / 2 + 2 ln 2 - 1/2 ln 3) / 2 = 7/4 ln 2 - 1/2 ln 3
    s3 = torch.tensor([[tau * ln3, 0.0]])
    assert swav_loss([q1, q2], [s1, s2, s3], tau).item() == pytest.approx(1.75 * ln2 - 0.5 * ln3, rel=1e-6)


def swav_loss_by_definition(codes, scores, tau) -> float:
    """Sec. 3.2: 1/2 sum_i 1/(V+1) sum_{v != i} mean_b -sum_k q_i[b,k] log p_v[b,k]."""
    total = 0.0
    for i, q in enumerate(codes):
        sub = []
        for v, s in enumerate(scores):
            if v == i:
                continue
            per_sample = []
            for qb, sb in zip(q.tolist(), s.tolist()):
                log_norm = math.log(sum(math.exp(x / tau) for x in sb))
                per_sample.append(-sum(qk * (sk / tau - log_norm) for qk, sk in zip(qb, sb)))
            sub.append(sum(per_sample) / len(per_sample))
        total += sum(sub) / len(sub)
    return total / len(codes)


def test_swav_loss_matches_definition_on_random_tensors():
    g = torch.Generator().manual_seed(4)
    scores = [torch.rand(5, 7, generator=g) * 2 - 1 for _ in range(5)]  # 2 global + 3 small crops
    codes = [torch.softmax(torch.randn(5, 7, generator=g), dim=1) for _ in range(2)]
    assert swav_loss(codes, scores, 0.1).item() == pytest.approx(swav_loss_by_definition(codes, scores, 0.1), rel=1e-5)


def test_swav_loss_has_no_gradient_through_the_codes():
    scores = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(torch.randn(3, 4), dim=1).requires_grad_() for _ in range(2)]
    swav_loss(codes, scores, 0.1).backward()
    assert all(c.grad is None for c in codes) and all(s.grad is not None for s in scores)


# ---------------------------------------------------------------- config

def test_config_refuses_more_prototypes_than_samples_for_the_codes():
    with pytest.raises(ConfigError, match=r"swav_prototypes=3000 > swav_queue_size \+ batch_size = 0 \+ 256.*"
                                          r"swav_queue_size >= 2816"):
        RunConfig(method="swav", scale="gpu", swav_queue_size=0)
    with pytest.raises(ConfigError, match=r"swav_prototypes=300 > swav_queue_size \+ batch_size = 0 \+ 256"):
        RunConfig(method="swav", scale="cpu", swav_prototypes=300)  # the cpu scale's queue (none) checked too
    with pytest.raises(ConfigError, match="equal-partition"):
        RunConfig(method="swav", swav_prototypes=600, swav_queue_size=256, batch_size=256)
    RunConfig(method="swav", swav_prototypes=512, swav_queue_size=256, batch_size=256)  # 512 <= 256 + 256


def test_config_refuses_a_queue_that_is_not_a_multiple_of_the_batch():
    with pytest.raises(ConfigError, match="swav_queue_size=1000 must be a multiple of batch_size=256.*use "
                                          "swav_queue_size=1024"):
        RunConfig(method="swav", swav_queue_size=1000, swav_prototypes=100)
    with pytest.raises(ConfigError, match="swav_sinkhorn_epsilon=0.0: needs a number > 0"):
        RunConfig(method="swav", swav_sinkhorn_epsilon=0.0)
    with pytest.raises(ConfigError, match="swav_sinkhorn_iterations=0: needs an integer >= 1"):
        RunConfig(method="swav", swav_sinkhorn_iterations=0)


def test_resolved_defaults_are_the_papers_at_gpu_scale_and_the_measured_ones_at_28_px():
    cfg = RunConfig(method="swav", scale="gpu")
    assert (cfg.swav_prototypes, cfg.temperature, cfg.local_crops, cfg.crop_min_scale, cfg.local_crop_max_scale,
            cfg.swav_sinkhorn_epsilon, cfg.swav_queue_size) == (3000, 0.1, 6, 0.14, 0.14, 0.05, 3840)
    assert cfg.swav_queue_size % cfg.batch_size == 0  # the default queue (3840) fits the default batch (256)
    for scale in ("smoke", "cpu"):
        cfg = RunConfig(method="swav", scale=scale)
        assert (cfg.swav_prototypes, cfg.swav_sinkhorn_epsilon, cfg.swav_queue_size, cfg.local_crops, cfg.temperature) == \
            (256, 0.02, 0, 0, 0.1)
    # a value given explicitly wins over the scale's
    assert RunConfig(method="swav", scale="cpu", swav_sinkhorn_epsilon=0.05).swav_sinkhorn_epsilon == 0.05


# ---------------------------------------------------------------- the method: queue and prototypes

def test_forward_multi_crop_backward_and_logs():
    swav = build()
    out = swav(crops(local=3))
    out.loss.backward()
    assert out.embedding.shape == (B, 8) and torch.isfinite(out.loss)
    assert swav.prototypes.weight.grad is not None  # not frozen (swav_freeze_prototypes_steps=0)
    assert 0 <= out.logs["code_entropy"] <= math.log(6) + 1e-6 and 0 < out.logs["code_usage"] <= 1
    # the loss is the pure function of the method's own z and codes (no queue yet: batch rows only)
    with torch.no_grad():
        z = swav.embed(crops(local=3))
        scores = (z @ swav.prototypes.weight.T).split(B)
        codes = [sinkhorn_knopp(scores[i], 0.05, 3) for i in range(2)]
        torch.testing.assert_close(out.loss.detach(), swav_loss(codes, scores, 0.1))


def test_queue_is_fifo_per_crop_wraps_around_and_feeds_the_codes():
    swav = build(swav_queue_size=2 * B)
    steps = [crops(seed=s) for s in range(3)]
    z = []
    for s, views in enumerate(steps):
        queue_before, filled_before = swav.queue.rows.clone(), int(swav.queue.filled)
        out = swav(views)
        with torch.no_grad():
            z.append(swav.embed(views)[:2 * B].split(B))  # z of the 2 global crops
            # codes over [the queue's filled rows; the batch], only the batch's rows kept
            scores = (swav.embed(views) @ swav.prototypes.weight.T).split(B)
            codes = [sinkhorn_knopp(torch.cat([queue_before[i, :filled_before] @ swav.prototypes.weight.T, scores[i]]),
                                    0.05, 3)[-B:] for i in range(2)]
        torch.testing.assert_close(out.loss.detach(), swav_loss(codes, scores, 0.1))
        if s == 1:  # the queue changed the codes: without it the loss differs
            batch_only = [sinkhorn_knopp(scores[i], 0.05, 3) for i in range(2)]
            assert abs(swav_loss(batch_only, scores, 0.1).item() - out.loss.item()) > 1e-4
    # step 0 -> rows 0..3, step 1 -> rows 4..7, step 2 overwrites the oldest rows 0..3
    for crop in range(2):
        torch.testing.assert_close(swav.queue.rows[crop, :B], z[2][crop])
        torch.testing.assert_close(swav.queue.rows[crop, B:], z[1][crop])
    assert int(swav.queue.ptr) == B and int(swav.queue.filled) == 2 * B


def test_queue_starts_at_its_epoch_and_size_zero_disables_it():
    swav = build(swav_queue_start_epoch=1)
    swav.before_epoch(0, 10, None)
    swav(crops())
    assert int(swav.queue.filled) == 0 and not swav.queue.rows.any()
    swav.before_epoch(1, 10, None)
    swav(crops())
    assert int(swav.queue.filled) == B
    swav.eval()  # no enqueue outside training
    swav(crops())
    assert int(swav.queue.filled) == B
    none = build(swav_queue_size=0, swav_prototypes=4)
    assert torch.isfinite(none(crops()).loss) and none.queue.rows.shape == (2, 0, 8)


def test_prototypes_frozen_for_the_first_steps_then_trained_and_normalised():
    from lab.train import optimisation_step

    swav = build(swav_freeze_prototypes_steps=2)
    torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(6))
    optimizer = torch.optim.SGD(swav.parameters(), lr=0.5)
    start = swav.prototypes.weight.detach().clone()
    backbone_start = swav.backbone.features[0].weight.detach().clone()
    for step in range(2):
        optimisation_step(swav, optimizer, crops(seed=step), None, step, 4)
        assert swav.prototypes.weight.grad is None
        torch.testing.assert_close(swav.prototypes.weight, start, atol=1e-6, rtol=0)  # renormalised only
    assert not torch.equal(swav.backbone.features[0].weight, backbone_start)  # only the prototypes wait
    optimisation_step(swav, optimizer, crops(seed=2), None, 2, 4)
    assert swav.prototypes.weight.grad is not None
    assert (swav.prototypes.weight - start).abs().max() > 1e-4
    # the step counter travels in the state dict: a resumed method is past the freeze too
    assert int(swav.state_dict()["steps_done"]) == 3
    resumed = build(swav_freeze_prototypes_steps=2)
    resumed.load_state_dict(swav.state_dict())
    resumed(crops()).loss.backward()
    assert resumed.prototypes.weight.grad is not None
    # the next training forward puts the trained prototypes back on the unit sphere
    swav(crops())
    torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(6))


def test_a_method_restored_from_its_state_dict_continues_exactly():
    # queue, its pointer and fill, the step counter (frozen prototypes) and the prototypes travel in
    # the state dict; the epoch comes back through before_epoch, as the loop calls it on resume
    def step(method, optimizer, seed):
        out = method(crops(seed=seed))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        method.after_step(seed, 10)
        return out.loss.item()

    knobs = dict(swav_freeze_prototypes_steps=2, swav_queue_start_epoch=1)
    original = build(**knobs)
    opt = torch.optim.SGD(original.parameters(), lr=0.1)
    original.before_epoch(1, 10, None)
    for seed in range(2):
        step(original, opt, seed)
    resumed = build(**knobs)
    resumed.load_state_dict(original.state_dict())
    resumed_opt = torch.optim.SGD(resumed.parameters(), lr=0.1)
    resumed_opt.load_state_dict(opt.state_dict())
    resumed.before_epoch(1, 10, None)
    assert step(resumed, resumed_opt, 2) == step(original, opt, 2)
    for name, value in original.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


# ---------------------------------------------------------------- 2 gloo workers x B/2 = 1 worker x B

GLOBAL = 8


def _run(world: int, worker: int) -> dict:
    """Sinkhorn on split rows, then 3 optimiser steps of SwAV (queue in use from step 2, prototypes
    frozen at step 1) on this worker's slice of a global batch of 8."""
    from lab import distributed as dist_utils

    g = torch.Generator().manual_seed(11)
    scores = torch.randn(GLOBAL, 5, generator=g)
    local = slice(worker * GLOBAL // world, (worker + 1) * GLOBAL // world)
    out = {"codes": sinkhorn_knopp(scores[local], 0.1, 3, distributed=True),
           "log_codes": sinkhorn_knopp(scores[local], 0.1, 3, distributed=True, log_domain=True)}
    torch.manual_seed(0)
    swav = SwAV(config(batch_size=GLOBAL, swav_queue_size=2 * GLOBAL, swav_prototypes=12, swav_freeze_prototypes_steps=1),
                build_backbone("convnet_tiny", 1))
    if world > 1:  # what lab.train.prepare_for_workers does (not imported: it would double the spawn time)
        swav = dist_utils.convert_to_global_batchnorm(swav)
        dist_utils.broadcast_state(swav)
    optimizer = torch.optim.SGD(swav.parameters(), lr=0.1)
    losses = []
    for step in range(3):  # lab.train.optimisation_step
        step_out = swav([v[local] for v in crops(GLOBAL, seed=20 + step, local=2)])
        optimizer.zero_grad(set_to_none=True)
        step_out.loss.backward()
        if world > 1:
            dist_utils.average_gradients(swav)
        optimizer.step()
        swav.after_step(step, 3)
        losses.append(step_out.loss.detach())
    out["losses"] = torch.stack(losses)
    out["grads"] = {n: p.grad.clone() for n, p in swav.named_parameters() if p.grad is not None}
    out["state"] = {n: t.clone() for n, t in swav.state_dict().items()}
    return out


def test_two_gloo_workers_equal_one_worker(tmp_path):
    workers = run_on_gloo_workers(_run, tmp_path)
    single = _run(1, 0)
    # Sinkhorn over the global batch: each worker's rows are the 1-worker codes' rows
    for kind in ("codes", "log_codes"):
        torch.testing.assert_close(torch.cat([w[kind] for w in workers]), single[kind])
    # the loop averages the workers' losses and gradients
    torch.testing.assert_close((workers[0]["losses"] + workers[1]["losses"]) / 2, single["losses"],
                               atol=1e-5, rtol=1e-5)
    assert "prototypes.weight" in single["grads"]  # trained after the frozen first step
    for w in workers:
        assert w["grads"].keys() == single["grads"].keys()
        for name, value in single["grads"].items():
            torch.testing.assert_close(w["grads"][name], value, atol=1e-5, rtol=1e-4, msg=name)
        # after 3 steps: parameters, BN statistics, the queue (global batch, rank order), counters
        for name, value in single["state"].items():
            if value.is_floating_point():
                torch.testing.assert_close(w["state"][name], value, atol=1e-5, rtol=1e-4, msg=name)
            else:
                assert torch.equal(w["state"][name], value), name
    assert int(single["state"]["queue.filled"]) == 2 * GLOBAL and single["state"]["queue.rows"].abs().sum() > 0
