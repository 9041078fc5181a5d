"""Clustering evaluation: NMI, ACC (Hungarian matching) and ARI of predicted cluster indices
against the true classes, as Contrastive Clustering (Li et al., AAAI 2021, Sec. "Experiments")
and the deep-clustering literature report them. All three are fractions in [0, 1] (ARI can be
negative, down to -1/2 ... 0 for worse-than-chance agreement), not percentages.

With the contingency table n_ij = #{samples of class i in cluster j}, row sums a_i, column
sums b_j, n samples:

- NMI = I(T; C) / ((H(T) + H(C)) / 2): mutual information over the arithmetic mean of the two
  entropies (sklearn's `normalized_mutual_info_score` default, average_method="arithmetic";
  the log base cancels). 1.0 when both labelings put everything into one group (sklearn's limit
  case); 0.0 when I = 0 otherwise.
- ACC = max over one-to-one maps m from clusters to classes of #{t: m(c_t) = y_t} / n, solved by
  scipy.optimize.linear_sum_assignment on the (rectangular) contingency table, so the number
  of clusters may differ from the number of classes: unmatched clusters count as errors.
- ARI (Hubert & Arabie 1985) = (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E),
  E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2). The denominator is 0 only when both labelings
  are one group or both all singletons, i.e. identical partitions: 1.0 (sklearn's limit case).

`cluster_scores` runs a method's `assign_clusters` over a dataset (the training loop's
evaluation calls it beside kNN and the linear probe).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from lab.device import autocast
from lab.evaluate import evaluation_inputs


def _labels(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"labels must be a 1-d array, got shape {x.shape}")
    return x


def contingency(true, pred) -> np.ndarray:
    """n_ij: rows = the distinct true labels (sorted), columns = the distinct predicted ones."""
    true, pred = _labels(true), _labels(pred)
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true labels but {len(pred)} predictions")
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(true, pred) -> float:
    """Normalised mutual information, arithmetic-mean normalisation."""
    table = contingency(true, pred)
    if table.shape[0] == table.shape[1] == 1 or table.size == 0:
        return 1.0
    n = table.sum()
    a, b = table.sum(1), table.sum(0)
    i, j = np.nonzero(table)
    nij = table[i, j].astype(np.float64)
    mi = float((nij / n * np.log(nij * n / (a[i].astype(np.float64) * b[j]))).sum())
    if mi <= 0.0:
        return 0.0
    return mi / ((_entropy(a) + _entropy(b)) / 2)


def clustering_accuracy(true, pred) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (Hungarian algorithm)."""
    table = contingency(true, pred)
    if table.size == 0:
        return 1.0
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def _pairs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1) / 2).sum())


def ari(true, pred) -> float:
    """Adjusted Rand index."""
    table = contingency(true, pred)
    n = float(table.sum())
    together = _pairs(table)
    rows, cols = _pairs(table.sum(1)), _pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    denominator = (rows + cols) / 2 - expected
    if denominator == 0:
        return 1.0
    return (together - expected) / denominator


@torch.no_grad()
def cluster_scores(method, images_uint8: torch.Tensor, labels: torch.Tensor, eval_view, device: torch.device,
                   batch_size: int = 512, precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """cluster_nmi / cluster_acc / cluster_ari of `method.assign_clusters` on a dataset.

    images_uint8: N x C x H x W uint8; eval_view: lab.views.EvalView (uint8 -> normalised float).
    Returns {} for methods that do not cluster (assign_clusters returns None).
    """
    assigned = []
    for _, x in evaluation_inputs(images_uint8, eval_view, device, batch_size, channels_last):
        with autocast(device, precision):  # the method's own cluster head: computed as it trains
            clusters = method.assign_clusters(x)
        if clusters is None:
            return {}
        assigned.append(clusters.cpu())
    if not assigned:
        return {}
    pred = torch.cat(assigned)
    return {"cluster_nmi": nmi(labels, pred), "cluster_acc": clustering_accuracy(labels, pred),
            "cluster_ari": ari(labels, pred)}
