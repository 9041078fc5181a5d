"""Throughput, measured side by side in one run (images/s, one image = its two views).

Part 1, the loop against its step (the run's settings: precision auto, channels_last, no compile):
  step alone     : optimisation_step on pre-augmented views (no data, no augmentation)
  plain loop     : lab.train.train, the epoch's training throughput (target >= 0.9 x the step)
  TorchTrainer(1): the same loop under ray.train.torch.TorchTrainer with 1 worker (target >= 0.95 x plain)
  augmentation   : TrainViews alone on uint8 batches (target >= 3 x the step)

Part 2, how the step computes, for each backbone: precision (fp32 / bf16 autocast) x memory format
(contiguous / channels_last) x torch.compile (eager / inductor), step and loop images/s, and the fraction of
the machine's matmul peak each reaches. The peak is a 4096 x 4096 matmul in fp32 and in bf16; the step's
FLOP per image are counted by torch.utils.flop_counter over one optimisation step (forward and backward,
both views), so fraction = images/s x FLOP per image / peak of that precision. Compile time is reported
apart (the first steps), with the number of graphs dynamo compiled (a recompilation storm shows there).

    python bench/throughput.py [--method simclr] [--batch-size 256] [--steps 30] [--loop-steps 30] [--threads 2]
                               [--resnet-steps 6] [--backbones convnet_small,resnet18_cifar] [--no-ray]
                               [--no-compile]

ResNet-18 steps about 50 times slower than convnet_small on 2 cores, so it gets --resnet-steps for its step
and its loop alike (8 settings of 30 steps each would take about 45 minutes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from lab.config import RunConfig
from lab.data import load_split
from lab.device import in_memory_format, resolve_device, resolve_precision
from lab.methods import build_method
from lab.optim import build_optimizer
from lab.train import optimisation_step, train
from lab.views import TrainViews, view_config_for


def matmul_peak(dtype: torch.dtype, side: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a side x side matmul in `dtype` (the best of `repeats`)."""
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * side ** 3 / best / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _method_and_views(cfg: RunConfig, images: torch.Tensor):
    device = resolve_device(cfg.device)
    method = build_method(cfg, images.shape[1], len(images)).to(device)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.compile:
        method.encoder.compile()
    optimizer = build_optimizer(cfg, method)
    views = TrainViews(cfg.dataset, images.shape[-1], view_config_for(cfg))(images[:cfg.batch_size].to(device),
                                                                            method.n_views)
    return method, optimizer, [in_memory_format(v, cfg.channels_last) for v in views]


def step_flop_per_image(cfg: RunConfig, images: torch.Tensor) -> float:
    """FLOP of one optimisation step (forward + backward) per image, counted in fp32 eager."""
    from torch.utils.flop_counter import FlopCounterMode

    method, optimizer, views = _method_and_views(cfg.replace(precision="fp32", compile=False), images)
    with FlopCounterMode(display=False) as counter:
        optimisation_step(method, optimizer, views, None, 0, 1, precision="fp32")
    return counter.get_total_flops() / cfg.batch_size


def step_alone(cfg: RunConfig, images: torch.Tensor, steps: int, precision: str) -> tuple[float, float, int]:
    """(images/s of the step, seconds of the 3 warm-up steps (compile included), graphs dynamo compiled)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    method, optimizer, views = _method_and_views(cfg, images)
    device = views[0].device
    start = time.perf_counter()
    for _ in range(3):
        optimisation_step(method, optimizer, views, None, 0, 1, precision=precision)
    _synchronize(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        optimisation_step(method, optimizer, views, None, 0, 1, precision=precision)
    _synchronize(device)
    return steps * cfg.batch_size / (time.perf_counter() - start), warmup_s, int(counters["stats"]["unique_graphs"])


def loop(cfg: RunConfig) -> float:
    """The loop's images/s over one epoch of cfg.train_subset images."""
    torch._dynamo.reset()
    return train(cfg, progress=False)["history"][0]["images_per_s"]


SETTING_HEADER = f"{'precision':>9s} {'layout':>14s} {'compile':>8s} {'step img/s':>11s} {'loop img/s':>11s} " \
                 f"{'loop/step':>9s}"


