"""Global-batch semantics across workers (torch.distributed; gloo on CPU, nccl on GPU).

Each worker holds B / W samples of a global batch of B. Losses that couple samples
(NT-Xent negatives, BatchNorm statistics, cross-correlations) must see all B of them, and
the gradients must be those of the global loss:

- `gather_with_grad(x)`: all-gather whose backward *sums* the incoming gradients over
  workers (all_reduce) and returns this worker's slice. A backward that only slices
  scales every gradient by 1/W (lightly issues #1528, #1977).
- `GlobalBatchNorm`: BatchNorm whose batch statistics are the global batch's, through a
  differentiable all_reduce (torch's SyncBatchNorm refuses CPU tensors).

With parameter gradients averaged over W workers (`average_gradients`) and each worker's loss
being the mean over its own anchors against the global batch, the step equals the 1-worker
step on the same global batch (tests/test_distributed.py).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every worker's loss depends on every slice
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x over workers (rank order); gradients flow back to every worker's slice."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x over workers without gradient (keys, features for evaluation)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x) if is_distributed() else x


def mean_over_workers(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return (t / world_size()).item()


def min_over_workers(value: int | None) -> int | None:
    """The smallest of the workers' values (None: this worker has none); None where no worker has one."""
    if not is_distributed():
        return value
    t = torch.tensor([float("inf") if value is None else float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return None if math.isinf(t.item()) else int(t.item())


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: mean and variance reduced over all workers.

    Forward, two passes (N the global count): mu = sum_w sum_i x / N, then
    var = sum_w sum_i (x - mu)^2 / N. Two all_reduces instead of one, but no cancellation:
    the one-pass E[x^2] - mu^2 loses every digit of var when |mu| >> std (float32 keeps ~7,
    bfloat16 ~3). Statistics in at least float32 whatever the input's dtype (as cuDNN's BN under autocast);
    the output in the input's dtype. Backward flows through both all_reduces, so d(sum_w L_w)/dx
    is exact. Falls back to ordinary BatchNorm when not distributed or in eval mode.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 / fp16 up to float32; float64 stays
        sums = all_reduce_sum_with_grad(torch.cat([x32.sum(dims), x32.new_tensor([float(x.numel() // c)])]))
        count = sums[-1].detach()
        mean = sums[:c] / count
        centered = x32 - mean.view(shape)
        var = all_reduce_sum_with_grad((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / max(count - 1, 1)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        y = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2}d in `module` with GlobalBatchNorm, keeping its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_to_global_batchnorm(child))
    return module


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Every worker starts from rank 0's parameters and buffers."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(module: nn.Module) -> None:
    """Mean of every parameter's gradient over workers, in one flat all_reduce.

    This replaces DDP's reducer: DDP launches its bucket all-reduces from autograd hooks while
    GlobalBatchNorm's and gather_with_grad's backward issue their own collectives, and with a
    no-grad EMA teacher in the step (BYOL, MoCo) the two interleaved differently on the two
    workers and produced wrong gradients (tests/test_distributed.py caught it). One all_reduce
    after backward keeps every collective in program order.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class GradientBuckets:
    """Gradients averaged over workers in buckets launched during backward, as DDP's reducer does (Li et al.
    2020, "PyTorch Distributed", VLDB): the parameters in reverse order of registration (about the order
    backward produces their gradients), cut into buckets of about `bucket_mb` MB; when every parameter of a
    bucket has its gradient (a post-accumulate-grad hook), its flat all_reduce starts asynchronously, so that
    the communication of the last layers overlaps the backward of the first. `backward(loss)` runs the step's
    backward with the hooks armed (no other backward, a probe's or an evaluation's, launches anything), then
    starts the buckets whose parameters got no gradient this step (in bucket order, the same on every worker),
    waits for all of them and writes the means back. A parameter with no gradient this step stays without one.

    Every collective of a step is issued from backward in the graph's order, the bucket all_reduces and those
    of GlobalBatchNorm's and gather_with_grad's backward alike, so every worker issues them in the same order
    (the step's graph is the same on every worker). The default remains `average_gradients`' one flat
    all_reduce after backward (grad_bucket_mb = 0); bench/scaling.py measures the two side by side."""

    def __init__(self, module: nn.Module, bucket_mb: float = 25.0):
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets: list[list[nn.Parameter]] = [[]]
        size, limit = 0, bucket_mb * 2 ** 20
        for p in reversed(params):
            if self.buckets[-1] and size + p.numel() * p.element_size() > limit:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.bucket_of = {id(p): index for index, bucket in enumerate(self.buckets) for p in bucket}
        for p in params:
            p.register_post_accumulate_grad_hook(self._ready)
        self.armed = False
        self._reset()

    def _reset(self) -> None:
        self.left = [len(bucket) for bucket in self.buckets]
        self.works: dict[int, tuple[object, torch.Tensor, list[nn.Parameter]]] = {}

    def _ready(self, param: nn.Parameter) -> None:
        if not self.armed:
            return
        index = self.bucket_of[id(param)]
        self.left[index] -= 1
        if self.left[index] == 0:
            self._launch(index)

    def _launch(self, index: int) -> None:
        with_grad = [p for p in self.buckets[index] if p.grad is not None]
        if not with_grad:
            self.works[index] = (None, torch.empty(0), [])
            return
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
        self.works[index] = (dist.all_reduce(flat, async_op=True), flat, with_grad)

    def backward(self, loss: torch.Tensor) -> None:
        self.armed = True
        try:
            loss.backward()
        finally:
            self.armed = False
        self._finish()

    @torch.no_grad()
    def _finish(self) -> None:
        for index in range(len(self.buckets)):
            if index not in self.works:
                self._launch(index)
        size = dist.get_world_size()
        for index in range(len(self.buckets)):
            work, flat, with_grad = self.works[index]
            if work is None:
                continue
            work.wait()
            flat /= size
            offset = 0
            for p in with_grad:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self._reset()
