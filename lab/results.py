"""The lab's one results schema.

One row per run: every RunConfig field as a column (so any figure can group by any
knob), then the scores on the held-out test split beside the random encoder's on the
same protocol, the collapse signal, the cost and the status. One row per run and epoch
in the history table. `analysis/` reads exactly these columns.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import polars as pl

from lab.config import RunConfig

_POLARS_TYPES = {int: pl.Int64, float: pl.Float64, str: pl.Utf8, bool: pl.Boolean}


def _config_columns() -> dict[str, pl.DataType]:
    columns = {}
    for f in dataclasses.fields(RunConfig):
        default = f.default
        kind = type(default) if default is not None else None
        annotation = str(f.type)
        if kind is None:
            kind = int if "int" in annotation else float if "float" in annotation else str
        columns[f.name] = _POLARS_TYPES[kind]
    return columns


METRIC_COLUMNS: dict[str, pl.DataType] = {
    "knn_top1": pl.Float64,  # % on the test split, trained encoder
    "linear_top1": pl.Float64,
    "random_knn_top1": pl.Float64,  # same protocol, the run's randomly initialised encoder
    "random_linear_top1": pl.Float64,
    "chance_top1": pl.Float64,
    # methods with their own classifier (supervised fine-tuning): its test top-1 (%)
    "classifier_top1": pl.Float64,
    "random_classifier_top1": pl.Float64,
    # clustering methods only (NaN for the others): the method's own cluster assignment of the test split
    "cluster_nmi": pl.Float64,
    "cluster_acc": pl.Float64,  # in [0, 1] like NMI and ARI: after the best one-to-one matching of clusters to classes (Hungarian)
    "cluster_ari": pl.Float64,
    "random_cluster_nmi": pl.Float64,
    "random_cluster_acc": pl.Float64,
    "random_cluster_ari": pl.Float64,
    # class_split='half' only: Recall@K (%) of the unseen classes' test images among themselves, on the
    # encoder's features (recall_at_K) and, for metric learning, on its embedding layer (fc_recall_at_K)
    **{f"{prefix}{layer}recall_at_{k}": pl.Float64 for prefix in ("", "random_") for layer in ("", "fc_")
       for k in (1, 2, 4, 8)},
    "epochs_done": pl.Int64,
    "final_loss": pl.Float64,
    "embedding_std": pl.Float64,  # collapse signal: ~1/sqrt(d) healthy, ~0 collapsed
    "collapsed": pl.Boolean,  # lab.train.collapse_reason: std ratio < 0.1, kNN within 5 points of chance, or the method's own
    "collapse_reason": pl.Utf8,  # why the run counts as collapsed ("" when it does not)
    "embedding_std_ratio": pl.Float64,  # embedding_std * sqrt(d): ~1 healthy, ~0 collapsed
    "rai_positive_ratio": pl.Float64,  # PNDA: % of training images RAIS marks rotation-agnostic (RP)
    "rai_samples_png": pl.Utf8,  # PNDA: base64 PNG, 2 rows of RP images over 2 rows of RN images
    "wall_s": pl.Float64,  # training time (evaluation excluded), summed over resumed sessions
    "status": pl.Utf8,  # ok / diverged: ... / failed: ... / unfinished
    "fingerprint": pl.Utf8,
    "trial_id": pl.Utf8,
}
RESULT_COLUMNS: dict[str, pl.DataType] = {**_config_columns(), **METRIC_COLUMNS}


def result_row(metrics: dict[str, Any], trial_id: str = "") -> dict[str, Any]:
    row = {name: metrics.get(name) for name in RESULT_COLUMNS}
    row["trial_id"] = trial_id
    for name, dtype in RESULT_COLUMNS.items():
        if dtype == pl.Float64 and row[name] is None:
            row[name] = math.nan
    return row


def history_rows(row: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {k: row[k] for k in ("trial_id", "method", "batch_size", "seed", "scale", "dataset", "fingerprint")}
    return [{**keys, **epoch} for epoch in history]
