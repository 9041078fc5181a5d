"""Projection head: SimCLR's representation with no head, a linear head or a non-linear (MLP) one, and the
head's output width (Chen et al. 2020, Fig. 8).

The paper's non-linear head is about 3 points above the linear one and about 10 above none, whatever the
output width. Two parts: the linear and the MLP head over the output widths, and the run without a head
(z is the backbone's output, so it has no width of its own); SimCLR, batch 256, the scale's budget (3
epochs at cpu scale). Scores are of the backbone's output h, below the head, as in the paper.

    python studies/projection_head.py [--scale smoke|cpu|gpu] [--out results/projection_head]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(head_out_dim=[32], seed=[0]),
    "cpu": dict(head_out_dim=[32, 128, 512], seed=[0]),
    "gpu": dict(head_out_dim=[32, 64, 128, 256, 512, 2048], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid, seeds = GRID[args.scale], seeds_of(args, GRID[args.scale]["seed"])
    fixed = fixed_from(args, method="simclr", batch_size=256)
    return Plan("projection_head", [
        Part("projection_head_widths", fixed, dict(head=["linear", "mlp"], head_out_dim=grid["head_out_dim"],
                                                    seed=seeds), folder="heads"),
        Part("projection_head_none", dict(fixed, head="none"), dict(seed=seeds), folder="none"),
    ], report="projection_head")


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/projection_head", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
