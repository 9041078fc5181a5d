"""DINO's teacher temperature tau_t: fixed for the whole run, or warmed up linearly from 0.04 (Caron et al.
2021, Sec. 5.3 and Appendix).

The paper: tau_t between 0.04 and 0.07 works; fixed at 0.08 or above, training degrades (the teacher's
outputs are too flat to sharpen the student) unless tau_t is warmed up from 0.04 (over 30 epochs). The grid is
tau_t x schedule x seed with the scale's budget (3 epochs at cpu scale, the warm-up over the first 2; 30 at
gpu scale); tau_t = 0.04 with a warm-up from 0.04 is the fixed run again and is not run twice.

    python studies/dino_teacher_temperature.py [--scale smoke|cpu|gpu] [--out results/dino_teacher_temperature]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

START = 0.04  # the warm-up's first tau_t (the paper's)
GRID = {  # final tau_t, and the warm-up's epochs (0: fixed)
    "smoke": dict(tau=[0.04, 0.1], warmup=[0, 1], seed=[0]),
    "cpu": dict(tau=[0.04, 0.07, 0.1], warmup=[0, 2], seed=[0, 1]),
    "gpu": dict(tau=[0.04, 0.05, 0.06, 0.07, 0.08, 0.1], warmup=[0, 30], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid, seeds = GRID[args.scale], seeds_of(args, GRID[args.scale]["seed"])
    fixed = fixed_from(args, method="dino", dino_teacher_temperature_start=START)
    warm = [t for t in grid["tau"] if t != START]
    return Plan("dino_teacher_temperature", [
        Part("dino_fixed", fixed, dict(dino_teacher_temperature=grid["tau"], dino_teacher_warmup_epochs=[0],
                                       seed=seeds), folder="fixed"),
        Part("dino_warmup", fixed, dict(dino_teacher_temperature=warm, dino_teacher_warmup_epochs=grid["warmup"][1:],
                                        seed=seeds), folder="warmup"),
    ], report="dino_teacher_temperature")


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/dino_teacher_temperature", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
