"""Every method on the same budget: the lab's table of methods.

Each method with its own paper's knobs (temperatures: each method's `defaults`), the same data,
backbone, views, optimiser recipe and epochs; kNN and linear top-1 on the test split beside the
random encoder's, and the collapse signal.

    python studies/methods.py [--scale smoke|cpu|gpu] [--out results/methods]
"""

from __future__ import annotations

import sys

from lab.errors import ConfigError
from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

METHODS = ["simclr", "moco", "supcon", "pcl", "swav", "contrastive_clustering", "simsiam", "byol", "barlow_twins",
           "vicreg", "dino", "rotation", "jigsaw", "context_prediction"]
SEEDS = {"smoke": [0], "cpu": [0], "gpu": [0, 1, 2]}


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="the batch of every method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")


def plan(args) -> Plan:
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"--methods: {unknown} are not in this study; choose from {METHODS}")
    space = {"method": methods, "seed": seeds_of(args, SEEDS[args.scale])}
    return Plan("methods", [Part("methods", fixed_from(args, batch_size=args.batch_size), space)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/methods", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
