"""Batch size: SimCLR (negatives from the batch) vs SimSiam (no negatives).

SimCLR's accuracy grows with the batch because its negatives are the batch (Chen et al.
2020, Fig. 9); SimSiam's is flat from 64 to 2048 (Chen & He 2021, Table 2). The grid is
method x batch size x seed, every cell run (studies.runner under Ray Tune); the
learning rate follows the scale's scaling rule (sqrt at smoke / cpu, linear at gpu scale, as
in both papers), and every run has the same number of epochs.

    python studies/batch_size.py [--scale smoke|cpu|gpu] [--out results/batch_size]
    ray job submit --working-dir . -- python studies/batch_size.py --scale smoke
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {  # batch sizes and seeds per scale
    "smoke": dict(batch_size=[32, 128], seed=[0]),
    "cpu": dict(batch_size=[64, 256, 1024], seed=[0, 1]),
    "gpu": dict(batch_size=[64, 128, 256, 512, 1024, 2048], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    return Plan("batch_size", [Part("batch_size", fixed_from(args), dict(method=["simclr", "simsiam"], **grid))])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/batch_size", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
