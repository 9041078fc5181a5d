"""BA^2M: a Batch Aware Attention Module (Cheng, Li, Wu & Ngan 2021, arXiv:2103.15099).

Attention modules such as SE, CBAM and BAM refine the features *inside* one sample. BA^2M adds
a batch-aware stage: each sample's features X_n (C x H x W) get a sample-wise attention
representation (SAR) fused from three attention maps, the SARs of the whole batch go through a
normalisation function (softmax over the batch) and the resulting per-sample weights rescale the
features, so that samples of different content complexity get different importance (paper
abstract and Sec. III; document 004 of the lab's seeds).

Per sample n of a (global) batch of N, with r = cfg.ba2m_reduction and C' = max(1, C // r):

    channel        A_c(X_n)  = BN( W_2 ReLU( BN( W_1 GAP(X_n) ) ) )            in R^{C x 1 x 1}
                   (SE / BAM channel gate: squeeze by global average pooling, MLP C -> C' -> C)
    local spatial  A_ls(X_n) = conv1x1_{C'->1}( [conv3x3-BN-ReLU]^2 ( conv1x1_{C->C'}-BN-ReLU (X_n) ) )
                                                                           in R^{1 x H x W}
                   (BAM's spatial gate: convolutions over a 3 x 3 neighbourhood, receptive field 5 x 5)
    global spatial A_gs(X_n) = BN( W_z  g(X_n) softmax_j( theta(X_n)_i . phi(X_n)_j )^T )
                                                                           in R^{C x H x W}
                   (non-local block, embedded Gaussian (Wang et al. 2018): every position attends
                   to every other; theta, phi, g are 1x1 convs C -> C', W_z a 1x1 conv C' -> C)
    SAR            S_n = sigmoid( A_c (+) A_ls (+) A_gs )    (broadcast sum, as BAM fuses its gates)
    score          s_n = mean_{c,h,w} S_n                    (the SAR squeezed to one scalar per sample)
    batch weights  w_n = N exp(s_n) / sum_{m=1..N} exp(s_m)  (softmax over the batch, times N)
    output         Y_n = w_n X_n

Design choices (the stored copies of the paper reachable here held only its abstract and
introduction, so the details below are the lab's reading, marked as such):

- Scaling by N: softmax weights sum to 1, so a plain softmax would shrink every feature by about
  1/N and make the features' scale depend on the batch size. Multiplying by N makes the weights
  average exactly 1 over the batch (sum_n w_n = N), so the module redistributes importance
  between samples without changing the batch's overall feature scale, and a batch whose samples
  all have equal scores is left unchanged.
- The SAR is a map (C x H x W, BAM-style sigmoid of the summed gates) and the normalisation acts
  on its mean, one scalar per sample: the paper's weights are "weights for each sample". The
  sigmoid bounds s_n in (0, 1), so two samples' weights differ by at most a factor e: the
  re-weighting cannot starve a sample entirely (a bounded, stable rescaling).
- Global batch: under several workers the scores are gathered with gradient
  (lab.distributed.gather_with_grad) before the softmax, N is the global batch and each worker
  keeps its own slice: 2 workers x B/2 give the weights (and, with the loop's gradient average,
  the gradients) of 1 worker x B (tests/test_ba2m.py).
- Inference: in eval mode BA^2M is the identity (w_n = 1). That is exactly the weight a batch
  of one gets (N = 1: w = 1 x softmax of one score = 1) and the expected weight over training
  batches (mean 1 by construction), and it makes a test image's features independent of which
  other images share its evaluation batch (kNN banks, linear probes and single images alike).
  It also keeps evaluation free of collectives, which only rank 0 runs. The attention branches
  therefore shape training (which samples' features, and so gradients, are emphasised) and cost
  nothing at test time.
- Placement (lab.backbones): after a VGG-style block of the ConvNets; inside a ResNet basic block
  on the residual branch before the addition, where SE / CBAM-style modules go.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.distributed import gather_with_grad, rank


def reduced_width(channels: int, reduction: int) -> int:
    """C' = C // r, at least 1 (the lab's narrow ConvNets have 16 channels with r = 16)."""
    return max(1, channels // reduction)


class ChannelAttention(nn.Module):
    """A_c: GAP, then Linear C -> C' (BN, ReLU), Linear C' -> C, BN; shape (n, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, channels, bias=False),
                                 nn.BatchNorm1d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]


