"""Batch-size robustness: BYOL (no negatives) against SimCLR (negatives from the batch) as the batch shrinks
(Grill et al. 2020, Fig. 3a).

From batch 4096 down to 256, BYOL loses 0.7 points and SimCLR 3.6; at 64 both are near 59. The grid is method
x batch x seed with the scale's number of epochs, so a smaller batch takes more optimiser steps; the learning
rate follows the scale's scaling rule (square root below gpu scale, linear at gpu scale, as in the paper).
The batch-size study (studies/batch_size.py) found that at 3 epochs the number of steps decides; this
study's report says where that holds here too.

    python studies/batch_robustness.py [--scale smoke|cpu|gpu] [--out results/batch_robustness]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(method=["byol", "simclr"], batch_size=[32, 128], seed=[0]),
    "cpu": dict(method=["byol", "simclr"], batch_size=[64, 128, 256, 512, 1024], seed=[0]),
    "gpu": dict(method=["byol", "simclr"], batch_size=[64, 128, 256, 512, 1024, 2048, 4096], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    return Plan("batch_robustness", [Part("batch_robustness", fixed_from(args), grid)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/batch_robustness", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
