"""The collapse rule every run is judged by (SimSiam, Chen & He 2021, Fig. 2), and its thresholds.

A run counts as collapsed when the per-dimension std of its l2-normalised embedding, times sqrt(d),
falls below a tenth of what a spread-out embedding has (about 1), or when its kNN top-1 lies within
5 points of chance. Methods add their own signals (Method.collapse_reason: DINO's teacher entropy).
"""

from __future__ import annotations

import math

COLLAPSE_STD_RATIO = 0.1
COLLAPSE_KNN_MARGIN = 5.0


def std_ratio(std: float, dim: int) -> float:
    """embedding_std x sqrt(d): ~1 for embeddings spread over the sphere, ~0 for one point."""
    return std * math.sqrt(dim) if dim else float("nan")


def collapse_reason(std: float, dim: int, knn_top1: float, chance_top1: float) -> str | None:
    """Why the run counts as collapsed by the shared tests, or None."""
    ratio = std_ratio(std, dim)
    if ratio < COLLAPSE_STD_RATIO:
        return f"embedding std x sqrt(d) = {ratio:.3f} < {COLLAPSE_STD_RATIO}"
    if knn_top1 < chance_top1 + COLLAPSE_KNN_MARGIN:
        return f"kNN top-1 {knn_top1:.1f} within {COLLAPSE_KNN_MARGIN:g} points of chance ({chance_top1:.1f})"
    return None
