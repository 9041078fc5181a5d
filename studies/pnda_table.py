"""PNDA table (document 000, Tables 1-2): MoCo v2 / +PDA / +NDA / +PNDA with seeds.

One code path (method `pnda`, lab/methods/pnda.py), four settings of `pnda_mode`: none (MoCo
v2), pda (every rotated key a positive: 100 % positive ratio), nda (every rotated key a
negative: 0 %), pnda (RAIS decides per image). Linear top-1 of the frozen encoder on the
test split, the positive ratio RAIS found, and a grid of RAI / non-RAI images.

    python studies/pnda_table.py [--scale smoke|cpu|gpu] [--dataset cifar100|tiny_imagenet|fashion_mnist]
"""

from __future__ import annotations

import sys

from studies.runner import run_study, study_arguments

MODES = ["none", "pda", "nda", "pnda"]
SEEDS = {"smoke": [0], "cpu": [0, 1], "gpu": [0, 1, 2]}


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0], "results/pnda_table")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--queue-size", type=int, default=4096)
    args = parser.parse_args(argv)
    fixed = dict(method="pnda", scale=args.scale, dataset=args.dataset, data_root=args.data_root,
                 workers=args.workers, threads=args.threads, batch_size=args.batch_size, queue_size=args.queue_size)
    seeds = list(range(args.seeds)) if args.seeds else SEEDS[args.scale]
    run_study("pnda_table", fixed, {"pnda_mode": MODES, "seed": seeds}, args.out)

    from analysis.pnda_report import write_pnda_table_report

    print(f"report: {write_pnda_table_report(args.out)}")


if __name__ == "__main__":
    sys.exit(main())
