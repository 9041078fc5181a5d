"""Ray Train around the one loop: the same `lab.train.train` on N workers.

`TorchTrainer` starts N workers and initialises torch.distributed (gloo on CPU, nccl on
GPU); inside, `train` sees world_size = N, splits the GLOBAL batch over the workers,
swaps BatchNorm for GlobalBatchNorm and averages gradients over the workers. Checkpoints go through
`ray.train.report(..., checkpoint=...)` every epoch (rank 0 writes, all ranks report, as
Train V2 requires), and a restarted run resumes from `ray.train.get_checkpoint()`.

Inside a Ray Tune trial, `TuneReportCallback` forwards the workers' reports to Tune.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lab.checkpoint import CHECKPOINT_FILE, MemoryStore, load_state_file, save_state_file
from lab.config import RunConfig


def jsonable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A copy of a metrics row that Ray can store: the per-epoch history as a JSON string."""
    out = dict(metrics)
    if "history" in out:
        out["history"] = json.dumps(out["history"])
    return out


class RayTrainStore:
    """The loop's CheckpointStore inside a Ray Train worker.

    Train V2's `Result.metrics` are those of the latest *checkpoint*, so the final row is reported
    with a checkpoint too (the finished run's state): `trainer.fit().metrics` is the row. A stage (PNDA's
    RAIS) keeps its state in memory: a restarted run redoes a stage it had not finished, and takes a
    finished stage's outputs from its own checkpoints.
    """

    where = "the Ray Train run's latest checkpoint"

    def __init__(self) -> None:
        self.last_state: dict[str, Any] | None = None

    def stage(self, name: str) -> MemoryStore:
        return MemoryStore(f"stage {name} (in memory)")

    def load(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state_file(Path(directory) / CHECKPOINT_FILE)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.last_state = state
        self._report_with_state(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        self._report_with_state(metrics)

    def _report_with_state(self, metrics: dict[str, Any]) -> None:
        import ray.train

        if ray.train.get_context().get_world_rank() != 0 or self.last_state is None:
            ray.train.report(jsonable_metrics(metrics), checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_state_file(self.last_state, Path(directory) / CHECKPOINT_FILE)
            ray.train.report(jsonable_metrics(metrics), checkpoint=ray.train.Checkpoint.from_directory(directory))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    import ray.train.torch

    from lab.train import train

    cfg = RunConfig.from_dict(loop_config["run"], where="Ray Train loop config")
    device = ray.train.torch.get_device() if torch.cuda.is_available() and cfg.device != "cpu" else torch.device("cpu")
    train(cfg, RayTrainStore(), download=loop_config.get("download", False),
          progress=loop_config.get("progress", True), device=device)


def make_trainer(cfg: RunConfig, storage: str | os.PathLike, name: str, download: bool = False,
                 in_tune: bool = False, loop=train_loop_per_worker, loop_config: dict | None = None):
    """A TorchTrainer running `loop` (the lab's loop by default) on cfg.workers workers."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    return TorchTrainer(
        loop,
        train_loop_config=loop_config or {"run": cfg.explicit, "download": download},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.threads or 1}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage), callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=2)),
    )


def train_distributed(cfg: RunConfig, storage: str | os.PathLike, name: str | None = None,
                      download: bool = False, in_tune: bool = False) -> dict[str, Any]:
    """Run the loop under TorchTrainer and return the final results row (rank 0's)."""
    trainer = make_trainer(cfg, storage, name or f"{cfg.method}-{cfg.fingerprint()}", download, in_tune)
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if isinstance(metrics.get("history"), str):
        metrics["history"] = json.loads(metrics["history"])
    return metrics
