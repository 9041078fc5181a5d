"""Which device a run uses, and how it computes there: the precision of its matrix products (fp32, or bf16
under autocast) and the memory format of its images and convolution weights.

    precision  auto: bf16 where the device has fast bf16 units (a CUDA device that supports bf16; a CPU
               whose flags show amx_bf16 or avx512_bf16), fp32 elsewhere. bf16 is torch.autocast: weights,
               optimiser state and gradients stay fp32, matrix products and convolutions run in bf16, and
               every loss, normalisation and statistic a method keeps in fp32 (Sinkhorn, Barlow's and
               VICReg's d x d statistics, DINO's and the contrastive softmaxes, GlobalBatchNorm, VAT's
               probe) leaves autocast or promotes its inputs, on CPU as on CUDA.
    channels_last  convolution weights and the views in NHWC: what oneDNN's and cuDNN's fastest
               kernels read (a 4-D tensor's layout only; values and shapes are unchanged).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from lab.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when torch sees it, else the CPU; cuda without a visible GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(name)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere: auto then means fp32 on the CPU)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in FAST_BF16_CPU_FLAGS)
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """'bf16' or 'fp32': what `name` (auto / fp32 / bf16) means on `device`."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision={name!r} is not one of {list(PRECISIONS)}")
    if name == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision='bf16' but {torch.cuda.get_device_name(device)} has no bf16; use "
                          "precision='fp32' or 'auto'")
    return name


def autocast(device: torch.device, precision: str):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def in_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D image batch in channels_last when asked (other tensors as they are)."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def batch_to_device(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 batch on the device in one copy (a quarter of float32's bytes); the views are made there. To a
    GPU from pinned memory without blocking: the host goes on to the next step while the copy runs."""
    if device.type == "cuda":
        return images_uint8.pin_memory().to(device, non_blocking=True)
    return images_uint8.to(device)
