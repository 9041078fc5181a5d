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
changed, the other knobs those of studies/methods.py; beside it the same method with its defaults
(<method>_default), the comparison every figure shows (--no-defaults leaves them out when
--baseline names a methods study whose default runs take their place). Every run's row holds knn_top1 beside chance_top1,
embedding_std_ratio (std of the l2-normalised embedding per dimension x sqrt(d): ~1 spread out,
~0 collapsed) and the `collapsed` flag; DINO's history holds the teacher entropy per epoch. A
NaN loss ends a run with status 'diverged: ...' and the study goes on.

    python studies/collapse.py [--scale smoke|cpu|gpu] [--out results/collapse]
"""

from __future__ import annotations

import sys
from pathlib import Path

from lab.errors import ConfigError
from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

ABLATIONS = {  # name -> (method, the switch the paper turns)
    "simsiam_no_stop_gradient": ("simsiam", dict(simsiam_stop_gradient=False)),
    "simsiam_no_predictor": ("simsiam", dict(predictor=False)),
    "byol_no_predictor": ("byol", dict(predictor=False)),
    "moco_momentum_0": ("moco", dict(ema_momentum=0.0)),
    "dino_no_centering": ("dino", dict(dino_centering=False)),
    "dino_no_sharpening": ("dino", dict(dino_sharpening=False)),
}
DEFAULTS = {"simsiam_default": ("simsiam", {}), "byol_default": ("byol", {}), "moco_default": ("moco", {}),
            "dino_default": ("dino", {})}


def add_arguments(parser) -> None:
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="comma-separated subset of " + ",".join(ABLATIONS))
    parser.add_argument("--no-defaults", action="store_true",
                        help="do not run each ablated method with its defaults (give --baseline instead)")
    parser.add_argument("--baseline", action="append", default=[],
                        help="a methods study folder whose default runs the report shows beside the ablations")


def plan(args) -> Plan:
    chosen = args.ablations.split(",")
    unknown = sorted(set(chosen) - set(ABLATIONS))
    if unknown:
        raise ConfigError(f"--ablations: {unknown} unknown; choose from {sorted(ABLATIONS)}")
    if args.no_defaults and not args.baseline:
        raise ConfigError("--no-defaults: give --baseline (a methods study folder) so that the report has the default "
                          "runs to compare the ablations with")
    runs = {name: ABLATIONS[name] for name in chosen}
    if not args.no_defaults:
        runs.update({n: v for n, v in DEFAULTS.items() if any(v[0] == m for m, _ in runs.values())})
    seeds = seeds_of(args, [0])
    parts = [Part(f"collapse_{name}", {**fixed_from(args), "method": method, **switch}, {"seed": seeds}, folder=name,
                  report="collapse") for name, (method, switch) in runs.items()]
    return Plan("collapse", parts, layout={"baselines": [str(Path(b).resolve()) for b in args.baseline]})


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/collapse", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
