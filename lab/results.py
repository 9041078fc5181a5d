"""The lab's one results schema, declared once.

One row per run: every knob as a column (lab.config's declarations, so any figure can group by any
knob; None where the run's method has no such knob), then the scores on the held-out test split
beside the random encoder's on the same protocol (SCORES: each also as random_<name>), the
collapse signal, the cost and the status (RUN_COLUMNS), and the columns methods add
(Method.result_schema). One row per run and epoch in the history table. `analysis/` reads exactly
these columns.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import polars as pl

from lab.collapse import collapse_reason, std_ratio
from lab.config import knob_table
from lab.methods import METHODS

# Scores on the test split (% unless said), each also measured on the run's randomly initialised encoder.
SCORES: dict[str, str] = {
    "knn_top1": "weighted kNN top-1 on frozen features",
    "linear_top1": "linear-probe top-1 on frozen features",
    "classifier_top1": "the method's own classifier (supervised fine-tuning)",
    "cluster_nmi": "NMI of the method's own clusters (in [0, 1])",
    "cluster_acc": "clustering accuracy after the best one-to-one matching (Hungarian, in [0, 1])",
    "cluster_ari": "adjusted Rand index of the method's clusters",
    **{f"{layer}recall_at_{k}": f"Recall@{k} of the unseen classes (class_split='half') on the "
                                f"{'trained embedding layer' if layer else 'encoder'}"
       for layer in ("", "fc_") for k in (1, 2, 4, 8)},
}
RUN_COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "chance_top1": (pl.Float64, "100 / classes"),
    "epochs_done": (pl.Int64, "epochs trained"),
    "final_loss": (pl.Float64, "the last epoch's mean loss"),
    "monitor_knn_top1": (pl.Float64, "kNN top-1 on the monitoring subsets after the last epoch trained: what a "
                                     "study's scheduler compares, and the only score of a trial stopped early"),
    "embedding_std": (pl.Float64, "per-dimension std of the l2-normalised embedding: ~1/sqrt(d) healthy, ~0 collapsed"),
    "embedding_std_ratio": (pl.Float64, "embedding_std x sqrt(d): ~1 healthy, ~0 collapsed"),
    "collapsed": (pl.Boolean, "lab.collapse's tests or the method's own flag the run (null when it diverged)"),
    "diverged": (pl.Boolean, "the loss became NaN or infinite (status says at which step); no scores then"),
    "collapse_reason": (pl.Utf8, "why the run counts as collapsed ('' when it does not)"),
    "wall_s": (pl.Float64, "training time (evaluation excluded), summed over resumed sessions"),
    "resumed_from_epoch": (pl.Int64, "the epoch the run last resumed from (null: it ran in one go)"),
    "train_data_source": (pl.Utf8, "the folder (or file) the training images were read from"),
    "test_data_source": (pl.Utf8, "the folder (or file) the test images were read from"),
    "precision_used": (pl.Utf8, "fp32 or bf16: what the precision knob meant on the run's device (lab.device)"),
    "node": (pl.Utf8, "the Ray node a study's trial ran on: hostname (node IP) node id (empty outside a study)"),
    "started_at": (pl.Float64, "when a study's trial started (Unix seconds; NaN outside a study)"),
    "ended_at": (pl.Float64, "when a study's trial wrote its row (Unix seconds; NaN outside a study)"),
    "status": (pl.Utf8, "ok / diverged: ... / failed: ... / stopped early at epoch k / unfinished"),
    "fingerprint": (pl.Utf8, "lab.config.RunConfig.fingerprint"),
    "trial_id": (pl.Utf8, "the study's trial (or the run folder's name)"),
}
_DTYPES = {"float": pl.Float64, "int": pl.Int64, "str": pl.Utf8, "bool": pl.Boolean}


def _knob_dtype(knob) -> pl.DataType:
    if knob.kind is tuple:
        return pl.List(pl.Int64 if knob.item is int else pl.Float64)
    return {int: pl.Int64, float: pl.Float64, str: pl.Utf8, bool: pl.Boolean}[knob.kind]


def method_columns() -> dict[str, pl.DataType]:
    columns: dict[str, pl.DataType] = {}
    for cls in METHODS.values():
        columns.update({name: _DTYPES[kind] for name, kind in cls.result_schema.items()})
    return columns


def result_columns() -> dict[str, pl.DataType]:
    """Every column of the results table, in order: knobs, scores and their random_ twins, the run's, the methods'."""
    return {**{name: _knob_dtype(knob) for name, knob in knob_table().knobs.items()},
            **{name: pl.Float64 for score in SCORES for name in (score, f"random_{score}")},
            **{name: dtype for name, (dtype, _) in RUN_COLUMNS.items()}, **method_columns()}


def run_row(cfg, final_scores: dict[str, float], random_scores: dict[str, float], history: list[dict[str, Any]],
            chance_top1: float, method_reason: str | None, extra: dict[str, Any], status: str,
            wall_s: float) -> dict[str, Any]:
    """A finished (or diverged) run's row; `history` rides along for the history table."""
    last = history[-1] if history else {}
    std, dim = last.get("embedding_std", math.nan), last.get("embedding_dim") or 0
    knn = final_scores.get("knn_top1", math.nan)
    diverged = status.startswith("diverged")
    reason = "" if diverged else (collapse_reason(std, dim, knn, chance_top1) or method_reason or "")
    row = {
        **cfg.to_row(),
        **{name: scores.get(score, math.nan) for score in SCORES
           for name, scores in ((score, final_scores), (f"random_{score}", random_scores))},
        "chance_top1": chance_top1,
        "epochs_done": len(history),
        "final_loss": last.get("loss", math.nan),
        "monitor_knn_top1": last.get("monitor_knn_top1", math.nan),
        "embedding_std": std,
        "embedding_std_ratio": std_ratio(std, dim) if dim else math.nan,
        "collapsed": None if diverged else bool(reason),  # a diverged run is neither collapsed nor healthy
        "collapse_reason": reason,
        "diverged": diverged,
        "wall_s": wall_s,
        "status": status,
        "fingerprint": cfg.fingerprint(),
        **extra,
        "history": history,
    }
    return row


