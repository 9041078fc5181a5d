"""BYOL, Barlow Twins and VICReg against their papers, on tensors small enough to work out by hand.

Each worked example is chosen so that a wrong reading of a normalisation (sum vs mean,
biased vs unbiased variance, n vs n - 1, /d or not, symmetrised sum vs mean) changes the number.
"""

import math

import pytest
import torch
from torch import nn

from lab.backbones import build_backbone
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.barlow_twins import BarlowTwins, barlow_twins_loss
from lab.methods.byol import BYOL, byol_loss
from lab.methods.momentum import cosine_momentum
from lab.methods.vicreg import VICReg, vicreg_loss
from tests.gloo import run_on_gloo_workers


def tiny_cfg(method: str = "byol", **changes) -> RunConfig:
    """A small config of one of these methods (their own knobs at the papers' defaults)."""
    values = dict(scale="smoke", head="mlp", head_layers=2, head_hidden_dim=32, head_out_dim=16)
    if method == "byol":
        values.update(predictor_hidden_dim=8, ema_momentum=0.996)
    return RunConfig(method=method, **{**values, **changes})


def two_views(seed: int = 0, n: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=g) for _ in range(2)]


# --- BYOL ---------------------------------------------------------------------------------------

def test_byol_worked_example():
    # Eq. 2: per direction 2 - 2 cos(q, z'); symmetrised loss = SUM of both directions (Sec. 3.1).
    # q(view 1) = (1, 0) vs target(view 2) = (3, 3): 2 - 2 / sqrt(2) = 2 - sqrt(2)
    # q(view 2) = (0, 1) vs target(view 1) = (0, -2): 2 - 2 (-1)      = 4
    # total 6 - sqrt(2) (a mean of the two directions would give 3 - sqrt(2) / 2)
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 3.0]])
    p2, z1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, -2.0]])
    assert math.isclose(byol_loss(p1, p2, z1, z2).item(), 6 - math.sqrt(2), rel_tol=1e-6)


def test_byol_identical_orthogonal_opposite_and_batch_mean():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # identical directions: 0 + 0
    assert byol_loss(e1, e1, 5 * e1, 2 * e1).item() == pytest.approx(0.0, abs=1e-7)
    # orthogonal: 2 per direction, 4 for the symmetrised sum
    assert byol_loss(e1, e1, e2, e2).item() == pytest.approx(4.0)
    # opposite: 4 per direction, 8 in all (the maximum)
    assert byol_loss(e1, e1, -e1, -e1).item() == pytest.approx(8.0)
    # batch of 2 samples, one identical (0) and one orthogonal (4): averaged over the batch -> 2
    p = torch.cat([e1, e1])
    z = torch.cat([e1, e2])
    assert byol_loss(p, p, z, z).item() == pytest.approx(2.0)


def test_byol_loss_stops_the_gradient_on_targets():
    p1, p2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    z1, z2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_byol_momentum_schedule():
    # tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2: tau_base at k = 0, 1 at k = K,
    # halfway (k = K/2): 1 - (1 - tau_base) / 2
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(150, 100, 0.996) == pytest.approx(1.0)  # k clamped to [0, K]
    assert cosine_momentum(-5, 100, 0.996) == pytest.approx(0.996)
    assert tiny_cfg().ema_schedule == "cosine"


def test_byol_target_is_a_frozen_registered_copy_and_gets_no_gradient():
    torch.manual_seed(0)
    method = BYOL(tiny_cfg(), build_backbone("convnet_tiny", 1))
    target_params = list(method.target.parameters())
    assert target_params and not any(p.requires_grad for p in target_params)
    # saved in checkpoints
    keys = method.state_dict().keys()
    assert any(k.startswith("target.copies.backbone.") for k in keys) and any(k.startswith("target.copies.projector.") for k in keys)
    # starts as a copy of the online backbone + projector
    for o, t in zip(list(method.backbone.parameters()) + list(method.projector.parameters()), target_params):
        torch.testing.assert_close(o, t)
    # the optimiser only sees the online network (lab.train.build_optimizer filters on requires_grad)
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in target_params}
    out = method(two_views())
    out.loss.backward()
    assert all(p.grad is None for p in target_params)
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert all(p.grad is not None for p in method.backbone.parameters())
    assert method.encoder is method.backbone


