"""VAT positives for metric learning (document 003): Recall@1 on unseen classes vs the radius
epsilon of the virtual adversarial positive, with (epsilon > 0) and without (epsilon = 0) VAT,
and its weight lambda.

Zero-shot protocol: training sees the first half of the classes (N-pair sampling: one pair
per class, so a Fashion-MNIST batch holds 5 pairs), Recall@{1,2,4,8} is measured among the
test images of the other half. epsilon is a pixel-space l2 radius on normalised images: the
document's ranges (2-10 on CUB, 7-32 on Cars, 224 x 224 x 3 inputs) correspond, per pixel, to
about 0.15-0.7 and 0.5-2.3 on 28 x 28 x 1 images (x sqrt(784 / 150528)); the grid spans both.

    python studies/vat_epsilon.py [--scale smoke|cpu|gpu] [--loss npair|triplet] [--dataset cub200|cars196]
"""

from __future__ import annotations

import sys

from lab.data import DATASETS
from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

GRID = {
    "smoke": dict(vat_epsilon=[0.0, 1.0], vat_lambda=[1.0], seed=[0]),
    "cpu": dict(vat_epsilon=[0.0, 0.25, 1.0, 4.0], vat_lambda=[0.5, 2.0], seed=[0, 1]),
    "gpu": dict(vat_epsilon=[0.0, 2.0, 4.0, 8.0, 16.0, 32.0], vat_lambda=[0.5, 1.0, 2.0], seed=[0, 1, 2]),
}
# training images per run (the scale's default where absent: all of the seen classes) and epochs, per scale
BUDGET = {"smoke": dict(train_subset=2048, epochs=1), "cpu": dict(train_subset=12000, epochs=1), "gpu": {}}


def add_arguments(parser) -> None:
    parser.add_argument("--loss", choices=["npair", "triplet"], default="npair", help="the metric-learning loss")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="2 x classes per batch (None: every seen class once: 10 for Fashion-MNIST)")


def plan(args) -> Plan:
    batch = args.batch_size or 2 * (DATASETS[args.dataset].num_classes // 2)
    grid = dict(GRID[args.scale], seed=seeds_of(args, GRID[args.scale]["seed"]))
    fixed = fixed_from(args, method="metric", metric_loss=args.loss, class_split="half", batch_size=batch,
                       **BUDGET[args.scale])
    return Plan("vat_epsilon", [Part("vat_epsilon", fixed, grid)])


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/vat_epsilon", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
