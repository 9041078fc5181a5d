"""Small studies for tests/test_study.py to kill and restore: a grid (method x batch size) and a searched one
(TPE over the temperature), both on a few hundred images.

    python -m tests.small_study grid|grid_more_seeds|search OUT
"""

import sys

from ray import tune

from analysis.report import write_report
from studies.runner import run_study

FIXED = dict(scale="smoke", batch_size=32, train_subset=256, eval_subset=128, test_subset=64, linear_epochs=1,
             epochs=2, threads=1)
SPACES = {
    "grid": ({"method": ["simclr", "simsiam"], "batch_size": [32, 64], "seed": [0]}, None),
    "grid_more_seeds": ({"method": ["simclr", "simsiam"], "batch_size": [32, 64], "seed": [0, 1]}, None),
    "search": ({"temperature": tune.loguniform(0.05, 1.0)}, 4),
}
SAMPLES = SPACES["search"][1]

if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    space, samples = SPACES[kind]
    fixed = {**FIXED, **({"method": "simclr"} if kind == "search" else {})}
    run_study("small_" + kind.split("_")[0], fixed, space, out, num_samples=samples, seed=0, max_concurrent=2,
              report="batch_size" if kind.startswith("grid") else None)
    write_report(out)
