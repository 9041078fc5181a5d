"""Augmentations: SimCLR's pair grid (Chen et al. 2020, Fig. 5), every transform alone and every ordered pair
of two, on one view while the other view is the image as it is (the paper's protocol for this figure).

The paper's grid runs from crop then colour (56.3, the best, and the pair its recipe is built on) to blur
then rotate (2.6); no single transform is enough, and composition helps. The grid is the ordered pairs of the
scale's transforms, the singles on the diagonal (`view_transforms`, lab/views.py: crop, cutout, colour,
sobel, noise, blur, rotate), SimCLR at batch 256 with the scale's budget (3 epochs at cpu scale, where four
transforms give 16 cells: the paper's best and worst pairs among them).

    python studies/augmentations.py [--scale smoke|cpu|gpu] [--out results/augmentations]
"""

from __future__ import annotations

import sys

from lab.views import TRANSFORMS
from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {  # the transforms whose singles and ordered pairs are run
    "smoke": dict(transforms=["crop", "colour"], seed=[0]),
    "cpu": dict(transforms=["crop", "colour", "blur", "rotate"], seed=[0]),
    "gpu": dict(transforms=list(TRANSFORMS), seed=[0]),
}


def cells(transforms: list[str]) -> list[str]:
    """Each transform alone, then each ordered pair of two different ones: view_transforms values."""
    return [*transforms, *(f"{a},{b}" for a in transforms for b in transforms if a != b)]


def plan(args) -> Plan:
    grid = GRID[args.scale]
    space = dict(view_transforms=cells(grid["transforms"]), seed=seeds_of(args, grid["seed"]))
    return Plan("augmentations", [Part("augmentations", fixed_from(args, method="simclr", batch_size=256), space)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/augmentations", plan, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
