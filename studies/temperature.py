"""Temperature: how the softmax temperature tau of a contrastive loss moves the result, for SimCLR (negatives
from the batch), MoCo v2 (negatives from a queue) and SupCon (positives from the labels).

SimCLR's Table 5 (batch 4096, 100 epochs) peaks at tau = 0.1 and loses about 4 points at 0.05 and 0.5 and 6
at 1.0; MoCo v2 trains at 0.2 and SupCon at 0.1. The grid is method x tau x seed, every cell run with the
scale's budget (3 epochs at cpu scale, batch 256); the other knobs are each method's defaults. A dense grid,
not a search: five values a decade and a half apart show the curve's peak and both flanks, and the
methods share them, so the three curves are read at the same points.

    python studies/temperature.py [--scale smoke|cpu|gpu] [--out results/temperature]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(method=["simclr", "moco"], temperature=[0.1, 0.5], seed=[0]),
    "cpu": dict(method=["simclr", "moco", "supcon"], temperature=[0.05, 0.1, 0.2, 0.5, 1.0], seed=[0]),
    "gpu": dict(method=["simclr", "moco", "supcon"], temperature=[0.05, 0.1, 0.2, 0.5, 1.0], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    return Plan("temperature", [Part("temperature", fixed_from(args, batch_size=256), grid)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/temperature", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
