"""The numbers a GPU user compares: CIFAR-10 SimCLR with ResNet-18 (CIFAR stem) at batch 512, images/s of the
step and of the loop, and the epoch time, for each precision (fp32 / bf16 autocast) x memory format
(contiguous / channels_last) x torch.compile (eager / inductor) setting, side by side in one run.

Without a CUDA device it says so and exits 0 (CI has none). Without CIFAR-10 on disk (the lab's data root, or
--data-root) it measures on synthetic images written in CIFAR-10's own format and shape (50 000 training
images of 3 x 32 x 32; throughput does not depend on what the pixels show), and says so.

    python bench/gpu.py [--steps 50] [--loop-steps 98] [--no-compile] [--json results/bench_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

CIFAR10_TRAIN_IMAGES = 50_000


def _cifar10(data_root: str | None, synthetic_images: int) -> tuple[str | None, str]:
    """(data_root to read CIFAR-10 from, what it is): the real one where it loads, else synthetic files."""
    from lab.data import load_split
    from lab.errors import DatasetError

    try:
        load_split("cifar10", "train", root=data_root)
        return data_root, "CIFAR-10"
    except DatasetError:
        from tests.fixtures import write_cifar10

        root = Path(tempfile.mkdtemp(prefix="lab-bench-cifar10-"))
        write_cifar10(root, per_batch=synthetic_images // 5)
        return str(root), "synthetic images in CIFAR-10's format (CIFAR-10 is not on this machine)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="timed steps of the step alone, per setting")
    parser.add_argument("--loop-steps", type=int, default=98, help="steps of the loop's epoch, per setting "
                        "(98 x 512 = all of CIFAR-10's training images)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try this script's own code path")
    parser.add_argument("--synthetic-images", type=int, default=CIFAR10_TRAIN_IMAGES,
                        help="training images written when CIFAR-10 is not on disk")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: torch sees no CUDA device on this machine; nothing measured (run it where "
              "torch.cuda.is_available())")
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: bench/ and tests/ beside lab/
    from bench.throughput import SETTING_HEADER, each_setting
    from lab.config import RunConfig
    from lab.data import load_split

    data_root, what = _cifar10(args.data_root, args.synthetic_images)
    cfg = RunConfig(method="simclr", scale="gpu", dataset="cifar10", backbone="resnet18_cifar",
                    batch_size=args.batch_size, epochs=1, train_subset=args.batch_size * args.loop_steps,
                    eval_subset=1000, test_subset=500, linear_epochs=1, device=args.device, data_root=data_root)
    images = load_split("cifar10", "train", root=data_root).images[:cfg.train_subset]
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.device} (a trial of the code path)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; {cfg.method}, resnet18_cifar, batch "
          f"{cfg.batch_size}, on {what}")
    print(f"{SETTING_HEADER} {'epoch s':>8s} {'warm-up s':>9s} {'graphs':>6s}")
    rows = []
    for row, cells in each_setting(cfg, images, args.steps, not args.no_compile):
        epoch_s = CIFAR10_TRAIN_IMAGES / row["loop_images_per_s"]
        rows.append(dict(row, epoch_s=epoch_s))
        print(f"{cells} {epoch_s:8.1f} {row['warmup_s']:9.1f} {row['graphs']:6d}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "data": what, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
