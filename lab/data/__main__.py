"""Fetch datasets into the lab's data root through torchvision's downloads, without root.

The data root is LAB_DATA, else ~/.cache/lab-data; a cluster node's set-up runs this (cluster/cluster.yaml).

    python -m lab.data fashion_mnist cifar10 [--root FOLDER]
"""

from __future__ import annotations

import argparse
import sys

from lab.data import DATASETS, DEFAULT_ROOT, load_split
from lab.errors import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.data", description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=sorted(DATASETS), metavar="DATASET",
                        help=f"one or more of {sorted(DATASETS)}")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the data root (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in args.datasets:
        for split in DATASETS[name].splits:
            try:
                images = load_split(name, split, args.root, download=True)
            except LabError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except OSError as exc:  # the download itself (no network, a proxy, a full disk)
                print(f"error: {name} {split} could not be downloaded into {args.root} ({exc}): check this machine's "
                      f"network, or put the dataset's files there yourself", file=sys.stderr)
                return 2
            print(f"[lab.data] {name} {split}: {len(images)} images from {images.source}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
