"""A small searched study (TPE over the temperature) for tests/test_study.py to kill and restore.

    python -m tests.searched_study OUT
"""

import sys

from ray import tune

from studies.runner import run_study

FIXED = dict(scale="smoke", method="simclr", batch_size=64, train_subset=512, eval_subset=256, test_subset=128,
             linear_epochs=2, epochs=2, threads=1)
SAMPLES = 4

if __name__ == "__main__":
    run_study("searched_temperature", FIXED, {"temperature": tune.loguniform(0.05, 1.0)}, sys.argv[1],
              num_samples=SAMPLES, seed=0, max_concurrent=2)