class LocalSpatialAttention(nn.Module):
    """A_ls: 1x1 conv C -> C', two 3x3 conv-BN-ReLU, 1x1 conv C' -> 1; shape (n, 1, H, W)."""

    def __init__(self, channels: int, reduction: int, convs: int = 2):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                   nn.ReLU(inplace=True)]
        for _ in range(convs):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GlobalSpatialAttention(nn.Module):
    """A_gs: a non-local (embedded Gaussian) block's response, shape (n, C, H, W).

    f_ij = softmax_j(theta_i . phi_j) over the H W positions j; y_i = sum_j f_ij g_j; A = BN(W_z y).
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.theta = nn.Conv2d(channels, hidden, 1, bias=False)
        self.phi = nn.Conv2d(channels, hidden, 1, bias=False)
        self.g = nn.Conv2d(channels, hidden, 1, bias=False)
        self.w_z = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # n x C' x HW
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        affinity = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # n x HW(i) x HW(j)
        y = (g @ affinity.transpose(1, 2)).view(n, -1, h, w)  # y_i = sum_j f_ij g_j
        return self.bn(self.w_z(y))


def sample_scores(sar: torch.Tensor) -> torch.Tensor:
    """s_n: the mean of sample n's SAR over all its entries; shape (n,), float32 at least."""
    return sar.flatten(1).to(torch.promote_types(sar.dtype, torch.float32)).mean(dim=1)


def batch_weights(scores: torch.Tensor) -> torch.Tensor:
    """w_n = N softmax_n(s) over the GLOBAL batch (N samples, all workers), this worker's slice.

    sum_n w_n = N (mean weight 1); equal scores give w = 1; a batch of one gives w = 1.
    The softmax runs in float32 at least (bf16 / fp16 scores under autocast are promoted).
    """
    all_scores = gather_with_grad(scores.to(torch.promote_types(scores.dtype, torch.float32)))
    total = all_scores.shape[0]
    weights = total * torch.softmax(all_scores, dim=0)
    start = rank() * scores.shape[0]
    return weights[start:start + scores.shape[0]]


class BA2M(nn.Module):
    """Y_n = w_n X_n with w = N softmax over the batch of the SAR means (module docstring).

    Identity in eval mode. `last_weights` holds the latest training step's weights of this
    worker's samples (detached), for logging.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.local_spatial = LocalSpatialAttention(channels, reduction)
        self.global_spatial = GlobalSpatialAttention(channels, reduction)
        self.last_weights: torch.Tensor | None = None

    def sar(self, x: torch.Tensor) -> torch.Tensor:
        """The sample-wise attention representation sigmoid(A_c + A_ls + A_gs), shape (n, C, H, W)."""
        return torch.sigmoid(self.channel(x) + self.local_spatial(x) + self.global_spatial(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        weights = batch_weights(sample_scores(self.sar(x)))
        self.last_weights = weights.detach()
        return x * weights.to(x.dtype).view(-1, 1, 1, 1)


def weight_logs(module: nn.Module) -> dict[str, float]:
    """Spread of the latest BA^2M weights in `module` (mean over its BA^2M modules): their std
    over the batch and their largest value; empty when it holds no BA^2M that has run."""
    weights = [m.last_weights for m in module.modules() if isinstance(m, BA2M) and m.last_weights is not None]
    if not weights:
        return {}
    stds = [w.float().std().double() if w.numel() > 1 else 0.0 for w in weights]  # on the device: no host sync
    return {"ba2m_weight_std": sum(stds) / len(stds),
            "ba2m_weight_max": sum(w.float().max().double() for w in weights) / len(weights)}


__all__ = ["BA2M", "ChannelAttention", "GlobalSpatialAttention", "LocalSpatialAttention", "batch_weights",
           "reduced_width", "sample_scores", "weight_logs"]
