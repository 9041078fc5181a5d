"""Precision and memory format (lab.device): what `auto` resolves to, every method's loss under bf16 autocast
against its fp32 value on fixed inputs, channels_last against the default layout, and what a run records.

The bf16 tolerance: 1 % of max(1, |loss|). Measured on these inputs (smoke configurations, convnet_small,
batch 32, one forward), the largest differences are 0.47 % (metric learning: triplets of bf16 distances) and
0.33 % (Barlow Twins: fp32 d x d statistics of bf16 projector outputs); 14 of the 18 methods are below 0.1 %.
A loss computed in bf16 itself fails the dtype check: every loss leaves autocast in float32 (SimSiam's
negative cosine and PNDA's logits did not, before this test).
"""

import copy

import pytest
import torch

from lab import device as device_module
from lab.config import RunConfig
from lab.device import autocast, in_memory_format, resolve_precision
from lab.errors import ConfigError
from lab.methods import METHODS, build_method
from lab.views import TrainViews, view_config_for

CPU = torch.device("cpu")
BF16_TOLERANCE = 0.01  # of max(1, |fp32 loss|)
METHOD_KNOBS = {  # what a method needs to be built on a batch of 32 at smoke scale
    "swav": {"swav_prototypes": 16},
    "metric": {"batch_size": 20},
}


def test_auto_is_bf16_where_the_device_has_fast_bf16_units(monkeypatch):
    for flags, expected in ((frozenset({"avx512f", "amx_bf16"}), "bf16"), (frozenset({"avx512_bf16"}), "bf16"),
                            (frozenset({"avx2", "avx512f"}), "fp32"), (frozenset(), "fp32")):
        monkeypatch.setattr(device_module, "cpu_flags", lambda flags=flags: flags)
        assert resolve_precision("auto", CPU) == expected, flags
        assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="precision='fp16' is not one of"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="precision"):
        RunConfig(method="simclr", precision="fp16")


def _method_and_views(name: str):
    cfg = RunConfig.from_dict({"method": name, "scale": "smoke", "batch_size": 32, **METHOD_KNOBS.get(name, {})})
    upstream = None
    if name == "pnda":  # its RAIS stage's mask (lab.train runs the stage)
        upstream = {"rais": {"rai_mask": torch.arange(2048) % 3 == 0}}
    method = build_method(cfg, 1, 2048, upstream)
    images = torch.randint(0, 256, (cfg.batch_size, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    views = TrainViews(cfg.dataset, 28, view_config_for(cfg))(images, method.n_views)
    return method, views, torch.arange(cfg.batch_size) // 2 % 10  # class pairs (metric learning's batches)


def _loss(method, views, labels, precision: str, channels_last: bool = False) -> torch.Tensor:
    method = copy.deepcopy(method)  # queues, banks, centres: each forward starts from the same state
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    views = [in_memory_format(v, channels_last) for v in views]
    torch.manual_seed(2)  # what a method draws in its forward (permutations, negatives) is the same draw
    with autocast(CPU, precision):
        out = method(views, labels, torch.arange(len(labels)))
    out.loss.backward()  # the backward runs too (a bf16 gradient path that fails would show here)
    return out.loss.detach()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_methods_loss_under_bf16_is_its_fp32_loss_and_stays_float32(name):
    method, views, labels = _method_and_views(name)
    fp32 = _loss(method, views, labels, "fp32")
    bf16 = _loss(method, views, labels, "bf16")
    assert bf16.dtype == torch.float32, f"{name}'s loss under bf16 autocast is {bf16.dtype}"
    assert torch.isfinite(fp32) and abs(bf16.item() - fp32.item()) <= BF16_TOLERANCE * max(1.0, abs(fp32.item())), \
        (name, fp32.item(), bf16.item())
    # channels_last is a layout: in fp32 the same loss up to the kernels' summation order
    assert _loss(method, views, labels, "fp32", channels_last=True).item() == pytest.approx(fp32.item(), rel=1e-5,
                                                                                             abs=1e-6)


def test_a_run_records_its_precision_and_its_batches_reach_the_device_as_uint8_once_per_step(monkeypatch):
    """The row says which precision ran (auto resolved); fp32 and bf16 are different configurations (their
    fingerprints differ) and each is repeatable. Each step's batch goes to the device once, as uint8, and the
    views are made from what arrived there (on a GPU: pinned, non-blocking; lab.device.batch_to_device)."""
    import lab.train
    from lab.train import train

    tiny = dict(method="simclr", scale="smoke", batch_size=64, epochs=1, train_subset=256, eval_subset=256,
                test_subset=128, linear_epochs=1, threads=1, device="cpu")
    copies = []
    real_copy = lab.train.batch_to_device

    def recorded(images, device):
        copies.append(images.dtype)
        return real_copy(images, device)

    monkeypatch.setattr(lab.train, "batch_to_device", recorded)
    rows = {p: train(RunConfig(precision=p, **tiny), progress=False) for p in ("fp32", "bf16")}
    assert copies == [torch.uint8] * 8  # 4 steps per run
    assert rows["fp32"]["precision_used"] == "fp32" and rows["bf16"]["precision_used"] == "bf16"
    assert rows["fp32"]["fingerprint"] != rows["bf16"]["fingerprint"]
    assert rows["fp32"]["final_loss"] != rows["bf16"]["final_loss"]  # bf16 did run
    again = train(RunConfig(precision="bf16", **tiny), progress=False)
    assert {k: v for k, v in again.items() if k not in ("wall_s", "history")} == \
        {k: v for k, v in rows["bf16"].items() if k not in ("wall_s", "history")}
    auto = train(RunConfig(**tiny), progress=False)
    assert auto["precision_used"] == resolve_precision("auto", CPU)


def test_the_gpu_benchmark_says_there_is_no_gpu_and_exits_0(monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench/gpu.py"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "gpu.py"), run_name="__main__")
    assert exit_.value.code == 0 and "no CUDA device" in capsys.readouterr().out


@pytest.mark.slow  # about 30 s on 2 cores: inductor compiles the encoder twice
def test_a_compiled_encoder_under_multi_crop_compiles_once_per_crop_size_not_per_step():
    """DINO with 2 small crops beside the 2 global views, the encoder compiled as `--compile` does: dynamo makes
    one graph per crop size (28 and 12 px) in the first step and none after, however many steps follow."""
    from torch._dynamo.utils import counters

    from lab.optim import build_optimizer
    from lab.train import optimisation_step

    cfg = RunConfig(method="dino", scale="smoke", local_crops=2, local_crop_size=12, compile=True, batch_size=16,
                    dino_out_dim=64, precision="fp32")
    method = build_method(cfg, 1, 64)
    method.encoder.compile()
    optimizer = build_optimizer(cfg, method)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for step in range(4):
        views = [torch.randn(16, 1, 28, 28) for _ in range(2)] + [torch.randn(16, 1, 12, 12) for _ in range(2)]
        optimisation_step(method, optimizer, views, None, step, 4)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [2, 2, 2, 2], graphs
