"""Collapse ablations the papers report, as data: each run records its collapse signal.

- SimSiam (Chen & He 2021, Sec. 4.1-4.2): without stop-gradient and without the predictor
  the representation collapses (kNN at chance, per-dimension std of the normalised output -> 0).
- BYOL (Grill et al. 2020, Table 5b): without the predictor the representation collapses.
- MoCo (He et al. 2020, Table 4): momentum m = 0 (the key encoder a copy of the query
  encoder) fails to train.
- DINO (Caron et al. 2021, Sec. 5.3, Fig. 7): without centring the teacher collapses to one
  dimension (its output entropy -> 0), without sharpening to the uniform distribution
  (entropy -> log K).

Each ablation is its own small study (a subfolder of --out): the ablated method with one switch
changed, the other knobs those of studies/methods.py, so that its defaults' row there (or
--with-defaults here) is the comparison. Every run's row holds knn_top1 beside chance_top1,
embedding_std_ratio (std of the l2-normalised embedding per dimension x sqrt(d): ~1 spread out,
~0 collapsed) and the `collapsed` flag; DINO's history holds the teacher entropy per epoch. A
NaN loss ends a run with status 'diverged: ...' and the study goes on.

    python studies/collapse.py [--scale smoke|cpu|gpu] [--out results/collapse]
"""

from __future__ import annotations

import sys
from pathlib import Path

from studies.runner import run_study, study_arguments

ABLATIONS = {  # name -> (method, the switch the paper turns)
    "simsiam_no_stop_gradient": ("simsiam", dict(stop_gradient=False)),
    "simsiam_no_predictor": ("simsiam", dict(predictor=False)),
    "byol_no_predictor": ("byol", dict(predictor=False)),
    "moco_momentum_0": ("moco", dict(moco_momentum=0.0)),
    "dino_no_centering": ("dino", dict(centering=False)),
    "dino_no_sharpening": ("dino", dict(sharpening=False)),
}
DEFAULTS = {"simsiam_default": ("simsiam", {}), "byol_default": ("byol", {}), "moco_default": ("moco", {}),
            "dino_default": ("dino", {})}


def main(argv: list[str] | None = None) -> None:
    parser = study_arguments(__doc__.splitlines()[0], "results/collapse")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="comma-separated subset of " + ",".join(ABLATIONS))
    parser.add_argument("--with-defaults", action="store_true", help="also run each method with its defaults")
    parser.add_argument("--baseline", action="append", default=[],
                        help="a methods study folder whose default runs the report shows beside the ablations")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds)) if args.seeds else [0]
    fixed = dict(scale=args.scale, dataset=args.dataset, data_root=args.data_root, workers=args.workers,
                 threads=args.threads)
    chosen = args.ablations.split(",")
    unknown = sorted(set(chosen) - set(ABLATIONS))
    if unknown:
        raise SystemExit(f"--ablations: {unknown} unknown; choose from {sorted(ABLATIONS)}")
    runs = {name: ABLATIONS[name] for name in chosen}
    if args.with_defaults:
        runs.update({n: v for n, v in DEFAULTS.items() if any(v[0] == m for m, _ in runs.values())})
    out = Path(args.out)
    for name, (method, switch) in runs.items():
        run_study(f"collapse_{name}", {**fixed, "method": method, **switch}, {"seed": seeds}, out / name)

    from analysis.collapse_report import write_collapse_report

    print(f"report: {write_collapse_report(out, tuple(args.baseline))}")


if __name__ == "__main__":
    sys.exit(main())