def _check_one_ema_step(method: BYOL, step: int, total: int, base: float) -> None:
    online = [p.detach().clone() for p in list(method.backbone.parameters()) + list(method.projector.parameters())]
    before = [p.detach().clone() for p in method.target.parameters()]
    method.after_step(step, total)
    tau = 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
    for o, t0, t1 in zip(online, before, method.target.parameters()):
        torch.testing.assert_close(t1, tau * t0 + (1 - tau) * o, rtol=1e-6, atol=1e-7)
    # the online network is untouched by the EMA
    for o, p in zip(online, list(method.backbone.parameters()) + list(method.projector.parameters())):
        assert torch.equal(o, p)


def test_byol_ema_update_with_the_scheduled_momentum():
    torch.manual_seed(0)
    base = 0.9  # far from 1 so that the step is visible
    method = BYOL(tiny_cfg(ema_momentum=base), build_backbone("convnet_tiny", 1))
    with torch.no_grad():  # an "optimiser step": online moves away from the target
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
    # k = 3 of K = 10: tau = 1 - 0.1 (cos(0.3 pi) + 1) / 2 = 0.92061...
    assert cosine_momentum(3, 10, base) == pytest.approx(1 - 0.1 * (math.cos(0.3 * math.pi) + 1) / 2)
    _check_one_ema_step(method, 3, 10, base)
    # at k = K, tau = 1: the target stops moving
    before = [p.clone() for p in method.target.parameters()]
    method.after_step(10, 10)
    assert all(torch.equal(a, b) for a, b in zip(before, method.target.parameters()))


def test_byol_ema_follows_the_modules_after_global_batchnorm_conversion():
    """prepare_for_workers swaps BatchNorm for GlobalBatchNorm in the method: the EMA must update the new modules."""
    from lab.distributed import GlobalBatchNorm, convert_to_global_batchnorm

    torch.manual_seed(0)
    method = convert_to_global_batchnorm(BYOL(tiny_cfg(ema_momentum=0.5), build_backbone("convnet_tiny", 1)))
    assert any(isinstance(m, GlobalBatchNorm) for m in method.target.modules())
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(1.0)
    _check_one_ema_step(method, 0, 10, 0.5)


def test_byol_defaults_per_scale():
    """The predictor as wide as the projector's hidden layer at every scale (Sec. 3.3); the paper's
    tau_base 0.996 at gpu scale, 0.95 for the ~700-step runs of smoke / cpu (lab.methods.byol)."""
    expected = {"smoke": (64, 0.95), "cpu": (512, 0.95), "gpu": (2048, 0.996)}
    for scale, (width, tau) in expected.items():
        cfg = RunConfig(method="byol", scale=scale)
        assert (cfg.predictor_hidden_dim, cfg.head_hidden_dim, cfg.ema_momentum) == (width, width, tau)
        assert RunConfig(method="dino", scale=scale).ema_momentum == 0.996  # DINO keeps the paper's
    assert RunConfig(method="byol", scale="cpu", ema_momentum=0.99).ema_momentum == 0.99
    with pytest.raises(ConfigError, match="ema_momentum=1.5"):
        RunConfig(method="byol", ema_momentum=1.5)


def test_byol_without_predictor_is_identity():
    method = BYOL(tiny_cfg(predictor=False), build_backbone("convnet_tiny", 1))
    assert isinstance(method.predictor, nn.Identity)
    assert isinstance(BYOL(tiny_cfg(), build_backbone("convnet_tiny", 1)).predictor, nn.Sequential)


# --- Barlow Twins -------------------------------------------------------------------------------

def test_barlow_twins_worked_example():
    # 3 samples, d = 2. Every column below has mean 0 and BIASED variance 2/3 (values {1, 0, -1}),
    # so the standardised entries are x * sqrt(3/2) and C_ij = (1/3)(3/2) sum_b z1_bi z2_bj
    # = (1/2) sum_b z1_bi z2_bj:
    #   z1 columns a = (1, 0, -1), b = (0, 1, -1);  z2 columns c = (1, 0, -1), e = (1, -1, 0)
    #   C_00 = (1 + 0 + 1)/2 = 1      C_01 = (1 + 0 + 0)/2 = 1/2
    #   C_10 = (0 + 0 + 1)/2 = 1/2    C_11 = (0 - 1 + 0)/2 = -1/2
    # L = (1 - 1)^2 + (1 + 1/2)^2 + lambda (1/4 + 1/4) = 9/4 + lambda / 2
    # (an unbiased std or a division by N - 1 would scale C by 2/3 or 3/2 and change L)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    for lambd in (0.0, 0.5, 0.0051):
        assert math.isclose(barlow_twins_loss(z1, z2, lambd).item(), 9 / 4 + lambd / 2, rel_tol=1e-4)
    # exact without BatchNorm's eps
    assert math.isclose(barlow_twins_loss(z1, z2, 0.5, eps=0.0).item(), 2.5, rel_tol=1e-6)


