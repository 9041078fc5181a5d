"""Small studies for tests/test_study.py and tests/test_autoscaling.py to run, kill, restore and extend, on a
few hundred images: a grid (method x batch size), the same grid with a third batch size, a pair of batch sizes
(tests/test_object_store.py), and a search (TPE over the temperature with two seeds under each point and ASHA).

    python -m tests.small_study grid|grid_more_batches|pair|search_seeds OUT [STORAGE]
"""

import os
import sys

from ray import tune

from analysis.report import write_report
from studies.runner import run_study

FIXED = dict(scale="smoke", train_subset=256, eval_subset=128, test_subset=64, linear_epochs=1, epochs=2, threads=1)
SPACES = {  # kind -> (space, samples, scheduler, more fixed knobs)
    "grid": ({"method": ["simclr", "simsiam"], "batch_size": [32, 64], "seed": [0]}, None, "none", {}),
    "grid_more_batches": ({"method": ["simclr", "simsiam"], "batch_size": [32, 64, 16], "seed": [0]}, None, "none",
                          {}),
    # the pair's trials take every CPU, so they run one at a time: a driver killed at the first "done" has not
    # finished the other (side by side, both often finished within the kill's poll: nothing was left to resume)
    "pair": ({"method": ["simclr"], "batch_size": [32, 64], "seed": [0]}, None, "none", {"threads": os.cpu_count()}),
    "search_seeds": ({"temperature": tune.loguniform(0.05, 1.0), "seed": [0, 1]}, 4, "asha",
                     {"method": "simclr", "batch_size": 32, "epochs": 4}),
}


def check_asha_study(out, console: str, points: int = 4) -> None:
    """What a TPE study of `points` points x 2 seeds under ASHA (4 epochs, grace 1) named small_search must show:
    every point on both seeds, the trials ASHA stopped as rows `stopped early at epoch k` with their last monitor
    score and history (not `unfinished`), each point's mean told to Optuna, and a quiet progress table."""
    import math

    import optuna
    import polars as pl
    import pytest

    from studies.search import STORAGE_FILE, open_study

    results = pl.read_parquet(out / "results.parquet")
    assert len(results) == 2 * points and sorted(results["seed"].to_list()) == [0] * points + [1] * points
    assert results.group_by("temperature").len()["len"].to_list() == [2] * points
    stopped = results.filter(pl.col("status").str.starts_with("stopped early at epoch"))
    finished = results.filter(pl.col("status") == "ok")
    assert len(stopped) >= 1 and len(stopped) + len(finished) == 2 * points, results["status"].to_list()
    for row in stopped.iter_rows(named=True):
        assert row["status"] == f"stopped early at epoch {row['epochs_done']}" and row["epochs_done"] < 4
        assert row["monitor_knn_top1"] > 0 and math.isnan(row["knn_top1"])
    assert (finished["epochs_done"] == 4).all()
    history = pl.read_parquet(out / "history.parquet")
    epochs = dict(history.group_by("trial_id").len().rows())
    assert all(epochs[r["trial_id"]] == r["epochs_done"] for r in results.iter_rows(named=True))
    trials = open_study(out / STORAGE_FILE, "small_search", 0).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == points, [(t.number, t.state.name, t.params, t.value) for t in trials]
    for trial in complete:
        cells = results.filter(pl.col("temperature") == trial.params["temperature"])
        scores = [r["knn_top1"] if r["status"] == "ok" else r["monitor_knn_top1"]
                  for r in cells.iter_rows(named=True)]
        assert trial.value == pytest.approx(sum(scores) / 2)
    # the progress table names the swept knobs and the score; no result box per trial, no checkpoint chatter
    assert "temperature" in console and "score" in console and "seed" in console
    assert "Checkpoint successfully created" not in console and "Result for" not in console
    assert "[lab] [temperature=" in console  # in-trial progress headed by the trial's knobs


if __name__ == "__main__":
    kind, out, storage = sys.argv[1], sys.argv[2], (sys.argv[3:] or [None])[0]
    space, samples, scheduler, more = SPACES[kind]
    run_study("small_" + kind.split("_")[0], {**FIXED, **more}, space, out, num_samples=samples, seed=0,
              max_concurrent=2, report="batch_size" if kind.startswith(("grid", "pair")) else None, scheduler=scheduler,
              grace_epochs=1, storage=storage)
    write_report(out)