def each_setting(cfg: RunConfig, images: torch.Tensor, steps: int, with_compile: bool = True):
    """For precision (fp32, bf16) x layout (contiguous, channels_last) x compile (eager, inductor), side by side:
    a row of the setting, its step's and its loop's images/s, the step's warm-up (compile included) and the graphs
    dynamo compiled; and the row's first cells as printed under SETTING_HEADER."""
    for precision, channels_last, compiled in itertools.product(("fp32", "bf16"), (False, True),
                                                               (False, True) if with_compile else (False,)):
        setting = cfg.replace(precision=precision, channels_last=channels_last, compile=compiled)
        step_rate, warmup_s, graphs = step_alone(setting, images, steps, precision)
        loop_rate = loop(setting)
        row = dict(precision=precision, channels_last=channels_last, compile=compiled, step_images_per_s=step_rate,
                   loop_images_per_s=loop_rate, warmup_s=warmup_s, graphs=graphs)
        yield row, (f"{precision:>9s} {'channels_last' if channels_last else 'contiguous':>14s} "
                    f"{'inductor' if compiled else 'eager':>8s} {step_rate:11.0f} {loop_rate:11.0f} "
                    f"{loop_rate / step_rate:9.2f}")


def augmentation_alone(cfg: RunConfig, images: torch.Tensor, steps: int) -> float:
    views = TrainViews(cfg.dataset, images.shape[-1], view_config_for(cfg))
    batches = [images[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(steps)]
    views(batches[0])
    start = time.perf_counter()
    for batch in batches:
        views(batch)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def loop_against_step(cfg: RunConfig, images: torch.Tensor, steps: int, ray_too: bool) -> dict[str, float]:
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    figures = {"step alone": step_alone(cfg, images, min(steps, 30), precision)[0], "plain loop": loop(cfg)}
    if ray_too:
        import tempfile

        import ray

        from lab.ray_train import train_distributed

        ray.init(num_cpus=(cfg.threads or 1) + 1, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory() as storage:
            result = train_distributed(cfg.replace(workers=1), storage=storage, name="bench")
        ray.shutdown()
        figures["TorchTrainer (1 worker)"] = result["history"][0]["images_per_s"]
    figures["augmentation alone"] = augmentation_alone(cfg, images, steps)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of the step alone, per setting")
    parser.add_argument("--loop-steps", type=int, default=30, help="steps of the loop's epoch, per setting")
    parser.add_argument("--resnet-steps", type=int, default=6, help="steps of resnet18_cifar's step and loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", default="convnet_small,resnet18_cifar")
    parser.add_argument("--no-ray", action="store_true", help="leave out the TorchTrainer figure")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile settings")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = RunConfig(method=args.method, scale=args.scale, batch_size=args.batch_size, epochs=1,
                     train_subset=args.batch_size * args.loop_steps, eval_subset=1000, test_subset=500, linear_epochs=1,
                     threads=args.threads, device="cpu")
    images = load_split(base.dataset, "train").images[:base.batch_size * max(args.loop_steps, args.steps,
                                                                              args.resnet_steps)]

    report: dict[str, object] = {"method": base.method, "batch_size": base.batch_size, "threads": args.threads}
    figures = loop_against_step(base, images, args.steps, not args.no_ray)
    step = figures["step alone"]
    print(f"\nPart 1: {base.method} ({base.backbone}), batch {base.batch_size}, {args.threads} threads, the run's "
          f"settings (precision {base.precision}, channels_last {base.channels_last})")
    print(f"{'':26s} {'images/s':>10s} {'x step':>8s}")
    for name, value in figures.items():
        print(f"{name:26s} {value:10.0f} {value / step:8.2f}")
    report["part1"] = figures

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    report["matmul_peak_gflops"] = peaks
    print(f"\nmatmul peak (4096^2, {args.threads} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    rows = []
    for backbone in args.backbones.split(","):
        steps = args.resnet_steps if backbone.startswith("resnet") else args.steps
        loop_steps = args.resnet_steps if backbone.startswith("resnet") else args.loop_steps
        cfg = base.replace(backbone=backbone, train_subset=base.batch_size * loop_steps)
        flop = step_flop_per_image(cfg, images)
        print(f"\nPart 2: {backbone}: {flop / 1e9:.3f} GFLOP per image per step (forward + backward, both views)")
        print(f"{SETTING_HEADER} {'x fp32':>7s} {'% peak':>7s} {'warm-up s':>9s} {'graphs':>6s}")
        reference = None
        for row, cells in each_setting(cfg, images, steps, not args.no_compile):
            step_rate = row["step_images_per_s"]
            reference = reference or step_rate
            fraction = step_rate * flop / (peaks[row["precision"]] * 1e9)
            rows.append(dict(backbone=backbone, **row, flop_per_image=flop, fraction_of_peak=fraction))
            print(f"{cells} {step_rate / reference:7.2f} {100 * fraction:6.1f}% {row['warmup_s']:9.1f} "
                  f"{row['graphs']:6d}", flush=True)
    report["part2"] = rows
    print("\ntargets: convnet_small step >= 2 x its fp32 contiguous eager step; loop >= 0.9 x step; "
          "resnet18_cifar >= 25 % of the bf16 peak")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
