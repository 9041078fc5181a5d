"""VICReg's coefficients: the invariance weight lambda over the variance weight mu, and the covariance weight
nu (Bardes et al. 2022, Sec. 4.3 and Appendix).

The paper trains at lambda = mu = 25 and nu = 1, and reports that the variance term is what prevents
collapse. The grid keeps mu = 25 and sweeps lambda (lambda / mu from 0.2 to 2) x nu x seed with the scale's
budget (3 epochs at cpu scale).

    python studies/vicreg_coefficients.py [--scale smoke|cpu|gpu] [--out results/vicreg_coefficients]
"""

from __future__ import annotations

import sys

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

MU = 25.0
GRID = {  # lambda (mu fixed) and nu
    "smoke": dict(vicreg_sim=[12.5, 25.0], vicreg_cov=[1.0], seed=[0]),
    "cpu": dict(vicreg_sim=[5.0, 12.5, 25.0, 50.0], vicreg_cov=[1.0, 4.0], seed=[0]),
    "gpu": dict(vicreg_sim=[5.0, 10.0, 25.0, 50.0, 100.0], vicreg_cov=[0.5, 1.0, 4.0], seed=[0, 1, 2]),
}


def plan(args) -> Plan:
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    return Plan("vicreg_coefficients", [Part("vicreg_coefficients", fixed_from(args, method="vicreg", vicreg_var=MU),
                                             grid)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/vicreg_coefficients", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
