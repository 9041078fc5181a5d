"""PNDA table (document 000, Tables 1-2): MoCo v2 / +PDA / +NDA / +PNDA with seeds.

One code path (method `pnda`, lab/methods/pnda.py), four settings of `pnda_mode`: none (MoCo
v2), pda (every rotated key a positive: 100 % positive ratio), nda (every rotated key a
negative: 0 %), pnda (RAIS decides per image: its stage runs first). Linear top-1 of the frozen
encoder on the test split, the positive ratio RAIS found, and a grid of RAI / non-RAI images.

    python studies/pnda_table.py [--scale smoke|cpu|gpu] [--dataset cifar100|tiny_imagenet|fashion_mnist]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

MODES = ["none", "pda", "nda", "pnda"]
SEEDS = {"smoke": [0], "cpu": [0, 1], "gpu": [0, 1, 2]}


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--queue-size", type=int, default=4096, help="MoCo's K (moco_queue_size)")


def plan(args) -> Plan:
    fixed = fixed_from(args, method="pnda", batch_size=args.batch_size, moco_queue_size=args.queue_size)
    return Plan("pnda_table", [Part("pnda_table", fixed, {"pnda_mode": MODES, "seed": seeds_of(args, SEEDS[args.scale])})])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/pnda_table", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
