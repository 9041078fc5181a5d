"""Negatives: accuracy against the number of negatives K for MoCo's three mechanisms (He et al. 2020, Fig. 3):
end-to-end (the other keys of the batch, K = N - 1, so K is bounded by the batch), a memory bank (K features
sampled from one stored feature per image) and the queue (the last K keys of a momentum encoder).

The paper's three curves rise with K; end-to-end stops at the largest batch that fits (1024 on 8 GPUs), and
the memory bank trails the queue (58.0 vs 60.6 at K = 65536). Two parts, as in the paper: the queue and the
bank over K at batch 256, end-to-end over the batch size (its K); each with the scale's budget (3 epochs at
cpu scale). End-to-end at a smaller batch also takes more optimiser steps per epoch, as it does in the paper.

    python studies/negatives.py [--scale smoke|cpu|gpu] [--out results/negatives]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {  # K of the queue and the bank; end-to-end's batch sizes (K = N - 1)
    "smoke": dict(K=[256, 1024], end_to_end_batch=[64], seed=[0]),
    "cpu": dict(K=[256, 1024, 4096, 16384], end_to_end_batch=[64, 128, 256], seed=[0]),
    "gpu": dict(K=[256, 1024, 4096, 16384, 65536], end_to_end_batch=[256, 512, 1024], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid, seeds = GRID[args.scale], seeds_of(args, GRID[args.scale]["seed"])
    fixed = fixed_from(args, method="moco")
    return Plan("negatives", [
        Part("negatives_stored", dict(fixed, batch_size=256),
             dict(moco_variant=["queue", "memory_bank"], moco_queue_size=grid["K"], seed=seeds), folder="stored"),
        Part("negatives_end_to_end", dict(fixed, moco_variant="end_to_end"),
             dict(batch_size=grid["end_to_end_batch"], seed=seeds), folder="end_to_end"),
    ], report="negatives")


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/negatives", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