def test_barlow_twins_identical_views_leave_only_the_off_diagonal():
    # identical views: C is the correlation matrix, diag 1 -> L = lambda sum_{i != j} corr_ij^2
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    # corr(a, b) = (0 + 0 + 1)/2 = 1/2 (as above) -> off-diagonal sum = 2 x 1/4
    assert barlow_twins_loss(z, z, 1.0, eps=0.0).item() == pytest.approx(0.5)
    # decorrelated, identical views: the minimum 0
    w = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(w, w, 1.0, eps=0.0).item() == pytest.approx(0.0, abs=1e-7)


def test_barlow_twins_is_invariant_to_per_dimension_affine_rescaling():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 6, generator=g), torch.randn(32, 6, generator=g)
    z2 = z2 + 0.5 * z1  # correlated views: a non-trivial C
    scale1, shift1 = torch.rand(6, generator=g) * 10 + 0.1, torch.randn(6, generator=g) * 5
    scale2, shift2 = torch.rand(6, generator=g) * 10 + 0.1, torch.randn(6, generator=g) * 5
    reference = barlow_twins_loss(z1, z2, 0.0051).item()
    rescaled = barlow_twins_loss(z1 * scale1 + shift1, z2 * scale2 + shift2, 0.0051).item()
    assert rescaled == pytest.approx(reference, rel=1e-4)


# --- VICReg -------------------------------------------------------------------------------------

