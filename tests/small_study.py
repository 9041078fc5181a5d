"""Small studies for tests/test_study.py to kill, restore and extend, on a few hundred images: a grid
(method x batch size), the same grid with a second seed, and searched ones (TPE over the temperature; with
two seeds under each point and ASHA).

    python -m tests.small_study grid|grid_more_seeds|search|search_seeds OUT
"""

import sys

from ray import tune

from analysis.report import write_report
from studies.runner import run_study

FIXED = dict(scale="smoke", train_subset=256, eval_subset=128, test_subset=64, linear_epochs=1, epochs=2, threads=1)
SPACES = {  # kind -> (space, samples, scheduler, more fixed knobs)
    "grid": ({"method": ["simclr", "simsiam"], "batch_size": [32, 64], "seed": [0]}, None, "none", {}),
    "grid_more_seeds": ({"method": ["simclr", "simsiam"], "batch_size": [32, 64], "seed": [0, 1]}, None, "none", {}),
    "search": ({"temperature": tune.loguniform(0.05, 1.0)}, 4, "none", {"method": "simclr", "batch_size": 32}),
    "search_seeds": ({"temperature": tune.loguniform(0.05, 1.0), "seed": [0, 1]}, 4, "asha",
                     {"method": "simclr", "batch_size": 32, "epochs": 4}),
}
SAMPLES = SPACES["search"][1]

if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    space, samples, scheduler, more = SPACES[kind]
    run_study("small_" + kind.split("_")[0], {**FIXED, **more}, space, out, num_samples=samples, seed=0,
              max_concurrent=2, report="batch_size" if kind.startswith("grid") else None, scheduler=scheduler,
              grace_epochs=1)
    write_report(out)
