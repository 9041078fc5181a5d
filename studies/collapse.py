"""Collapse ablations the papers report, as data: each run records its collapse signal.

- SimSiam (Chen & He 2021, Sec. 4.1-4.2): without stop-gradient and without the predictor
  the representation collapses (kNN at chance, per-dimension std of the normalised output -> 0).
- BYOL (Grill et al. 2020, Table 5b): without the predictor the representation collapses.
- MoCo (He et al. 2020, Table 4): momentum m = 0 (the key encoder a copy of the query
  encoder) fails to train.
- DINO (Caron et al. 2021, Sec. 5.3, Fig. 7): without centring the teacher collapses to one
  dimension (its output entropy -> 0), without sharpening to the uniform distribution
  (entropy -> log K).

Four small grids (one per method) in subfolders of --out, then one report. Every run's row
holds knn_top1 beside chance_top1, embedding_std_ratio (std of the l2-normalised embedding
per dimension x sqrt(d): ~1 spread out, ~0 collapsed) and the `collapsed` flag; DINO's
history holds the teacher entropy per epoch. A NaN loss ends a run with status
'diverged: ...' and the study goes on.

    python studies/collapse.py [--scale smoke|cpu|gpu] [--out results/collapse]
"""

from __future__ import annotations

import sys
from pathlib import Path

from studies.runner import run_study, study_arguments

ABLATIONS = {
    "simsiam": dict(stop_gradient=[True, False], predictor=[True, False]),
    "byol": dict(predictor=[True, False]),
    "moco": dict(moco_momentum=[0.99, 0.0]),
    "dino": dict(centering=[True, False], sharpening=[True, False]),
}


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0], "results/collapse")
    parser.add_argument("--methods", default=",".join(ABLATIONS), help="comma-separated subset of " + ",".join(ABLATIONS))
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds)) if args.seeds else [0]
    fixed = dict(scale=args.scale, dataset=args.dataset, data_root=args.data_root, workers=args.workers,
                 threads=args.threads)
    out = Path(args.out)
    for method in args.methods.split(","):
        if method not in ABLATIONS:
            raise SystemExit(f"--methods: {method!r} has no ablation here; choose from {sorted(ABLATIONS)}")
        run_study(f"collapse_{method}", {**fixed, "method": method}, {**ABLATIONS[method], "seed": seeds},
                  out / method)

    from analysis.collapse_report import write_collapse_report

    print(f"report: {write_collapse_report(out)}")


if __name__ == "__main__":
    sys.exit(main())
