"""DINO (Caron et al., ICCV 2021) against its equations, by hand and by direct re-implementation.

Eq. 1 (temperature softmax), eq. 3 (multi-crop cross-entropy over the pairs s != t), eq. 4 (the
centre's EMA over the global batch), eq. 5 (H = h + KL, the collapse statistics of Fig. 7), the
teacher-temperature warm-up, the EMA teacher, 2 gloo workers x B/2 = 1 worker x B, and the two
collapse ablations of Sec. 5.3 (no centring: entropy -> 0; no sharpening: entropy -> log K).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lab.backbones import build_backbone
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.momentum import cosine_momentum
from lab.methods.dino import (DINO, DINOHead, dino_loss, entropy, mean_distribution_entropy, teacher_distribution,
                              teacher_entropy, teacher_temperature_at, updated_center)
from tests.gloo import run_on_gloo_workers


def config(**knobs) -> RunConfig:
    """A DINO config with the paper's defaults and small widths."""
    fields = dict(scale="smoke", head_hidden_dim=32, head_out_dim=16, dino_out_dim=64, epochs=1)
    return RunConfig(method="dino", **{**fields, **knobs})


def build(**knobs) -> DINO:
    torch.manual_seed(0)
    return DINO(config(**knobs), build_backbone("convnet_tiny", 1))


def crops(n: int = 8, local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)] + \
           [torch.randn(n, 1, 12, 12, generator=g) for _ in range(local)]


# --- the loss by hand ----------------------------------------------------------------------------

# K = 2, one sample, 2 global crops and 1 local crop; tau_t = 0.5, tau_s = 1.
# Student logits: crop 1 (ln 3, 0) -> P_s = (3/4, 1/4); crop 2 (0, ln 3) -> (1/4, 3/4); local (0, 0) -> (1/2, 1/2).
# Teacher logits: crop 1 (1, 0), crop 2 (0, 0).
STUDENT = [torch.tensor([[math.log(3), 0.0]]), torch.tensor([[0.0, math.log(3)]]), torch.tensor([[0.0, 0.0]])]
TEACHER = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # rows: global crop 1, global crop 2
def SIG(x: float) -> float:  # softmax over 2 logits (a, b) = (sig(a - b), sig(b - a))
    return 1 / (1 + math.exp(-x))


