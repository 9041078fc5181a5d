"""Reading the lab's result files (the schema of lab/results.py) with polars."""

from __future__ import annotations

import json
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
    """Mean, std and count over seeds of each metric, per group; only finished runs ('ok').

    A NaN score is the results schema's "no such score" (e.g. a clustering NMI of a method that does not
    cluster): it is left out of the mean rather than turning it into NaN. The std is null, not 0, where fewer
    than two runs have the score: one seed has no spread, and a 0 would claim that it has none. Figures draw
    no error bar and tables print '–' for it."""
    ok = results.filter(pl.col("status") == "ok")
    aggregations = [pl.len().alias("runs")]
    for m in metrics:
        value = pl.col(m).fill_nan(None)
        aggregations += [value.mean().alias(f"{m}_mean"), value.std().alias(f"{m}_std")]
    return ok.group_by(by).agg(aggregations).sort(by)


def read_run(run_dir: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A `python -m lab.train` folder's result.json as a one-row results frame, and its history."""
    path = Path(run_dir) / "result.json"
    if not path.exists():
        raise ResultsError(f"{path}: no result yet. Fix: let the run finish (python -m lab.train --out {run_dir} ...)")
    row = json.loads(path.read_text())
    history = row.pop("history", []) or []
    row["trial_id"] = row.get("trial_id") or Path(run_dir).name
    identity = {k: row.get(k) for k in ("trial_id", "method", "seed", "scale", "dataset")}
    scalars = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
    return pl.DataFrame([scalars], infer_schema_length=None), pl.DataFrame([{**identity, **e} for e in history],
                                                                           infer_schema_length=None)
