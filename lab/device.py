"""Which device a run uses."""

from __future__ import annotations

import torch

from lab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when torch sees it, else the CPU; cuda without a visible GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(name)
