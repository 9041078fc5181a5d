"""BA^2M: supervised classification with and without batch-aware attention (Cheng et al. 2021).

The paper inserts BA^2M into CNN blocks and reports lower CIFAR-100 / ImageNet error than the
plain networks and than classical attention modules. The grid is ba2m_blocks in {0, N} x seed,
method `supervised` (cross-entropy, lab/methods/supervised.py), every cell run; N is what the
scale's backbone affords (lab.backbones.block_count): at cpu scale the last 2 of convnet_small's 4
blocks (its 3 x 3 maps: the non-local branch on the 14 x 14 and 7 x 7 maps of the first blocks
would make a step about 4x as long instead of 1.5x), at gpu scale all 8 basic blocks of ResNet-18.
Scores are the lab's frozen-feature kNN and linear probe on the test split (BA^2M is the identity
at evaluation, lab/ba2m.py), beside each run's random encoder.

    python studies/ba2m.py [--scale smoke|cpu|gpu] [--out results/ba2m]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

BA2M_BLOCKS = {"smoke": 2, "cpu": 2, "gpu": 8}  # N: BA^2M after the last N blocks
SEEDS = {"smoke": [0], "cpu": [0, 1], "gpu": [0, 1]}


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="the batch")
    parser.add_argument("--ba2m-blocks", type=int, default=None,
                        help="N of the grid {0, N} (None: the scale's, " + ", ".join(
                            f"{k} {v}" for k, v in BA2M_BLOCKS.items()) + ")")


def plan(args) -> Plan:
    blocks = args.ba2m_blocks if args.ba2m_blocks is not None else BA2M_BLOCKS[args.scale]
    fixed = fixed_from(args, batch_size=args.batch_size, method="supervised")
    return Plan("ba2m", [Part("ba2m", fixed, {"ba2m_blocks": [0, blocks], "seed": seeds_of(args, SEEDS[args.scale])})])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/ba2m", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