def test_vicreg_worked_example():
    # n = 3, d = 2, gamma = 1, eps = 1e-4.
    # Z  = (0,0),(1,1),(2,2): mean (1,1), UNBIASED var (1 + 0 + 1)/2 = 1 per dim,
    #      std sqrt(1 + 1e-4) > 1 -> v(Z) = 0;
    #      Cov = 1/(n-1) sum (z - zbar)(z - zbar)^T = [[1, 1], [1, 1]] -> c(Z) = (1^2 + 1^2)/d = 1
    # Z' = (0,0),(0,1),(0,2): dim 0 constant: std sqrt(0 + 1e-4) = 0.01 -> hinge 0.99; dim 1 as above -> 0
    #      v(Z') = (0.99 + 0)/2 = 0.495; Cov off-diagonal 0 -> c(Z') = 0
    # invariance = F.mse_loss = (0 + 1 + 4 + 0 + 0 + 0)/(n d) = 5/6
    # variance = (v(Z) + v(Z'))/2 = 0.2475 ; covariance = c(Z) + c(Z') = 1
    # loss = 25 * 5/6 + 25 * 0.2475 + 1 * 1 = 28.0208333...
    # (biased var would give std sqrt(2/3) for Z and a non-zero hinge; Cov / n would give c(Z) = 4/9;
    #  an invariance summed over d would give 5/3)
    z1 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    loss, parts = vicreg_loss(z1, z2, 25.0, 25.0, 1.0)
    assert parts["invariance"].item() == pytest.approx(5 / 6)
    assert parts["variance"].item() == pytest.approx(0.2475)
    assert parts["covariance"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(25 * 5 / 6 + 25 * 0.2475 + 1.0)
    # the coefficients weight the three parts
    loss2, _ = vicreg_loss(z1, z2, 1.0, 2.0, 3.0)
    assert loss2.item() == pytest.approx(5 / 6 + 2 * 0.2475 + 3 * 1.0)


def test_vicreg_variance_of_a_collapsed_batch_is_known():
    # every sample identical: Var = 0, std = sqrt(eps) = 0.01, hinge gamma - 0.01 in every dimension,
    # both views -> variance = gamma - 0.01; covariance 0; invariance 0
    z = torch.ones(5, 4) * 3.0
    for gamma in (1.0, 2.0):
        loss, parts = vicreg_loss(z, z.clone(), 25.0, 25.0, 1.0, gamma=gamma)
        assert parts["variance"].item() == pytest.approx(gamma - 0.01)
        assert parts["covariance"].item() == 0.0 and parts["invariance"].item() == 0.0
        assert loss.item() == pytest.approx(25 * (gamma - 0.01))


def test_vicreg_variance_is_zero_when_every_std_reaches_gamma():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    for gamma in (1.0, 3.0):
        scale = 2 * gamma / torch.minimum(z1.std(0), z2.std(0)).min()  # every dimension's std >= 2 gamma
        _, parts = vicreg_loss(z1 * scale, z2 * scale, 25.0, 25.0, 1.0, gamma=gamma)
        assert parts["variance"].item() == 0.0
        # and positive when one dimension's std falls below gamma
        shrunk = z1 * scale
        shrunk[:, 0] *= 0.1 * gamma / shrunk[:, 0].std()
        _, parts = vicreg_loss(shrunk, z2 * scale, 25.0, 25.0, 1.0, gamma=gamma)
        assert parts["variance"].item() > 0


# --- the methods as modules ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", [BYOL, BarlowTwins, VICReg])
def test_method_forward_backward_on_two_views(cls):
    torch.manual_seed(0)
    method = cls(tiny_cfg(cls.name), build_backbone("convnet_tiny", 1))
    method.train()
    out = method(two_views(n=8))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.embedding.shape == (8, 16) and not out.embedding.requires_grad
    out.loss.backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert any(p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    method.after_step(0, 10)


def test_methods_refuse_knobs_out_of_range():
    with pytest.raises(ConfigError, match="ema_momentum=1.5"):
        tiny_cfg(ema_momentum=1.5)
    with pytest.raises(ConfigError, match="barlow_lambda=-1.0"):
        tiny_cfg("barlow_twins", barlow_lambda=-1.0)
    with pytest.raises(ConfigError, match="vicreg_gamma=0.0"):
        tiny_cfg("vicreg", vicreg_gamma=0.0)
    for cls in (BYOL, BarlowTwins, VICReg):
        tiny_cfg(cls.name)


# --- 2 workers = 1 worker (torch.distributed, gloo, 2 processes; no Ray) -----------------------

def _losses_and_grads(z1, z2):
    """Each loss on (z1, z2) and the gradients of each loss w.r.t. z1, z2."""
    results = {}
    for name, fn in (("byol", lambda a, b: byol_loss(a, b, b * 2 + 1, a - 1)),
                     ("barlow", lambda a, b: barlow_twins_loss(a, b, 0.0051)),
                     ("vicreg", lambda a, b: vicreg_loss(a, b, 25.0, 25.0, 1.0)[0])):
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        loss = fn(a, b)
        loss.backward()
        results[name] = (loss.detach(), a.grad, b.grad)
    return results


def _embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 5, generator=g)
    return z1, z1 + 0.5 * torch.randn(8, 5, generator=g)


def _worker_losses(world: int, worker: int) -> dict:
    from lab.distributed import world_size

    assert world_size() == world == 2
    z1, z2 = _embeddings()
    rows = slice(worker * 4, (worker + 1) * 4)
    return _losses_and_grads(z1[rows], z2[rows])


def test_two_workers_equal_one_worker(tmp_path):
    """With the loop's gradient averaging (1/W) the 2-worker step must be the 1-worker step on the global batch:
    mean over workers of the losses = global loss; (1/W) x a worker's gradient on its rows = the global gradient."""
    workers = run_on_gloo_workers(_worker_losses, tmp_path)
    single = _losses_and_grads(*_embeddings())
    for name, (loss, g1, g2) in single.items():
        assert torch.stack([w[name][0] for w in workers]).mean().item() == pytest.approx(loss.item(), rel=1e-5), name
        torch.testing.assert_close(torch.cat([w[name][1] for w in workers]) / 2, g1, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(torch.cat([w[name][2] for w in workers]) / 2, g2, rtol=1e-4, atol=1e-6, msg=name)
    # Barlow Twins: every worker holds the global loss itself (same C everywhere)
    assert workers[0]["barlow"][0].item() == pytest.approx(workers[1]["barlow"][0].item(), rel=1e-6)