def test_loss_worked_example_with_centring():
    # c = (0.5, 0): crop 1 -> (0.5, 0) / 0.5 = (1, 0) -> P_t1 = (sig(1), sig(-1));
    #               crop 2 -> (-0.5, 0) / 0.5 = (-1, 0) -> P_t2 = (sig(-1), sig(1)).
    # Pairs (t, s != t): (1, 2), (1, local), (2, 1), (2, local).
    #   H(P_t1, P_s2) = -sig(1) ln(1/4) - sig(-1) ln(3/4) = ln 4 - sig(-1) ln 3
    #   H(P_t2, P_s1) = -sig(-1) ln(3/4) - sig(1) ln(1/4) = ln 4 - sig(-1) ln 3   (the same)
    #   H(P_t, local) = ln 2 for both teachers
    # L = (2 (ln 4 - sig(-1) ln 3) + 2 ln 2) / 4 = (3 ln 2 - sig(-1) ln 3) / 2 = 0.891990...
    center = torch.tensor([[0.5, 0.0]])
    probs = list(teacher_distribution(TEACHER, center, 0.5).split(1))
    torch.testing.assert_close(probs[0], torch.tensor([[SIG(1), SIG(-1)]]))
    torch.testing.assert_close(probs[1], torch.tensor([[SIG(-1), SIG(1)]]))
    expected = (3 * math.log(2) - SIG(-1) * math.log(3)) / 2
    assert expected == pytest.approx(0.891990, abs=1e-6)
    assert dino_loss(STUDENT, probs, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # the student temperature divides the student's logits: halved logits at tau_s = 0.5 give the same loss
    assert dino_loss([s / 2 for s in STUDENT], probs, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # ... and the same logits at tau_s = 0.5 do not
    assert dino_loss(STUDENT, probs, 0.5).item() != pytest.approx(expected, rel=1e-3)


def test_loss_worked_example_without_centring():
    # No centre, tau_t = 0.5: crop 1 -> (2, 0) -> (sig(2), sig(-2)); crop 2 -> (0, 0) -> (1/2, 1/2).
    #   H(P_t1, P_s2) = ln 4 - sig(-2) ln 3;  H(P_t1, local) = ln 2
    #   H(P_t2, P_s1) = -(1/2)(ln 3/4 + ln 1/4) = 2 ln 2 - (ln 3)/2;  H(P_t2, local) = ln 2
    # L = (6 ln 2 - (sig(-2) + 1/2) ln 3) / 4 = 0.869655...
    probs = list(teacher_distribution(TEACHER, None, 0.5).split(1))
    expected = (6 * math.log(2) - (SIG(-2) + 0.5) * math.log(3)) / 4
    assert expected == pytest.approx(0.869655, abs=1e-6)
    assert dino_loss(STUDENT, probs, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # the teacher temperature: at tau_t = 1 crop 1 gives (sig(1), sig(-1)) and the loss
    # (ln 4 - sig(-1) ln 3 + ln 2 + 2 ln 2 - (ln 3)/2 + ln 2) / 4
    probs_1 = list(teacher_distribution(TEACHER, None, 1.0).split(1))
    expected_1 = (6 * math.log(2) - (SIG(-1) + 0.5) * math.log(3)) / 4
    assert dino_loss(STUDENT, probs_1, 1.0).item() == pytest.approx(expected_1, rel=1e-6)


def test_loss_pairs_skip_only_the_teachers_own_crop_and_stop_the_teacher_gradient():
    # Two global crops only (no local): pairs (1, 2) and (2, 1); the crop a teacher sees is never its own target.
    s = [torch.tensor([[0.0, 0.0]], requires_grad=True), torch.tensor([[math.log(3), 0.0]], requires_grad=True)]
    t = [torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([[0.0, 1.0]], requires_grad=True)]
    # H(t1 = (1, 0), s2 = (3/4, 1/4)) = ln 4/3 ; H(t2 = (0, 1), s1 = (1/2, 1/2)) = ln 2 ; mean of the two
    loss = dino_loss(s, t, 1.0)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    assert t[0].grad is None and t[1].grad is None
    assert s[0].grad.abs().sum() > 0 and s[1].grad.abs().sum() > 0


def test_entropy_and_kl_by_hand():
    # h(uniform over 4) = ln 4; h(one-hot) = 0 (0 log 0 = 0); h((1/2, 1/4, 1/4, 0)) = 1.5 ln 2
    p = torch.tensor([[0.25] * 4, [1.0, 0, 0, 0], [0.5, 0.25, 0.25, 0.0]])
    torch.testing.assert_close(entropy(p), torch.tensor([math.log(4), 0.0, 1.5 * math.log(2)]))
    # eq. 5 on the worked example with centring: h(P_t1) = h(P_t2) = h(sig(1), sig(-1)); KL = L - h
    probs = list(teacher_distribution(TEACHER, torch.tensor([[0.5, 0.0]]), 0.5).split(1))
    h = -(SIG(1) * math.log(SIG(1)) + SIG(-1) * math.log(SIG(-1)))
    assert teacher_entropy(probs).item() == pytest.approx(h, rel=1e-6)
    # KL directly: mean over the 4 pairs of sum_k p_k (ln p_k - ln q_k)
    q = [[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    pt = [[SIG(1), SIG(-1)], [SIG(-1), SIG(1)]]
    kl = sum(sum(a * math.log(a / b) for a, b in zip(pt[t], q[s])) for t, s in pairs) / 4
    loss = dino_loss(STUDENT, probs, 1.0).item()
    assert loss - teacher_entropy(probs).item() == pytest.approx(kl, rel=1e-5)


def test_mean_distribution_entropy_and_the_collapse_reasons_by_hand():
    # one-hot outputs on dims 0 and 1 of K = 4 (two crops of one image each): mean (1/2, 1/2, 0, 0), h = ln 2;
    # every output on dim 0: h = 0; uniform outputs: ln 4
    one_hot = torch.eye(4)
    assert mean_distribution_entropy([one_hot[:1], one_hot[1:2]]).item() == pytest.approx(math.log(2))
    assert mean_distribution_entropy([one_hot[:1], one_hot[:1]]).item() == pytest.approx(0.0)
    assert mean_distribution_entropy([torch.full((3, 4), 0.25)]).item() == pytest.approx(math.log(4))
    method = build()
    healthy = {"teacher_entropy_ratio": 0.44, "teacher_mean_entropy_ratio": 0.9}  # sharp, spread over dimensions
    assert method.collapse_reason(healthy) is None
    assert "uniform" in method.collapse_reason({**healthy, "teacher_entropy_ratio": 0.99})
    assert "one dimension" in method.collapse_reason({"teacher_entropy_ratio": 0.03, "teacher_mean_entropy_ratio": 0.05})
    # a sharp teacher whose images use different dimensions is not collapsed, however low h(P_t) is
    assert method.collapse_reason({"teacher_entropy_ratio": 0.01, "teacher_mean_entropy_ratio": 0.8}) is None
    assert method.collapse_reason({}) is None  # runs logged before the signal existed


# --- the loss against a direct implementation of eq. 3 ------------------------------------------

def dino_loss_by_definition(student, teacher, center, tau_s, tau_t):
    """Eq. 1 and 3 as loops over crops, samples and dimensions, in float64 Python."""
    def softmax(row, tau):
        e = [math.exp(v / tau) for v in row]
        return [v / sum(e) for v in e]

    total, pairs = 0.0, 0
    for t, t_crop in enumerate(teacher):
        for s, s_crop in enumerate(student):
            if s == t:
                continue
            batch = 0.0
            for t_row, s_row in zip(t_crop.tolist(), s_crop.tolist()):
                p_t = softmax([a - c for a, c in zip(t_row, center)], tau_t)
                p_s = softmax(s_row, tau_s)
                batch += -sum(a * math.log(b) for a, b in zip(p_t, p_s))
            total += batch / len(t_crop)
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("n_local", [0, 3])
def test_loss_matches_the_papers_equation_on_random_tensors(n_local):
    g = torch.Generator().manual_seed(1)
    n, k = 5, 7
    student = [torch.randn(n, k, generator=g) for _ in range(2 + n_local)]
    teacher = [torch.randn(n, k, generator=g) for _ in range(2)]
    center = torch.randn(1, k, generator=g)
    for tau_s, tau_t in ((0.1, 0.04), (0.1, 0.1), (0.5, 0.07)):
        probs = list(teacher_distribution(torch.cat(teacher), center, tau_t).split(n))
        expected = dino_loss_by_definition(student, teacher, center[0].tolist(), tau_s, tau_t)
        assert dino_loss(student, probs, tau_s).item() == pytest.approx(expected, rel=1e-5)


# --- the centre ----------------------------------------------------------------------------------

def test_center_update_by_hand():
    # rows (3, 0), (1, 4), (2, 2), (0, 2): mean (1.5, 2); c = (1, 2), m = 0.9:
    # c' = 0.9 (1, 2) + 0.1 (1.5, 2) = (0.9 + 0.15, 1.8 + 0.2) = (1.05, 2.0)
    center = torch.tensor([[1.0, 2.0]])
    logits = torch.tensor([[3.0, 0.0], [1.0, 4.0], [2.0, 2.0], [0.0, 2.0]])
    torch.testing.assert_close(updated_center(center, logits, 0.9), torch.tensor([[1.05, 2.0]]))
    # m = 0: the batch mean itself; m = 1: unchanged
    torch.testing.assert_close(updated_center(center, logits, 0.0), torch.tensor([[1.5, 2.0]]))
    torch.testing.assert_close(updated_center(center, logits, 1.0), center)


def test_method_updates_the_center_with_the_teachers_global_crop_outputs():
    method = build(dino_center_momentum=0.8)
    method.train()
    with torch.no_grad():
        method.center.normal_()
    before = method.center.clone()
    views = crops(n=6, local=2)
    with torch.no_grad():
        # teacher in train mode: BN batch statistics over both global crops, as in forward
        teacher_out = method.teacher["head"](method.teacher["backbone"](torch.cat(views[:2])))
    method(views)
    # c <- 0.8 c + 0.2 mean over the 2 x 6 rows of the raw (uncentred, unsharpened) teacher outputs
    torch.testing.assert_close(method.center, 0.8 * before + 0.2 * teacher_out.mean(0, keepdim=True))
    # evaluation mode and dino_centering=False leave it alone
    method.eval()
    after = method.center.clone()
    method(views)
    assert torch.equal(method.center, after)
    no_center = build(dino_centering=False)
    no_center.train()
    no_center(views)
    assert torch.equal(no_center.center, torch.zeros_like(no_center.center))


def test_local_crops_reach_the_student_only():
    # eq. 3: the teacher sees the global crops only, the student every crop. Other local crops change the
    # loss (through the student) but neither the teacher's output nor, hence, the centre's update.
    views = crops(n=6, local=2, seed=0)
    other = views[:2] + crops(n=6, local=2, seed=1)[2:]
    results = []
    for v in (views, other):
        method = build()
        method.train()
        out = method(v)
        results.append((out.loss.item(), method.center.clone()))
    assert results[0][0] != pytest.approx(results[1][0], rel=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    # 2 global + 2 local crops: 2 x (2 + 2) - 2 = 6 pairs; the loss is their mean (checked against
    # dino_loss on the method's own logits, the student's crops split per crop in view order)
    method = build()
    method.train()
    with torch.no_grad():
        student = [method.head(method.backbone(torch.cat(views[:2]))).split(6),
                   method.head(method.backbone(torch.cat(views[2:]))).split(6)]
        teacher = method.teacher["head"](method.teacher["backbone"](torch.cat(views[:2])))
    method = build()
    method.train()
    expected = dino_loss(list(student[0]) + list(student[1]),
                         list(teacher_distribution(teacher, method.center, 0.04).split(6)), 0.1)
    assert method(views).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_centring_switch_changes_the_target_and_sharpening_switch_uses_the_student_temperature():
    method = build()
    method.train()
    with torch.no_grad():
        method.center.copy_(torch.linspace(-1, 1, 64))
    views = crops()
    assert method.teacher_temperature() == 0.04
    assert build(dino_sharpening=False).teacher_temperature() == 0.1
    assert build(dino_sharpening=False, temperature=0.2).teacher_temperature() == 0.2
    losses = {}
    for name, knobs in (("default", {}), ("no_centre", dict(dino_centering=False)), ("no_sharp", dict(dino_sharpening=False))):
        m = build(**knobs)
        m.train()
        m.center.copy_(method.center)
        out = m(views)
        losses[name] = out.loss.item()
        assert out.logs["teacher_temperature"] == (0.1 if name == "no_sharp" else 0.04)
    assert len({round(v, 6) for v in losses.values()}) == 3


# --- the teacher temperature's warm-up -----------------------------------------------------------

def test_teacher_temperature_warmup_schedule():
    # linear from 0.04 at step 0 to 0.07 at step 10, then constant
    assert teacher_temperature_at(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature_at(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature_at(10, 10, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature_at(25, 10, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature_at(3, 0, 0.04, 0.07) == pytest.approx(0.07)  # no warm-up
    # the method: 2 warm-up epochs of 10 steps = 20 steps
    method = build(dino_teacher_temperature_start=0.04, dino_teacher_temperature=0.07, dino_teacher_warmup_epochs=2)
    assert method.teacher_temperature() == pytest.approx(0.04)  # step 0, before any epoch is known
    method.before_epoch(1, 10)  # epoch 1 starts at step 10: 0.04 + 0.03 x 10/20
    assert method.teacher_temperature() == pytest.approx(0.055)
    for step in range(10, 15):
        method.after_step(step, 100)
    assert method.teacher_temperature() == pytest.approx(0.04 + 0.03 * 15 / 20)  # step 15
    method.before_epoch(3, 10)  # a resumed run: recomputed from the epoch alone
    assert method.teacher_temperature() == pytest.approx(0.07)
    # steps per epoch learnt from after_step (total_steps / epochs) when before_epoch was not called
    other = build(dino_teacher_temperature_start=0.04, dino_teacher_temperature=0.07, dino_teacher_warmup_epochs=1,
                  epochs=4)
    other.after_step(0, 40)  # 10 steps per epoch; next step 1 -> 0.04 + 0.03 / 10
    assert other.teacher_temperature() == pytest.approx(0.043)
    # fractional warm-up epochs: 0.5 epoch of 10 steps = 5 steps
    half = build(dino_teacher_temperature_start=0.02, dino_teacher_temperature=0.04, dino_teacher_warmup_epochs=0.5)
    half.before_epoch(0, 10)
    half.after_step(1, 100)
    assert half.teacher_temperature() == pytest.approx(0.02 + 0.02 * 2 / 5)


# --- the head and the EMA teacher ----------------------------------------------------------------

def test_head_is_a_gelu_mlp_to_an_l2_normalised_bottleneck_and_unit_norm_prototypes():
    torch.manual_seed(0)
    head = DINOHead(10, 32, 8, 50)  # the paper's ViT head: no BatchNorm
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 32), (32, 32), (32, 8)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in head.modules())
    # the convnet head (official --use_bn_in_head): Linear-BN-GELU twice, then the bottleneck Linear
    kinds = [type(m).__name__ for m in DINOHead(10, 32, 8, 50, batch_norm=True).mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    # the method: BN in the head as in the backbone (every lab backbone is a BN convnet), or as dino_head_bn says
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in build().head.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in build(dino_head_bn=False).head.modules())
    x = torch.randn(4, 10)
    z = head.bottleneck(x)
    # logits = cosines between the bottleneck and each prototype: in [-1, 1], and scale-invariant in v
    expected = F.normalize(z, dim=1) @ F.normalize(head.prototypes, dim=1).T
    torch.testing.assert_close(head(x), expected)
    assert head(x).abs().max() <= 1 + 1e-6
    with torch.no_grad():
        head.prototypes.mul_(7.0)
    torch.testing.assert_close(head(x), expected)


def test_teacher_is_a_frozen_copy_gets_no_gradient_and_moves_by_ema():
    method = build(ema_momentum=0.9)
    teacher = list(method.teacher.parameters())
    student = list(method.backbone.parameters()) + list(method.head.parameters())
    assert teacher and not any(p.requires_grad for p in teacher)
    for s, t in zip(student, teacher):
        torch.testing.assert_close(s, t)
    keys = method.state_dict().keys()
    assert "center" in keys and any(k.startswith("teacher.copies.head.") for k in keys)
    assert any(k.startswith("teacher.copies.backbone.") for k in keys)
    method.train()
    out = method(crops())
    out.loss.backward()
    assert all(p.grad is None for p in teacher)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student)
    assert out.embedding.shape == (8, 16) and not out.embedding.requires_grad
    assert set(out.logs) == {"teacher_entropy", "teacher_entropy_ratio", "teacher_mean_entropy_ratio",
                             "teacher_student_kl", "teacher_temperature"}
    # an "optimiser step", then the EMA with the cosine-scheduled momentum (BYOL's schedule)
    with torch.no_grad():
        for p in student:
            p.add_(torch.randn_like(p))
    s0 = [p.detach().clone() for p in student]
    t0 = [p.detach().clone() for p in teacher]
    method.after_step(3, 10)
    lam = 1 - 0.1 * (math.cos(0.3 * math.pi) + 1) / 2
    assert cosine_momentum(3, 10, 0.9) == pytest.approx(lam)
    for s, a, b in zip(s0, t0, method.teacher.parameters()):
        torch.testing.assert_close(b, lam * a + (1 - lam) * s, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(s0, student))  # the student is untouched by the EMA


def test_validate_and_resolved_defaults():
    for knobs in (dict(dino_teacher_temperature=0.0), dict(dino_teacher_temperature_start=-1.0),
                  dict(dino_teacher_warmup_epochs=-1), dict(dino_center_momentum=1.5),
                  dict(ema_momentum=-0.1), dict(dino_out_dim=1)):
        with pytest.raises(ConfigError):
            RunConfig(method="dino", scale="smoke", **knobs)
    cfg = RunConfig(method="dino", scale="cpu")
    assert (cfg.temperature, cfg.local_crops, cfg.crop_min_scale, cfg.local_crop_max_scale) == (0.1, 0, 0.4, 0.4)
    assert (cfg.local_crop_size, cfg.local_crop_min_scale, cfg.dino_out_dim) == (12, 0.05, 4096)


# --- 2 workers x B/2 = 1 worker x B (torch.distributed, gloo, 2 processes) ------------------------

GLOBAL_BATCH, STEPS = 8, 2


def _run_steps() -> dict:
    """Two steps of the loop's optimisation step (forward, backward, gradient mean over workers, SGD,
    the EMA hook) on a fixed global batch of which this worker takes its slice. The method is set up
    as lab.train.prepare_for_workers does (GlobalBatchNorm, rank 0's state); lab.train itself is not
    imported, to keep the spawned processes light (tests/test_distributed.py runs the loop's own)."""
    from lab.distributed import (average_gradients, broadcast_state, convert_to_global_batchnorm, is_distributed,
                                 rank, world_size)

    torch.set_default_dtype(torch.float64)  # float32 would leave ~1e-5 of summation-order noise (sharp softmaxes, BN)
    method = build(dino_out_dim=32, dino_center_momentum=0.5, ema_momentum=0.9)
    if is_distributed():
        method = convert_to_global_batchnorm(method)
        broadcast_state(method)
    method.train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    method.before_epoch(0, STEPS)
    local = slice(rank() * GLOBAL_BATCH // world_size(), (rank() + 1) * GLOBAL_BATCH // world_size())
    losses, logs = [], []
    for step in range(STEPS):
        views = crops(n=GLOBAL_BATCH, local=2, seed=10 + step)
        out = method([v[local] for v in views])
        optimizer.zero_grad()
        out.loss.backward()
        if is_distributed():
            average_gradients(method)
        optimizer.step()
        method.after_step(step, STEPS)
        losses.append(out.loss.item())
        logs.append({k: float(v) for k, v in out.logs.items()})  # 0-d tensors on the device
    torch.set_default_dtype(torch.float32)
    return {"losses": losses, "logs": logs,
            "grads": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
            "state": {n: t.clone() for n, t in method.state_dict().items() if t.is_floating_point()}}


def _worker_steps(world: int, worker: int) -> dict:
    return _run_steps()


def test_two_workers_equal_one_worker(tmp_path):
    """Loss (mean over workers), averaged gradients, centre, teacher and BN statistics after 2 steps
    of 2 workers x 4 samples equal those of 1 worker x 8 (the second step's loss uses the updated centre),
    in float64 to 1e-9 of each tensor's scale."""
    workers = run_on_gloo_workers(_worker_steps, tmp_path)
    single = _run_steps()
    for step in range(STEPS):
        mean = sum(w["losses"][step] for w in workers) / 2
        assert mean == pytest.approx(single["losses"][step], rel=1e-9), step
        for key in ("teacher_entropy", "teacher_student_kl"):
            assert sum(w["logs"][step][key] for w in workers) / 2 == pytest.approx(single["logs"][step][key], rel=1e-9)
    assert single["state"]["center"].abs().sum() > 0 and single["state"]["center"].dtype == torch.float64
    for kind in ("grads", "state"):
        assert single[kind].keys() == workers[0][kind].keys()
        for name, value in single[kind].items():
            for w in workers:  # every worker holds the global-batch gradient and the same state
                error = (w[kind][name] - value).abs().max().item()
                assert error <= 1e-9 * max(1.0, value.abs().max().item()), (kind, name, error)


# --- the collapse ablations of Sec. 5.3 / Fig. 7 -------------------------------------------------

def _teacher_statistics(images: torch.Tensor, steps: int, **knobs) -> tuple[float, float, float]:
    """Train at smoke scale on Fashion-MNIST for `steps` steps; the last step's teacher entropy, KL, log K."""
    from lab.methods import build_method
    from lab.optim import build_optimizer
    from lab.views import TrainViews, view_config_for

    # A fast teacher (constant EMA momentum 0.95: the cosine schedule is given a far horizon) and
    # 2 local crops, so that 100 steps show where each variant is going.
    cfg = RunConfig(method="dino", scale="smoke", batch_size=32, local_crops=2, ema_momentum=0.95, **knobs)
    views = TrainViews(cfg.dataset, images.shape[-1], view_config_for(cfg))
    method = build_method(cfg, images.shape[1])
    optimizer = build_optimizer(cfg, method)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr
    method.train()
    method.before_epoch(0, steps)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for step in range(steps):
        batch = images[torch.randint(0, len(images), (cfg.batch_size,), generator=g)]
        out = method(views(batch, method.n_views))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.after_step(step, 10**9)
    return out.logs["teacher_entropy"], out.logs["teacher_student_kl"], math.log(cfg.dino_out_dim)


@pytest.mark.slow  # ~15 s alone, about a minute on the loaded shared 2-core machine: run with -m slow
def test_ablations_collapse_as_in_the_paper():
    """No centring: one dimension dominates, h(P_t) -> 0. No sharpening (tau_t = tau_s): uniform,
    h(P_t) -> log K. Both: the KL between teacher and student -> 0 (a constant output), while the
    default keeps h in between and a KL an order of magnitude larger. (Measured after 100 steps,
    log K = 5.545: default h 2.73 / KL 1.00, no centring 0.000 / 0.014, no sharpening 5.520 / 0.021.)"""
    from lab.splits import load_run_data

    torch.set_num_threads(1)
    images = load_run_data(RunConfig(method="dino", scale="smoke")).train.images
    h_default, kl_default, log_k = _teacher_statistics(images, 100)
    h_no_centre, kl_no_centre, _ = _teacher_statistics(images, 100, dino_centering=False)
    h_no_sharp, kl_no_sharp, _ = _teacher_statistics(images, 100, dino_sharpening=False)
    assert 0.2 * log_k < h_default < 0.8 * log_k
    assert h_no_centre < 0.05 * log_k and h_no_centre < 0.1 * h_default
    assert h_no_sharp > 0.99 * log_k
    assert kl_no_centre < 0.15 * kl_default and kl_no_sharp < 0.15 * kl_default
