"""A searched temperature study (TPE + ASHA) against the full grid, side by side in one run: the same
method, data, budget per trial and seeds; what each finds and what it spends.

  grid   : SimCLR's temperature on GRID_POINTS log-spaced values, every value on every seed, every epoch
  search : TPE over the same range (log-uniform) for SEARCH_POINTS points on the same seeds, ASHA stopping
           trials from a quarter of the epochs on the per-epoch monitor (held-out validation images)

Best score: the best point's mean test kNN top-1 over the seeds, among the points that finished on every seed
(a search whose scheduler stopped every point on some seed: its best point that finished on any, with the
seeds behind it said), and the grid's own score at the search's choice. Compute: trial-epochs, every trial's epochs trained summed. The target is a
search within 1 point of the grid's best for a third or less of its compute.

    python bench/search_vs_grid.py [--out results/bench_search_vs_grid] [--epochs 6] [--train-subset 10000]
        [--grid-points 10] [--search-points 8] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import polars as pl

GRID_POINTS, SEARCH_POINTS, LOW, HIGH = 10, 8, 0.03, 1.0


def best_point(results: pl.DataFrame, seeds: int) -> tuple[float, float, int]:
    """(temperature, mean test kNN, seeds behind it) of the best point among those that finished on every seed;
    where none did (ASHA stops trials one seed at a time), the best point that finished on any."""
    points = (results.filter(pl.col("status") == "ok").group_by("temperature")
              .agg(pl.col("knn_top1").mean().alias("score"), pl.len().alias("n"))
              .sort(["n", "score"], descending=[True, True]))
    complete = points.filter(pl.col("n") == seeds).sort("score", descending=True)
    best = complete if len(complete) else points.sort("score", descending=True)
    if not len(best):
        return math.nan, math.nan, 0
    return best["temperature"][0], best["score"][0], int(best["n"][0])


def grid_score_at(grid: pl.DataFrame, temperature: float) -> tuple[float, float]:
    """The grid's mean test kNN at its value nearest (in log) to `temperature`: how good the search's choice is
    by the grid's own measurement."""
    points = grid.filter(pl.col("status") == "ok").group_by("temperature").agg(pl.col("knn_top1").mean())
    nearest = min(points.rows(), key=lambda r: abs(math.log(r[0]) - math.log(temperature)))
    return nearest[0], nearest[1]


def main() -> None:
    from ray import tune

    from studies.runner import run_study

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/bench_search_vs_grid")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid-points", type=int, default=GRID_POINTS)
    parser.add_argument("--search-points", type=int, default=SEARCH_POINTS)
    args = parser.parse_args()
    out = Path(args.out)
    # the score is the kNN top-1: one epoch of linear probe (its 30 would be most of a short trial's time)
    fixed = dict(method="simclr", scale="cpu", epochs=args.epochs, train_subset=args.train_subset,
                 validation_images=1000, linear_epochs=1, threads=args.threads)
    seeds = list(range(args.seeds))
    grid = [round(LOW * (HIGH / LOW) ** (i / (args.grid_points - 1)), 4) for i in range(args.grid_points)]
    figures, frames = {}, {}
    for name, space, samples, scheduler in (
            ("grid", {"temperature": grid, "seed": seeds}, None, "none"),
            ("search", {"temperature": tune.loguniform(LOW, HIGH), "seed": seeds}, args.search_points, "asha")):
        started = time.perf_counter()
        results_path, _ = run_study(f"bench_{name}", fixed, space, out / name, num_samples=samples,
                                    scheduler=scheduler, max_concurrent=2, report="sweep")
        results = pl.read_parquet(results_path)
        temperature, score, n = best_point(results, len(seeds))
        frames[name] = results
        figures[name] = {"trials": len(results), "trial_epochs": int(results["epochs_done"].sum()),
                         "stopped_early": int(results["status"].str.starts_with("stopped early").sum()),
                         "best_temperature": temperature, "best_knn_top1": score, "best_seeds": n,
                         "wall_s": round(time.perf_counter() - started)}
    grid_f, search_f = figures["grid"], figures["search"]
    nearest, at_nearest = grid_score_at(frames["grid"], search_f["best_temperature"])
    summary = {
        **figures, "fixed": fixed, "seeds": seeds,
        "grid_at_search_choice": {"temperature": nearest, "knn_top1": at_nearest},
        "score_gap_points": round(grid_f["best_knn_top1"] - search_f["best_knn_top1"], 2),
        "compute_ratio": round(search_f["trial_epochs"] / grid_f["trial_epochs"], 3),
        "target_met": bool(grid_f["best_knn_top1"] - search_f["best_knn_top1"] <= 1.0
                           and search_f["trial_epochs"] <= grid_f["trial_epochs"] / 3),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'':8} {'trials':>7} {'trial-epochs':>13} {'stopped':>8} {'best T':>8} {'best kNN':>9} {'wall s':>7}")
    for name, f in figures.items():
        print(f"{name:8} {f['trials']:7d} {f['trial_epochs']:13d} {f['stopped_early']:8d} "
              f"{f['best_temperature']:8.4f} {f['best_knn_top1']:9.2f} {f['wall_s']:7d}")
    print(f"search / grid compute: {summary['compute_ratio']:.3f}; grid best - search best: "
          f"{summary['score_gap_points']:+.2f} points (search's best on {search_f['best_seeds']} of {len(seeds)} "
          f"seeds; the grid scores its choice, T = {nearest}, {at_nearest:.2f}); target met: {summary['target_met']}")


if __name__ == "__main__":
    main()
