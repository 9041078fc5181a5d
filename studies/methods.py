"""Every method on the same budget: the lab's table of methods.

Each method with its own paper's knobs (temperatures: lab.methods.*.knob_defaults),
the same data, backbone, views, optimiser recipe and epochs; kNN and linear top-1 on the test
split beside the random encoder's, and the collapse signal.

    python studies/methods.py [--scale smoke|cpu|gpu] [--out results/methods]
"""

from __future__ import annotations

import sys

from studies.runner import run_study, study_arguments

METHODS = ["simclr", "moco", "supcon", "pcl", "swav", "contrastive_clustering", "simsiam", "byol", "barlow_twins",
           "vicreg", "dino", "rotation", "jigsaw", "context_prediction"]
SEEDS = {"smoke": [0], "cpu": [0], "gpu": [0, 1, 2]}


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0], "results/methods")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset (default: all)")
    args = parser.parse_args(argv)
    fixed = dict(scale=args.scale, dataset=args.dataset, data_root=args.data_root, workers=args.workers,
                 threads=args.threads, batch_size=args.batch_size)
    seeds = list(range(args.seeds)) if args.seeds else SEEDS[args.scale]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: {unknown} are not in this study; choose from {METHODS}")
    run_study("methods", fixed, {"method": methods, "seed": seeds}, args.out)

    from analysis.report import write_methods_report

    report = write_methods_report(args.out)
    print(f"report: {report}")


if __name__ == "__main__":
    sys.exit(main())
