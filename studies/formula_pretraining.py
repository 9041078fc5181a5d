"""Formula-driven pretraining (document 002): does a classifier pretrained on generated
categories (FractalDB, Perlin noise: no natural image) fine-tune better on Fashion-MNIST with
few labels than training from scratch, and how does it compare with an SSL-pretrained encoder?

Stage 1 (pretraining, each a resumable run of the one loop in out/pretrain/<name>):
  fractaldb / perlin: supervised classification of the generated categories
  (lab.data.formula: 100 categories x 100 images at 28 px); simclr: SimCLR on the
  Fashion-MNIST training images without labels.
Stage 2 (fine-tuning, one study per label fraction in out/finetune_<percent>): supervised
cross-entropy on 1 %, 10 % or 100 % of the Fashion-MNIST training labels (class-stratified),
the whole network trained, its backbone initialised from each pretraining (init_from) or at
random (scratch); classifier_top1 is the fine-tuned classifier's test accuracy.

    python studies/formula_pretraining.py [--scale smoke|cpu|gpu] [--out results/formula_pretraining]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from studies.runner import Part, Plan, fixed_from, seeds_of, study_main

FRACTIONS = {"smoke": [0.1], "cpu": [0.01, 0.1, 1.0], "gpu": [0.01, 0.1, 1.0]}
SEEDS = {"smoke": [0], "cpu": [0, 1], "gpu": [0, 1, 2]}
# fine-tuning epochs per label fraction: about the same number of optimiser steps below 100 %
FINETUNE_EPOCHS = {"smoke": {0.1: 1}, "cpu": {0.01: 40, 0.1: 5, 1.0: 2}, "gpu": {0.01: 200, 0.1: 50, 1.0: 30}}
PRETRAIN = {  # name -> the pretraining run's knobs
    "fractaldb": dict(method="supervised", dataset="fractaldb"),
    "perlin": dict(method="supervised", dataset="perlin"),
    "simclr": dict(method="simclr", dataset="fashion_mnist"),
}
PRETRAIN_EPOCHS = {"smoke": 1, "cpu": 10, "gpu": 100}  # the supervised pretrainings; SimCLR: the scale's epochs


def add_arguments(parser) -> None:
    parser.add_argument("--pretrain-threads", type=int, default=os.cpu_count(),
                        help="torch threads of each (sequential) pretraining run (the default: every CPU)")


def plan(args) -> Plan:
    out = Path(args.out).resolve()
    runs = {}
    for name, knobs in PRETRAIN.items():
        runs[f"pretrain/{name}"] = dict(scale=args.scale, threads=args.pretrain_threads, precision=args.precision,
                                        **knobs,
                                        **({"epochs": PRETRAIN_EPOCHS[args.scale]} if knobs["method"] == "supervised"
                                           else {}),
                                        **({"data_root": args.data_root} if knobs["dataset"] == "fashion_mnist"
                                           else {}))
    inits = [str(out / folder) for folder in runs]
    seeds = seeds_of(args, SEEDS[args.scale])
    parts = [Part(f"formula_finetune_{fraction}",
                  fixed_from(args, method="supervised", label_fraction=fraction,
                             epochs=FINETUNE_EPOCHS[args.scale][fraction], batch_size=64),
                  {"init_from": [None, *inits], "seed": seeds}, folder=f"finetune_{round(fraction * 100)}pct",
                  report="formula_pretraining") for fraction in FRACTIONS[args.scale]]
    return Plan("formula_pretraining", parts, runs=runs, before_parts=write_samples)


def write_samples(out: Path) -> None:
    """A grid of generated images per set: 10 categories (rows) x 8 variants (columns)."""
    import torch
    from torchvision.utils import save_image

    from lab.data import FORMULA_TRAIN, load_split

    for kind in ("fractaldb", "perlin"):
        data = load_split(kind, "train")
        rows = [data.images[c * FORMULA_TRAIN + torch.arange(0, 8 * 4, 4)] for c in range(10)]
        save_image(torch.cat(rows).float() / 255, out / f"samples_{kind}.png", nrow=8, padding=2, pad_value=1.0)


def main(argv: list[str] | None = None) -> None:
    study_main(__doc__, "results/formula_pretraining", plan, add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
