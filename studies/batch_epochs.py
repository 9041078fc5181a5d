"""SimCLR's batch size x epochs (Chen et al. 2020, Fig. 9): larger batches help most when training is short,
and the gap closes as the epochs grow.

The figure sweeps the budget with the batch: batch 256 at 100 epochs gives 57.5, batch 8192 at 800 epochs
69.0. The grid is batch x epochs x seed, so each cell's number of optimiser steps is epochs x images / batch,
as in the paper; the learning rate follows the scale's scaling rule (square root below gpu scale, as in the
paper's Appendix B.1 for small batches; linear with LARS at gpu scale in the paper, the lab's SGD here).

    python studies/batch_epochs.py [--scale smoke|cpu|gpu] [--out results/batch_epochs]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(batch_size=[32, 128], epochs=[1, 2], seed=[0]),
    "cpu": dict(batch_size=[64, 256, 1024], epochs=[1, 3, 9], seed=[0]),
    "gpu": dict(batch_size=[256, 512, 1024, 2048, 4096], epochs=[100, 200, 400, 800], seed=[0]),
}


def plan(args) -> Plan:
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    return Plan("batch_epochs", [Part("batch_epochs", fixed_from(args, method="simclr"), grid)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/batch_epochs", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