def error_text(error: BaseException) -> str:
    """An error in one line, 'Type: message': the innermost cause of a wrapped error (Ray wraps a trial's
    exception in its own), terminal colour codes and tracebacks left out (the trial's log keeps them)."""
    import re

    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("Traceback", "  File"))]
    message = lines[-1].strip() if lines else ""
    if message.startswith(type(error).__name__ + ":"):
        message = message[len(type(error).__name__) + 1:].strip()
    return f"{type(error).__name__}: {message}"[:1000]


def failed_row(knobs: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """The row of a run that could not start or failed: its knobs as given, the error in one line."""
    return {**knobs, "status": f"failed: {error_text(error)}", "error_type": type(error).__name__, "history": []}


def result_row(metrics: dict[str, Any], trial_id: str = "") -> dict[str, Any]:
    """A stored row (a trial's metrics, a result.json) in the schema: missing scores are NaN."""
    columns = result_columns()
    row = {name: metrics.get(name) for name in columns}
    row["trial_id"] = trial_id
    for name, dtype in columns.items():
        if dtype == pl.Float64 and row[name] is None:
            row[name] = math.nan
    return row


def results_frame(rows: Iterable[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=result_columns(), strict=False)


def history_rows(row: dict[str, Any], history: list[dict[str, Any]], keys: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per epoch, with the run's identity (trial, method, seed, scale, dataset, fingerprint) and the
    study's swept knobs (`keys`)."""
    identity = ["trial_id", "method", "seed", "scale", "dataset", "fingerprint", *keys]
    ids = {k: row.get(k) for k in dict.fromkeys(identity)}
    return [{**ids, **epoch} for epoch in history]
