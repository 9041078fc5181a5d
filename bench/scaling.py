"""Scaling, measured side by side in one run on this machine (issue 15, item 9):

  workers     : one SimCLR trial's loop images/s with 1 worker x 2 threads against 2 Ray Train workers
                (gloo) x 1 thread, the same global batch, the gradients averaged in one all_reduce after
                backward and in DDP's 25 MB buckets launched during backward (grad_bucket_mb)
  tune        : on a smoke grid of 4 trials, 2 at a time: each trial's wall time inside its process (its row's
                ended_at - started_at: data, the loop, both evaluations), the loop's training in it (wall_s),
                and what is left of the study's 2-slot wall time per trial (actor start, imports, scheduling)
  autoscaling : the wall time of a 4-cell smoke grid on one 2-CPU node against a cluster of 1-CPU nodes that
                an autoscaler adds (0 to 2; tests.processes.LocalAutoscalingRay, Ray's fake_multinode provider)

    python bench/scaling.py [--out results/bench_scaling] [--batch-size 256] [--train-subset 7680]

Each part starts and stops its own Ray (in its own process session for the autoscaling one: no other Ray on
the machine is touched). The figures are printed and written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--scale", "smoke", "--set", "train_subset=256", "--set", "eval_subset=128", "--set", "test_subset=64",
         "--set", "linear_epochs=1", "--set", "epochs=2", "--set", "threads=1"]


def _sweep(out: Path, extra: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds of `python -m studies.sweep ...` into `out` (a fresh folder)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "studies.sweep", "--method", "simclr", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench/scaling.py: the sweep into {out} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def _rows(out: Path) -> list[dict]:
    import polars as pl

    return pl.read_parquet(out / "results.parquet").to_dicts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench_scaling")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-subset", type=int, default=7680, help="training images of the workers part")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: --out {out} is not empty: give a new folder")
    sys.path.insert(0, str(ROOT))
    from tests.processes import LocalAutoscalingRay, test_env

    figures: dict[str, float] = {}
    # workers: 1 x 2 threads against 2 x 1 thread, one epoch of the same images at the same global batch
    for workers, threads, bucket_mb in ((1, 2, 0), (2, 1, 0), (2, 1, 25)):
        folder = out / (f"workers_{workers}x{threads}" + (f"_buckets_{bucket_mb}mb" if bucket_mb else ""))
        _sweep(folder, ["--scale", "cpu", "--grid", f"batch_size={args.batch_size}", "--set", "epochs=1",
                        "--set", f"train_subset={args.train_subset}", "--set", "linear_epochs=1",
                        "--set", f"workers={workers}", "--set", f"threads={threads}",
                        "--set", f"grad_bucket_mb={bucket_mb}"], test_env())
        how = "" if workers == 1 else f", {bucket_mb} MB buckets in backward" if bucket_mb else ", one all_reduce"
        figures[f"loop images/s, {workers} worker(s) x {threads} thread(s){how}"] = _history_rate(folder)
    # tune: overhead per trial on a 4-cell smoke grid (one node, 2 CPUs)
    folder = out / "tune_overhead"
    total = _sweep(folder, [*SMOKE, "--grid", "batch_size=32,64", "--seeds", "2"], test_env())
    rows = _rows(folder)
    inside = [r["ended_at"] - r["started_at"] for r in rows]
    figures["trial wall inside the trial process, s (mean)"] = sum(inside) / len(inside)
    figures["of which the loop's training, s (mean wall_s)"] = sum(r["wall_s"] for r in rows) / len(rows)
    # the rest of a trial's cost: actor start, imports, scheduling, the driver's bookkeeping (2 trials at once)
    figures["Tune's overhead per trial, s ((study wall x 2 - sum of trial walls) / trials)"] = (
        (2 * total - sum(inside)) / len(rows))
    figures["smoke grid of 4 cells on one 2-CPU node, s"] = total
    # autoscaling: the same grid on 1-CPU nodes the autoscaler adds
    cluster = LocalAutoscalingRay(worker_cpus=1, max_workers=2, idle_timeout_s=10)
    try:
        figures["smoke grid of 4 cells on 0-2 autoscaled 1-CPU nodes, s"] = _sweep(
            out / "autoscaled", [*SMOKE, "--grid", "batch_size=32,64", "--seeds", "2"], cluster.env())
    finally:
        cluster.stop()
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        print(f"{name:{width}s} {value:10.1f}")
    (out / "summary.json").write_text(json.dumps(figures, indent=1))


def _history_rate(folder: Path) -> float:
    """The training images/s of the run's one epoch, from the study's history table."""
    import polars as pl

    return float(pl.read_parquet(folder / "history.parquet")["images_per_s"][0])


if __name__ == "__main__":
    main()
