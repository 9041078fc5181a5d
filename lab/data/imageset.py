"""One split of a dataset in memory (ImageSet) and what the lab knows of a dataset (DatasetSpec)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSet:
    """One split of a dataset, in memory."""

    name: str
    split: str
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    num_classes: int
    source: str = ""  # the folder (or file) the images were read from

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}/{self.split}: images must be uint8 N x C x H x W, got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}/{self.split}: {len(self.images)} images, {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """A fixed, class-stratified-by-chance random subset of n images (the whole split if None)."""
        if n is None or n >= len(self):
            return self
        return self.split_off(n, seed)[0]

    def split_off(self, n: int, seed: int = 0) -> tuple["ImageSet", "ImageSet"]:
        """(n fixed random images, the others): disjoint, each in the split's order."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self._take(order[:n].sort().values), self._take(order[n:].sort().values)

    def _take(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.name, self.split, self.images[index], self.labels[index], self.num_classes, self.source)

    def classes(self, first: int, stop: int) -> "ImageSet":
        """The images of classes first .. stop - 1, relabelled 0 .. stop - first - 1 (zero-shot class splits)."""
        keep = (self.labels >= first) & (self.labels < stop)
        return ImageSet(self.name, self.split, self.images[keep], self.labels[keep] - first, stop - first, self.source)

    def concat(self, other: "ImageSet") -> "ImageSet":
        source = self.source if self.source == other.source else f"{self.source} + {other.source}"
        return ImageSet(self.name, f"{self.split}+{other.split}", torch.cat([self.images, other.images]),
                        torch.cat([self.labels, other.labels]), self.num_classes, source)

    def labelled_fraction(self, fraction: float, seed: int = 0) -> "ImageSet":
        """A class-stratified fraction of the images (at least one per class): few-label fine-tuning."""
        if fraction >= 1:
            return self
        g = torch.Generator().manual_seed(seed)
        keep = []
        for c in range(self.num_classes):
            members = torch.nonzero(self.labels == c).flatten()
            if len(members):
                n = max(1, round(fraction * len(members)))
                keep.append(members[torch.randperm(len(members), generator=g)[:n]])
        return self._take(torch.cat(keep).sort().values)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    channels: int
    image_size: int
    splits: tuple[str, ...]
    loader: Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray]]
    # zero-shot retrieval (class_split='half') uses the unseen classes' images of every split
    # (CUB / Cars protocol of Song et al. 2016), not only the test split's
    zero_shot_all_images: bool = False
