import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.checkpoint import MemoryStore
from lab.config import RunConfig
from lab.train import train

TINY = dict(scale="smoke", train_subset=1024, eval_subset=512, test_subset=256, linear_epochs=3, threads=1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_a_run_trains_checkpoints_and_scores_beside_the_random_encoder(method):
    store = MemoryStore()
    result = train(RunConfig(method=method, batch_size=64, epochs=2, **TINY), store, progress=False)
    assert result["status"] == "ok" and result["epochs_done"] == 2
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for key in ("knn_top1", "linear_top1", "random_knn_top1", "random_linear_top1"):
        assert 0 <= result[key] <= 100
    assert store.state["epoch"] == 2 and "optimizer" in store.state and "method" in store.state
    assert math.isfinite(result["final_loss"]) and result["embedding_std"] > 0
    assert 0.5 < result["embedding_std_ratio"] < 1.5  # not collapsed: spread like a random embedding


def test_same_seed_same_result_other_seed_other_result():
    a = train(RunConfig(batch_size=64, epochs=1, seed=3, **TINY), progress=False)
    b = train(RunConfig(batch_size=64, epochs=1, seed=3, **TINY), progress=False)
    c = train(RunConfig(batch_size=64, epochs=1, seed=4, **TINY), progress=False)
    assert a["final_loss"] == b["final_loss"] and a["knn_top1"] == b["knn_top1"]
    assert a["final_loss"] != c["final_loss"]


def test_divergence_is_recorded_not_raised(monkeypatch):
    import lab.methods.simclr as simclr

    real = simclr.nt_xent_loss
    calls = []

    def nan_after_three_steps(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) > 3 else loss

    monkeypatch.setattr(simclr, "nt_xent_loss", nan_after_three_steps)
    result = train(RunConfig(batch_size=64, epochs=2, **TINY), progress=False)
    assert result["status"].startswith("diverged"), result["status"]
    assert "epoch 1 step 3" in result["status"]
    assert math.isnan(result["knn_top1"]) and not math.isnan(result["random_knn_top1"])


def test_batch_larger_than_the_data_fails_before_compute():
    from lab.config import ConfigError

    with pytest.raises(ConfigError, match="exceeds the 1024 training images"):
        train(RunConfig(batch_size=2048, epochs=1, **TINY), progress=False)


def _cli(out: Path, epochs: int) -> list[str]:
    args = [sys.executable, "-m", "lab.train", "--out", str(out), "--method", "simclr", "--batch_size", "64",
            "--epochs", str(epochs)]
    for key, value in TINY.items():
        args += [f"--{key}", str(value)]
    return args


def test_sigkill_then_same_command_resumes_to_the_same_final_metrics(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    epochs = 6
    reference = tmp_path / "uninterrupted"
    subprocess.run(_cli(reference, epochs), check=True, env=env, cwd=ROOT, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, epochs), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(_cli(killed, epochs), check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    assert "resumed simclr from the end of epoch" in resumed.stderr
    a = json.loads((reference / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    for key in ("knn_top1", "linear_top1", "random_knn_top1", "random_linear_top1", "final_loss", "embedding_std"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], abs=1e-6)


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_gpu_scale_builds_the_papers_network_and_steps_on_cpu(method):
    """CI has no GPU: at least the gpu-scale network (ResNet-18, CIFAR stem, 2048-d heads) builds and steps."""
    import torch

    from lab.train import build_method, build_optimizer, optimisation_step

    cfg = RunConfig(method=method, scale="gpu", dataset="cifar10", batch_size=4).resolved()
    assert cfg.backbone == "resnet18_cifar" and cfg.optimizer == "sgd" and cfg.head_out_dim == 2048
    model = build_method(cfg, 3)
    assert model.backbone.out_dim == 512
    optimizer = build_optimizer(cfg, model)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = optimisation_step(model, optimizer, views, None, 0, 10)
    assert torch.isfinite(out.loss) and out.embedding.shape == (4, 2048)
