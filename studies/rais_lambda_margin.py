"""RAIS knobs (document 000, eq. 2-4): the weight lambda of the entropy-separation loss and its
margin m, against the positive ratio RAIS produces and the downstream linear accuracy of PNDA.

A larger m widens the band of images that are neither learned from nor pushed apart and raises
the RAI threshold rho + m; lambda weighs the separation against the selective cross-entropy.
Each run trains RAIS (steps 1-2) as its stage, scores the training images (step 3), then PNDA on
MoCo v2.

    python studies/rais_lambda_margin.py [--scale smoke|cpu|gpu] [--out results/rais_lambda_margin]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(rais_lambda=[0.1, 1.0], rais_margin=[0.2], seed=[0]),
    # the default (lambda 1, m 0.2) is pnda_table's pnda row; here the corners around it
    "cpu": dict(rais_lambda=[0.1, 1.0], rais_margin=[0.1, 0.4], seed=[0]),
    "gpu": dict(rais_lambda=[0.1, 0.5, 1.0, 2.0], rais_margin=[0.1, 0.2, 0.3, 0.4, 0.5], seed=[0, 1]),
}


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=256)


def plan(args) -> Plan:
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    fixed = fixed_from(args, method="pnda", pnda_mode="pnda", batch_size=args.batch_size)
    return Plan("rais_lambda_margin", [Part("rais_lambda_margin", fixed, grid)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/rais_lambda_margin", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
