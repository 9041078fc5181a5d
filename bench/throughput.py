"""Throughput, measured side by side in one run (images/s, one image = its two views).

  step alone     : optimisation_step on pre-augmented views (no data, no augmentation)
  plain loop     : lab.train.train, the epoch's training throughput
  TorchTrainer(1): the same loop under ray.train.torch.TorchTrainer with 1 worker (target >= 0.95 x plain)
  augmentation   : TrainViews alone on uint8 batches (target >= 3 x the step)

    python bench/throughput.py [--scale cpu] [--method simclr] [--batch-size 256] [--steps 150] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lab.config import RunConfig
from lab.data import load_split
from lab.methods import build_method
from lab.optim import build_optimizer
from lab.train import optimisation_step, train
from lab.views import TrainViews, view_config_for


def step_alone(cfg: RunConfig, images: torch.Tensor, steps: int) -> float:
    method = build_method(cfg, images.shape[1], len(images))
    optimizer = build_optimizer(cfg, method)
    views = TrainViews(cfg.dataset, images.shape[-1], view_config_for(cfg))(images[:cfg.batch_size])
    for _ in range(3):
        optimisation_step(method, optimizer, views, None, 0, 1)
    start = time.perf_counter()
    for _ in range(steps):
        optimisation_step(method, optimizer, views, None, 0, 1)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def augmentation_alone(cfg: RunConfig, images: torch.Tensor, steps: int) -> float:
    views = TrainViews(cfg.dataset, images.shape[-1], view_config_for(cfg))
    batches = [images[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(steps)]
    views(batches[0])
    start = time.perf_counter()
    for batch in batches:
        views(batch)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = RunConfig(method=args.method, scale=args.scale, batch_size=args.batch_size, epochs=1,
                    train_subset=args.batch_size * args.steps, eval_subset=1000, test_subset=500, linear_epochs=1,
                    threads=args.threads, device="cpu")
    torch.set_num_threads(args.threads)
    images = load_split(cfg.dataset, "train").images[:cfg.train_subset]

    figures = {"step alone": step_alone(cfg, images, min(args.steps, 30))}
    figures["plain loop"] = train(cfg, progress=False)["history"][0]["images_per_s"]

    import ray

    from lab.ray_train import train_distributed

    ray.init(num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
    import tempfile

    with tempfile.TemporaryDirectory() as storage:
        result = train_distributed(cfg.replace(workers=1), storage=storage, name="bench")
    ray.shutdown()
    figures["TorchTrainer (1 worker)"] = result["history"][0]["images_per_s"]
    figures["augmentation alone"] = augmentation_alone(cfg, images, args.steps)

    step = figures["step alone"]
    print(f"\n{cfg.method} at {cfg.scale} scale ({cfg.backbone}), batch {cfg.batch_size}, {args.threads} threads, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'':26s} {'images/s':>10s} {'x step':>8s}")
    for name, value in figures.items():
        print(f"{name:26s} {value:10.0f} {value / step:8.2f}")
    print(f"TorchTrainer / plain loop  {figures['TorchTrainer (1 worker)'] / figures['plain loop']:.3f}  (target >= 0.95)")
    print(f"augmentation / step        {figures['augmentation alone'] / step:.2f}  (target >= 3)")
    print(f"plain loop / step          {figures['plain loop'] / step:.3f}  (target >= 0.85)")
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
