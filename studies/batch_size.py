"""Batch size: SimCLR (negatives from the batch) vs SimSiam (no negatives).

SimCLR's accuracy grows with the batch because its negatives are the batch (Chen et al.
2020, Fig. 9); SimSiam's is flat from 64 to 2048 (Chen & He 2021, Table 2). The grid is
method x batch size x seed, every cell run (Optuna's GridSampler under Ray Tune); the
learning rate follows the linear scaling rule (lr = base_lr x B / 256) as in both papers,
and every run has the same number of epochs.

    python studies/batch_size.py [--scale smoke|cpu|gpu] [--out results/batch_size]
    ray job submit --working-dir . -- python studies/batch_size.py --scale smoke
"""

from __future__ import annotations

import sys

from studies.runner import run_study, study_arguments

GRID = {  # batch sizes and seeds per scale
    "smoke": dict(batch_size=[32, 128], seed=[0]),
    "cpu": dict(batch_size=[64, 256, 1024], seed=[0, 1]),
    "gpu": dict(batch_size=[64, 128, 256, 512, 1024, 2048], seed=[0, 1, 2]),
}


def main(argv: list[str] | None = None) -> None:
    args = study_arguments(__doc__.splitlines()[0], "results/batch_size").parse_args(argv)
    grid = dict(GRID[args.scale])
    if args.seeds:
        grid["seed"] = list(range(args.seeds))
    fixed = dict(scale=args.scale, dataset=args.dataset, data_root=args.data_root, workers=args.workers,
                 threads=args.threads)
    space = dict(method=["simclr", "simsiam"], **grid)
    results, history = run_study("batch_size", fixed, space, args.out)

    from analysis.report import write_batch_size_report

    report = write_batch_size_report(args.out)
    print(f"results: {results}\nhistory: {history}\nreport:  {report}")


if __name__ == "__main__":
    sys.exit(main())
