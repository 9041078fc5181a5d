"""A FIFO of stored embeddings, written once: MoCo's queue of keys (He et al. 2020, Sec. 3.1) and
SwAV's queue of features for the codes (Caron et al. 2020, Sec. 4 "small batches").

`views` queues of `size` rows side by side (MoCo: 1, the keys; SwAV: one per global crop), one
write pointer: each `enqueue` overwrites the oldest rows, starting at the pointer. The rows are
buffers, so the queue travels with checkpoints. The loop gives every worker the same rows in the
same order (the callers gather the global batch first), so every worker's queue is identical.

init "random": l2-normalised Gaussian rows, all counted as filled (MoCo starts with random keys as
negatives, as the official code); "zeros": empty until written (`filled` counts the rows in use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureQueue(nn.Module):
    def __init__(self, views: int, size: int, dim: int, init: str = "zeros"):
        super().__init__()
        if init == "random":
            rows = F.normalize(torch.randn(size, dim), dim=1).unsqueeze(0).repeat(views, 1, 1)
        elif init == "zeros":
            rows = torch.zeros(views, size, dim)
        else:
            raise ValueError(f"init={init!r}: choose random or zeros")
        self.register_buffer("rows", rows)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.full((), size if init == "random" else 0, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.rows.shape[1]

    def view(self, index: int = 0) -> torch.Tensor:
        """The filled rows of queue `index` (a copy: a later enqueue cannot change it)."""
        return self.rows[index, : int(self.filled)].clone().detach()

    @torch.no_grad()
    def enqueue(self, embeddings: list[torch.Tensor]) -> None:
        """One (n, d) tensor per queue, identical on every worker: overwrite the n oldest rows."""
        count = embeddings[0].shape[0]
        rows = (self.ptr + torch.arange(count, device=self.rows.device)) % self.size
        for index, e in enumerate(embeddings):
            self.rows[index].index_copy_(0, rows, e.to(self.rows.dtype))
        self.ptr.copy_((self.ptr + count) % self.size)
        self.filled.copy_(torch.clamp(self.filled + count, max=self.size))
