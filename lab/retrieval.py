"""Recall@K: the zero-shot retrieval protocol of deep metric learning (document 003, Sec. 3;
Oh Song et al., CVPR 2016, "Deep Metric Learning via Lifted Structured Feature Embedding", Sec. 5).

Train on the first half of the classes, then every test image of the *unseen* half queries all
the other test images. With nn_1(i), ..., nn_K(i) the K nearest neighbours of image i by
Euclidean distance on the embedding, i itself excluded,

    Recall@K = 100 / N * #{ i : some nn_k(i), k <= K, has the class of i }            (percent)

reported at K = 1, 2, 4, 8 (the document's Table 1 gives Recall@1). Neighbours at equal distance
are ranked by dataset position (a stable sort), so the score is deterministic; a duplicate
image of i at distance 0 is a neighbour like any other, only i's own row is excluded.
"""

from __future__ import annotations

import torch
from torch import nn

KS = (1, 2, 4, 8)


@torch.no_grad()
def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = KS,
                chunk: int = 512) -> dict[str, float]:
    """{"recall_at_K": percent} for each K in ks; embeddings (N, d), labels (N,) integer classes.

    Euclidean (the document's d is its square: the same ranking) on the embeddings as given,
    not normalised. Errors: fewer than 2 images or 2 classes, K < 1 or K > N - 1.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {tuple(embeddings.shape)}")
    labels = torch.as_tensor(labels, device=embeddings.device)
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise ValueError(f"labels must be (N,) = ({len(embeddings)},), got shape {tuple(labels.shape)}")
    n = len(embeddings)
    if n < 2 or labels.unique().numel() < 2:
        raise ValueError(f"retrieval needs at least 2 images of at least 2 classes (got {n} images, "
                         f"{labels.unique().numel()} classes): every query is then trivially a hit or has no neighbour")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or k < 1 or k > n - 1 for k in ks):
        raise ValueError(f"ks={ks}: each K must be an integer in [1, N - 1] = [1, {n - 1}] (a query's neighbours "
                         "are the other N - 1 images)")
    features = embeddings.float()
    k_max = max(ks)
    hits = {k: 0 for k in ks}
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=features.device)
        distance = torch.cdist(features[rows], features)  # (chunk, N)
        # a query is not its own neighbour
        distance[torch.arange(len(rows), device=distance.device), rows] = float("inf")
        neighbours = torch.sort(distance, dim=1, stable=True).indices[:, :k_max]
        same = labels[neighbours] == labels[rows, None]  # (chunk, k_max)
        for k in ks:
            hits[k] += int(same[:, :k].any(dim=1).sum())
    return {f"recall_at_{k}": 100.0 * hits[k] / n for k in ks}


def encoder_recall_at_k(encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor, view,
                        device: torch.device, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K of a frozen encoder over `images` (uint8, N x C x H x W) of the unseen classes,
    through the deterministic evaluation view (lab.views.EvalView), in eval mode."""
    from lab.evaluate import extract_features

    features = extract_features(encoder, images, view, device)
    return recall_at_k(features, labels.to(features.device), ks)
