"""Momentum: how fast the momentum network follows the trained one, MoCo's key encoder (m, constant) beside
BYOL's target (tau_base, rising to 1 on a cosine over the run).

MoCo (K = 4096) fails at m = 0 and gives 55.2 / 57.8 / 59.0 / 58.9 at m = 0.9 / 0.99 / 0.999 / 0.9999: a key
encoder that moves slowly keeps the queue's keys consistent. BYOL trains at tau_base = 0.996. The grid is
method x m x seed with the scale's budget (3 epochs of batch 256 at cpu scale, about 700 steps); a horizon
1 / (1 - m) longer than the run (m = 0.999 is 1000 steps) leaves the momentum network near its initialisation,
so the cpu curve's right end is about the budget, not only about m: the closing note of each run says so.

    python studies/momentum.py [--scale smoke|cpu|gpu] [--out results/momentum]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {  # MoCo's m and BYOL's tau_base, per scale
    "smoke": dict(moco=[0.0, 0.99], byol=[0.99], seed=[0]),
    "cpu": dict(moco=[0.0, 0.9, 0.99, 0.999, 0.9999], byol=[0.9, 0.99, 0.996, 0.999], seed=[0]),
    "gpu": dict(moco=[0.0, 0.9, 0.99, 0.999, 0.9999], byol=[0.9, 0.99, 0.996, 0.999, 0.9999], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid, seeds = GRID[args.scale], seeds_of(args, GRID[args.scale]["seed"])
    fixed = fixed_from(args, batch_size=256)
    return Plan("momentum", [
        Part("momentum_moco", dict(fixed, method="moco"), dict(ema_momentum=grid["moco"], seed=seeds), folder="moco"),
        Part("momentum_byol", dict(fixed, method="byol"), dict(ema_momentum=grid["byol"], seed=seeds), folder="byol"),
    ], report="momentum")


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/momentum", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
