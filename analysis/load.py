"""Reading the lab's result files (the schema of lab/results.py) with polars."""

from __future__ import annotations

from pathlib import Path

import polars as pl


class ResultsError(RuntimeError):
    pass


def read_results(study_dir: str | Path) -> pl.DataFrame:
    path = Path(study_dir) / "results.parquet"
    if not path.exists():
        raise ResultsError(f"{path}: no results yet. Fix: run the study first (python studies/<name>.py --out {study_dir})")
    return pl.read_parquet(path)


def read_history(study_dir: str | Path) -> pl.DataFrame:
    path = Path(study_dir) / "history.parquet"
    return pl.read_parquet(path) if path.exists() else pl.DataFrame()


def summarise(results: pl.DataFrame, by: list[str], metrics: list[str]) -> pl.DataFrame:
    """Mean, std and count over seeds of each metric, per group; only finished runs ('ok')."""
    ok = results.filter(pl.col("status") == "ok")
    aggregations = [pl.len().alias("runs")]
    for m in metrics:
        aggregations += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().fill_null(0.0).alias(f"{m}_std")]
    return ok.group_by(by).agg(aggregations).sort(by)
