"""Barlow Twins' lambda, the weight of the redundancy-reduction (off-diagonal) terms against the invariance
(diagonal) terms of eq. 1, at two widths of the projector (Zbontar et al. 2021, Fig. 4 and Sec. 4).

The paper's lambda = 0.0051 sits in a flat range from about 0.002 to 0.02, and a wider projector helps. The
off-diagonal terms grow with the square of the width d, so the lambda that balances the two terms moves with
d; the grid is lambda (log-spaced, a decade either side of the paper's) x width x seed with the scale's
budget (3 epochs at cpu scale), one part per width (the projector's hidden and output widths are set
together, as in the paper's 8192-8192-8192).

    python studies/barlow_lambda.py [--scale smoke|cpu|gpu] [--out results/barlow_lambda]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {  # lambda, and the projector's widths (hidden = output)
    "smoke": dict(barlow_lambda=[0.0051, 0.05], width=[64], seed=[0]),
    "cpu": dict(barlow_lambda=[0.0005, 0.002, 0.0051, 0.02, 0.08], width=[128, 512], seed=[0]),
    "gpu": dict(barlow_lambda=[0.0005, 0.001, 0.002, 0.0051, 0.01, 0.02, 0.05], width=[2048, 8192],
                seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid, seeds = GRID[args.scale], seeds_of(args, GRID[args.scale]["seed"])
    return Plan("barlow_lambda", [
        Part(f"barlow_lambda_width_{w}", fixed_from(args, method="barlow_twins", head_hidden_dim=w, head_out_dim=w),
             dict(barlow_lambda=grid["barlow_lambda"], seed=seeds), folder=f"width_{w}")
        for w in grid["width"]], report="barlow_lambda")


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/barlow_lambda", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
