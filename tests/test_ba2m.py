"""BA^2M (Cheng et al. 2021) and the supervised method, against the equations of lab/ba2m.py.

Worked examples for each branch and for the batch softmax on tensors small enough to do by
hand; the whole module against a direct re-implementation of its equations (forward and
gradients); the insertion into the backbones (ba2m_blocks = 0 bit-identical to the plain
backbone, BA^2M changing the output only after where it sits); the config error; and two gloo
workers x B/2 = one worker x B with BA^2M inside a supervised step.
"""

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab.ba2m import (BA2M, ChannelAttention, GlobalSpatialAttention, LocalSpatialAttention, batch_weights,
                      reduced_width, sample_scores, weight_logs)
from lab.backbones import ConvNet, ResNet18Cifar, block_count, build_backbone, check_ba2m_blocks
from lab.config import RunConfig
from lab.errors import ConfigError
from lab.methods.supervised import Supervised, cross_entropy_loss
from tests.gloo import run_on_gloo_workers


def _exact_eval_bn(module: nn.Module) -> None:
    """BatchNorm in eval mode with running mean 0, var 1, eps 0: the identity (for hand arithmetic)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0
    module.eval()


# --- the batch softmax ----------------------------------------------------------------------------

def test_batch_weights_worked_example():
    # s = (0, ln 2, ln 3): exp(s) = (1, 2, 3), sum 6, softmax = (1/6, 2/6, 3/6);
    # times N = 3: w = (0.5, 1.0, 1.5), which sums to N = 3 (mean weight 1).
    # (a plain softmax would give weights summing to 1; a softmax over anything but the batch
    #  -- e.g. each sample alone -- would give w = (3, 3, 3) or (1, 1, 1))
    s = torch.tensor([0.0, math.log(2), math.log(3)])
    w = batch_weights(s)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 1.5]))
    assert w.sum().item() == pytest.approx(3.0)


def test_batch_weights_sum_to_the_batch_size_and_follow_the_batch_order():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(7, generator=g)
    w = batch_weights(s)
    assert w.sum().item() == pytest.approx(7.0)
    assert (w > 0).all()
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(batch_weights(s[perm]), w[perm])  # permuting the batch permutes the weights
    torch.testing.assert_close(batch_weights(s + 5.0), w)  # only score differences matter (softmax)
    torch.testing.assert_close(batch_weights(torch.full((5,), 0.3)), torch.ones(5))  # equal scores: w = 1
    torch.testing.assert_close(batch_weights(torch.tensor([0.7])), torch.ones(1))  # a batch of one: w = 1
    # the highest score gets the largest weight; two samples' weights differ by exp(s_i - s_j)
    assert w.argmax() == s.argmax()
    assert (w[0] / w[1]).item() == pytest.approx(math.exp((s[0] - s[1]).item()), rel=1e-5)


def test_sample_scores_are_the_mean_of_each_sars_entries():
    # sample 0: entries 0.1, 0.2, 0.3, 0.6 -> 1.2 / 4 = 0.3 ; sample 1: all 0.5 -> 0.5
    sar = torch.tensor([[[[0.1, 0.2], [0.3, 0.6]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    torch.testing.assert_close(sample_scores(sar), torch.tensor([0.3, 0.5]))


def test_reduced_width_is_at_least_one():
    assert reduced_width(128, 16) == 8 and reduced_width(16, 16) == 1 and reduced_width(8, 16) == 1


# --- the three branches, by hand ------------------------------------------------------------------

def test_channel_attention_worked_example():
    # C = 2, r = 2 -> C' = 1. Sample: channel 0 all 1, channel 1 all 3 -> GAP v = (1, 3).
    # W_1 = [1, 1]: h = 4; BN (identity here); ReLU: 4. W_2 = [1, -0.5]^T: a = (4, -2); BN (identity).
    # A second sample with v = (-1, -3): h = -4 -> ReLU 0 -> a = (0, 0).
    branch = ChannelAttention(2, 2)
    with torch.no_grad():
        branch.mlp[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        branch.mlp[3].weight.copy_(torch.tensor([[1.0], [-0.5]]))
    _exact_eval_bn(branch)
    x = torch.stack([torch.stack([torch.ones(3, 3), 3 * torch.ones(3, 3)]),
                     torch.stack([-torch.ones(3, 3), -3 * torch.ones(3, 3)])])
    out = branch(x)
    assert out.shape == (2, 2, 1, 1)
    torch.testing.assert_close(out.flatten(1), torch.tensor([[4.0, -2.0], [0.0, 0.0]]))


def test_local_spatial_attention_worked_example():
    # C = 2, r = 2 -> C' = 1. 1x1 conv [1, 1]: the channel sum S; BN identity, ReLU.
    #   channel 0 = [[1,0,0],[0,0,0],[0,0,0]], channel 1 = [[0,0,0],[0,0,0],[0,0,2]]
    #   S = [[1,0,0],[0,0,0],[0,0,2]]
    # first 3x3 conv all ones (zero padding): each output = sum of its 3x3 neighbourhood
    #   (0,0): 1   (0,1): 1   (0,2): 0
    #   (1,0): 1   (1,1): 3   (1,2): 2
    #   (2,0): 0   (2,1): 2   (2,2): 2
    # second 3x3 conv: only the centre, weight 1 (identity); final 1x1 conv weight 2, bias -1:
    #   A_ls = 2 * box - 1 = [[1,1,-1],[1,5,3],[-1,3,3]]
    branch = LocalSpatialAttention(2, 2)
    net = branch.net
    centre = torch.zeros(1, 1, 3, 3)
    centre[0, 0, 1, 1] = 1.0
    with torch.no_grad():
        net[0].weight.copy_(torch.ones(1, 2, 1, 1))
        net[3].weight.copy_(torch.ones(1, 1, 3, 3))
        net[6].weight.copy_(centre)
        net[9].weight.copy_(torch.full((1, 1, 1, 1), 2.0))
        net[9].bias.copy_(torch.tensor([-1.0]))
    _exact_eval_bn(branch)
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 0, 0] = 1.0
    x[0, 1, 2, 2] = 2.0
    expected = torch.tensor([[1.0, 1.0, -1.0], [1.0, 5.0, 3.0], [-1.0, 3.0, 3.0]])
    out = branch(x)
    assert out.shape == (1, 1, 3, 3)
    torch.testing.assert_close(out[0, 0], expected)


def test_global_spatial_attention_worked_example():
    # C = 2, r = 2 -> C' = 1; H x W = 1 x 2 (positions 0 and 1).
    # theta = phi = channel 0 = (0, 1); g = channel 1 = (2, 4).
    # position 0: theta = 0 -> theta*phi_j = (0, 0) -> f = (1/2, 1/2) -> y_0 = (2 + 4)/2 = 3
    # position 1: theta = 1 -> (0, 1) -> f = (1, e)/(1 + e) -> y_1 = (2 + 4e)/(1 + e)
    # W_z = [1, -1]^T: A_gs channel 0 = y, channel 1 = -y (BN identity).
    # (a softmax over the other axis -- over queries i instead of keys j -- would give
    #  y_0 = 2/2 + 4/(1+e)... a different number)
    branch = GlobalSpatialAttention(2, 2)
    with torch.no_grad():
        branch.theta.weight.copy_(torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1))
        branch.phi.weight.copy_(torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1))
        branch.g.weight.copy_(torch.tensor([[0.0, 1.0]]).view(1, 2, 1, 1))
        branch.w_z.weight.copy_(torch.tensor([[1.0], [-1.0]]).view(2, 1, 1, 1))
    _exact_eval_bn(branch)
    x = torch.tensor([[[[0.0, 1.0]], [[2.0, 4.0]]]])  # 1 x 2 x 1 x 2
    e = math.e
    y = torch.tensor([3.0, (2 + 4 * e) / (1 + e)])
    out = branch(x)
    assert out.shape == (1, 2, 1, 2)
    torch.testing.assert_close(out[0, 0, 0], y)
    torch.testing.assert_close(out[0, 1, 0], -y)


# --- the whole module -----------------------------------------------------------------------------

def _bn_train(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Training-mode BatchNorm written out: biased batch variance, per channel."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def _direct_ba2m(x: torch.Tensor, m: BA2M) -> torch.Tensor:
    """The equations of lab/ba2m.py written independently of its code (training mode)."""
    n, c, h, w = x.shape
    # A_c = BN(W_2 ReLU(BN(W_1 GAP(X))))
    mlp = m.channel.mlp
    v = x.mean(dim=(2, 3))
    hidden = torch.relu(_bn_train(v @ mlp[0].weight.T, mlp[1]))
    a_c = _bn_train(hidden @ mlp[3].weight.T, mlp[4])[:, :, None, None]
    # A_ls: 1x1 -> BN -> ReLU -> (3x3 -> BN -> ReLU) x 2 -> 1x1 (+ bias)
    net = m.local_spatial.net
    t = torch.relu(_bn_train(F.conv2d(x, net[0].weight), net[1]))
    t = torch.relu(_bn_train(F.conv2d(t, net[3].weight, padding=1), net[4]))
    t = torch.relu(_bn_train(F.conv2d(t, net[6].weight, padding=1), net[7]))
    a_ls = F.conv2d(t, net[9].weight, net[9].bias)
    # A_gs: non-local, f_ij = softmax_j(theta_i . phi_j), y_i = sum_j f_ij g_j, BN(W_z y)
    gs = m.global_spatial
    theta = torch.einsum("kc,nchw->nkhw", gs.theta.weight[:, :, 0, 0], x).flatten(2)
    phi = torch.einsum("kc,nchw->nkhw", gs.phi.weight[:, :, 0, 0], x).flatten(2)
    g = torch.einsum("kc,nchw->nkhw", gs.g.weight[:, :, 0, 0], x).flatten(2)
    logits = torch.einsum("nki,nkj->nij", theta, phi)
    f = torch.exp(logits - logits.amax(dim=2, keepdim=True))
    f = f / f.sum(dim=2, keepdim=True)
    y = torch.einsum("nij,nkj->nki", f, g).reshape(n, -1, h, w)
    a_gs = _bn_train(torch.einsum("ck,nkhw->nchw", gs.w_z.weight[:, :, 0, 0], y), gs.bn)
    # SAR, per-sample score, N x softmax over the batch, rescale
    sar = 1 / (1 + torch.exp(-(a_c + a_ls + a_gs)))
    s = sar.reshape(n, -1).mean(dim=1)
    weights = n * torch.exp(s) / torch.exp(s).sum()
    return x * weights[:, None, None, None]


def _randomised_ba2m(channels: int = 8, reduction: int = 2, seed: int = 0) -> BA2M:
    torch.manual_seed(seed)
    module = BA2M(channels, reduction)
    with torch.no_grad():  # BN affine parameters away from (1, 0) so that they matter
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    return module.double()


def test_ba2m_matches_a_direct_implementation_forward_and_gradients():
    module = _randomised_ba2m()
    x = torch.randn(6, 8, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn_like(x)
    out = module(x1)
    (out * target).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    module.zero_grad()
    direct = _direct_ba2m(x2, module)
    (direct * target).sum().backward()
    torch.testing.assert_close(out, direct)
    torch.testing.assert_close(x1.grad, x2.grad)
    for name, p in module.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    # the weights it stored are N x softmax: they sum to N
    assert module.last_weights.sum().item() == pytest.approx(6.0)
    assert weight_logs(module)["ba2m_weight_std"] > 0


def test_ba2m_is_batch_aware_in_training_and_the_identity_in_eval():
    module = _randomised_ba2m()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 8, 4, 4, dtype=torch.float64, generator=g)
    out = module(x)
    # every sample is a positive multiple of its input: Y_n = w_n X_n, and the w_n average 1
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert ratio[:, 0].mean().item() == pytest.approx(1.0)
    assert ratio[:, 0].std().item() > 1e-4
    # permuting the batch permutes the outputs
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(module(x[perm]), out[perm])
    # changing one sample changes the OTHER samples' outputs (the batch softmax couples them)
    changed = x.clone()
    changed[5] = 3 * changed[5]
    assert not torch.allclose(module(changed)[:5], out[:5])
    # eval: the identity, whatever the batch (a single image too)
    module.eval()
    assert torch.equal(module(x), x)
    assert torch.equal(module(x[:1]), x[:1])


def test_ba2m_weights_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    module = BA2M(8, 2)
    x = torch.randn(6, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
        scores = sample_scores(module.sar(x))
    assert scores.dtype == torch.float32 and module.last_weights.dtype == torch.float32
    assert out.dtype == x.dtype
    assert module.last_weights.sum().item() == pytest.approx(6.0, rel=1e-6)


# --- insertion into the backbones -----------------------------------------------------------------

def _plain(name: str, seed: int = 0) -> nn.Module:
    """The backbones as they were before BA^2M (literal constructors)."""
    torch.manual_seed(seed)
    if name == "convnet_tiny":
        return ConvNet(1, (16, 32, 64), pool_after=(0, 1))
    if name == "convnet_small":
        return ConvNet(1, (16, 32, 64, 128), pool_after=(0, 1, 2))
    return ResNet18Cifar(1)


@pytest.fixture(scope="module")
def plain_resnet() -> nn.Module:
    return _plain("resnet18_cifar")


def _plain_copy(name: str, plain_resnet: nn.Module) -> nn.Module:
    return copy.deepcopy(plain_resnet) if name == "resnet18_cifar" else _plain(name)


@pytest.mark.parametrize("name", ["convnet_tiny", "convnet_small", "resnet18_cifar"])
def test_no_ba2m_leaves_the_backbone_bit_identical(name, plain_resnet):
    plain = _plain_copy(name, plain_resnet)
    torch.manual_seed(0)
    built = build_backbone(name, 1, ba2m_blocks=0)
    assert repr(built) == repr(plain)
    assert not any(isinstance(m, BA2M) for m in built.modules())
    a, b = plain.state_dict(), built.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(plain(x), built(x))


def test_block_counts():
    assert [block_count(n) for n in ("convnet_tiny", "convnet_small", "resnet18_cifar")] == [3, 4, 8]


def test_ba2m_goes_after_the_last_blocks_of_a_convnet_and_changes_only_what_follows():
    plain = _plain("convnet_small")
    torch.manual_seed(0)
    net = build_backbone("convnet_small", 1, ba2m_blocks=2, ba2m_reduction=16)
    layers = list(net.features)
    positions = [i for i, m in enumerate(layers) if isinstance(m, BA2M)]
    # blocks: [conv bn relu pool] x 3 + [conv bn relu] (plain layers 0-14); the last two blocks end at
    # the 3rd pool (plain layer 11) and the 4th relu (plain 14, shifted to 15 by the first BA^2M)
    assert positions == [12, 16]
    assert isinstance(layers[11], nn.MaxPool2d) and isinstance(layers[15], nn.ReLU)
    assert [layers[i].channel.mlp[0].in_features for i in positions] == [64, 128]
    # the plain backbone's weights are drawn first: same values under the same seed
    plain_layers = [m for m in net.features if not isinstance(m, BA2M)]
    for p_plain, p_new in zip(plain.features, plain_layers):
        for (k, v), (k2, v2) in zip(p_plain.state_dict().items(), p_new.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    x = torch.randn(8, 1, 28, 28)
    plain.train()
    net.train()
    # training mode: identical up to the first BA^2M, different from it on
    before_plain = nn.Sequential(*list(plain.features)[:12])(x)
    before_new = nn.Sequential(*layers[:12])(x)
    assert torch.equal(before_plain, before_new)
    assert not torch.allclose(layers[12](before_new), before_new)
    assert not torch.allclose(plain(x), net(x))
    # eval mode: BA^2M is the identity, so with the same running statistics the outputs are identical
    net.load_state_dict({**net.state_dict(), **{_shifted(k): v for k, v in plain.state_dict().items()}})
    plain.eval()
    net.eval()
    assert torch.equal(plain(x), net(x))


def _shifted(key: str) -> str:
    """features.<i>.* of convnet_small -> its index with BA^2M after plain layers 11 and 14."""
    _, index, rest = key.split(".", 2)
    i = int(index)
    return f"features.{i + (i > 11) + (i > 14)}.{rest}"


def test_ba2m_goes_on_the_residual_branch_of_the_last_resnet_blocks(plain_resnet):
    plain = copy.deepcopy(plain_resnet)
    torch.manual_seed(0)
    net = build_backbone("resnet18_cifar", 1, ba2m_blocks=3, ba2m_reduction=16)
    blocks = [b for stage in (net.net.layer1, net.net.layer2, net.net.layer3, net.net.layer4) for b in stage]
    with_ba2m = [isinstance(b.bn2, nn.Sequential) and isinstance(b.bn2[1], BA2M) for b in blocks]
    assert with_ba2m == [False] * 5 + [True] * 3
    assert [b.bn2[1].channel.mlp[0].in_features for b in blocks[5:]] == [256, 512, 512]
    # same plain weights; in eval mode (BA^2M the identity) the same output as the plain ResNet
    renamed = {k.replace("bn2.0.", "bn2."): v for k, v in net.state_dict().items() if ".bn2.1." not in k}
    plain_state = plain.state_dict()
    assert renamed.keys() == plain_state.keys() and all(torch.equal(renamed[k], plain_state[k]) for k in renamed)
    x = torch.randn(2, 1, 16, 16)
    plain.eval()
    net.eval()
    torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)
    net.train()
    plain.train()
    x = torch.randn(4, 1, 8, 8)
    assert not torch.allclose(plain(x), net(x))  # training: the batch weights rescale the residual branches


def test_a_ba2m_block_count_the_backbone_lacks_fails_before_compute():
    with pytest.raises(ConfigError, match=r"ba2m_blocks=5: backbone convnet_small has 4 blocks.*ba2m_blocks <= 4"):
        RunConfig(scale="cpu", method="supervised", ba2m_blocks=5)
    with pytest.raises(ConfigError, match=r"convnet_tiny has 3 blocks"):
        RunConfig(scale="smoke", method="supervised", ba2m_blocks=4)
    with pytest.raises(ConfigError, match=r"resnet18_cifar has 8 blocks"):
        RunConfig(scale="cpu", backbone="resnet18_cifar", ba2m_blocks=9)
    with pytest.raises(ConfigError, match="unknown"):
        check_ba2m_blocks("vgg", 1)
    for blocks in range(5):
        RunConfig(scale="cpu", method="supervised", ba2m_blocks=blocks)  # accepted
    with pytest.raises(ConfigError):
        build_backbone("convnet_tiny", 1, ba2m_blocks=4)


# --- the supervised method ------------------------------------------------------------------------

def test_cross_entropy_worked_example():
    # row 1: logits (0, ln 3), label 1: softmax = (1/4, 3/4) -> -log(3/4) = log(4/3)
    # row 2: logits (ln 2, 0), label 0: softmax = (2/3, 1/3) -> -log(2/3) = log(3/2)
    # loss = the batch mean of the two (a sum would double it)
    logits = torch.tensor([[0.0, math.log(3)], [math.log(2), 0.0]])
    loss = cross_entropy_loss(logits, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(3 / 2)) / 2)


def test_supervised_method_classifies_into_the_datasets_classes():
    cfg = RunConfig(scale="smoke", method="supervised", ba2m_blocks=1)
    sgd = RunConfig(method="supervised", optimizer="sgd")
    assert Supervised.n_views == 1 and (sgd.base_lr, sgd.weight_decay) == (0.1, 5e-4)
    torch.manual_seed(0)
    method = Supervised(cfg, build_backbone(cfg.backbone, 1, cfg.ba2m_blocks, cfg.ba2m_reduction))
    assert method.classifier.out_features == 10 and method.encoder is method.backbone
    x = torch.randn(8, 1, 28, 28)
    labels = torch.arange(8) % 10
    out = method([x], labels)
    expected = F.cross_entropy(method.classifier(method.backbone(x)), labels)  # same BA^2M weights: same batch
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.embedding.shape == (8, 64) and not out.embedding.requires_grad
    assert {"train_top1", "ba2m_weight_std", "ba2m_weight_max"} <= out.logs.keys()
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters())  # BA^2M's branches get gradients too
    with pytest.raises(ValueError, match="labels"):
        method([x])


# --- 2 gloo workers x B/2 = 1 worker x B ----------------------------------------------------------

GLOBAL_BATCH = 8


def _one_step(world: int, worker: int) -> dict:
    """One step of the loop (lab.train.prepare_for_workers / optimisation_step, written with the same
    lab.distributed helpers so that the workers need not import torchvision): global BatchNorm and
    rank 0's initial state, forward, backward, gradient average over workers, an SGD step."""
    from lab.distributed import average_gradients, broadcast_state, convert_to_global_batchnorm, is_distributed

    torch.manual_seed(0)
    method = Supervised(types.SimpleNamespace(dataset="fashion_mnist"),
                        build_backbone("convnet_tiny", 1, ba2m_blocks=2, ba2m_reduction=4))
    if is_distributed():
        method = convert_to_global_batchnorm(method)
        broadcast_state(method)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(GLOBAL_BATCH, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
    local = slice(worker * GLOBAL_BATCH // world, (worker + 1) * GLOBAL_BATCH // world)
    out = method([x[local]], labels[local])
    optimizer.zero_grad()
    out.loss.backward()
    if is_distributed():
        average_gradients(method)
    optimizer.step()
    weights = [m.last_weights.clone() for m in method.modules() if isinstance(m, BA2M)]
    return {"loss": out.loss.item(), "weights": weights,
            "grads": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
            "state": {n: t.clone() for n, t in method.state_dict().items() if t.is_floating_point()}}


def test_two_gloo_workers_equal_one_worker(tmp_path):
    workers = run_on_gloo_workers(_one_step, tmp_path)
    single = _one_step(1, 0)
    # the global mean loss is the mean of the workers' means (equal halves)
    assert (workers[0]["loss"] + workers[1]["loss"]) / 2 == pytest.approx(single["loss"], abs=1e-5)
    # each worker's BA^2M weights are its slice of the global batch's (N = 8, not 4)
    for module, weights in enumerate(single["weights"]):
        assert weights.sum().item() == pytest.approx(GLOBAL_BATCH, rel=1e-5)
        torch.testing.assert_close(torch.cat([w["weights"][module] for w in workers]), weights,
                                   atol=1e-5, rtol=1e-4)
    # after the loop's gradient average, every worker holds the 1-worker gradient, and the same state
    assert single["grads"].keys() == workers[0]["grads"].keys()
    for w in workers:
        for kind in ("grads", "state"):
            for name, value in single[kind].items():
                error = (w[kind][name] - value).abs().max().item()
                assert error <= 1e-5 * max(1.0, value.abs().max().item()), (kind, name, error)
