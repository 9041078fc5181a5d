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

from lab.checkpoint import CHECKPOINT_FILE, MemoryStore, load_ray_checkpoint, save_state_file
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

        return load_ray_checkpoint(ray.train.get_checkpoint())

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


def init_local_ray(**kwargs: Any) -> None:
    """Ray for this process: the cluster of RAY_ADDRESS (`ray job submit`, a cluster) if set; else a local Ray
    that only this machine reaches. Ray 2.60 binds its servers to every interface unless it believes the node
    is local-only (what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 says; Ray's own switch, read by the driver and
    every process it starts), then every server, the GCS and raylets included, listens on 127.0.0.1. No
    metrics are collected unless LAB_RAY_METRICS=1 (what is left of the metrics endpoints is on loopback)."""
    import ray

    if ray.is_initialized():
        return
    skip_state_api_warnings()
    if os.environ.get("RAY_ADDRESS"):
        # The trials run in the cluster's worker processes, which see their node's environment, not this
        # driver's: the lab's settings (LAB_DATA, LAB_TRIAL_LOG, ...) travel in the job's runtime environment.
        settings = {k: v for k, v in os.environ.items() if k.startswith("LAB_")}
        ray.init(**{"log_to_driver": True, "runtime_env": {"env_vars": settings} if settings else None, **kwargs})
        return
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import by the driver; the environment carries it further
    system_config = {} if os.environ.get("LAB_RAY_METRICS") == "1" else {"enable_metrics_collection": False}
    ray.init(**{"include_dashboard": False, "log_to_driver": True, "configure_logging": False,
                "_system_config": system_config, **kwargs})


def skip_state_api_warnings() -> None:
    """This driver prints no 'Failed to query Ray Train Controller actor state' from the workers: Ray Train V2's
    placement-group cleaner asks the state API, which the dashboard serves, whether a run's controller is alive,
    and on a Ray without a dashboard (the lab's local one) warns every second of every run of several workers.
    Through the filter Ray's own RAY_DEDUP_LOGS_SKIP_REGEX sets, and only where that is not set; the lines stay
    in the session's log files. (Quieting the logger in the workers took a setup hook per worker process, which
    made Ray start every worker through its runtime-env agent: 12 s more for a two-worker run.)"""
    import re

    try:
        from ray._private import ray_logging
    except ImportError:  # another Ray layout: its lines show
        return
    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        if getattr(dedup, "skip_re", "absent") is None:
            dedup.skip_re = re.compile(r"Failed to query Ray Train Controller actor state")


def quiet_checkpoint_logs() -> None:
    """No 'Checkpoint successfully created at ...' line per epoch from Ray's storage layer, and no
    'Reporting training result k: TrainingReport(<the whole row>)' per report from each Ray Train worker (the
    lab's own progress lines say where a run is); their warnings still show."""
    import logging

    names = ["ray.train._internal.storage", "ray.train.v2._internal.execution.storage"]
    try:  # Train V2 names this logger by its module's file path
        from ray.train.v2._internal.execution import context as train_context

        names.append(train_context.__file__)
    except ImportError:
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker. A config or data error is reported as the run's failed row, not
    raised: it is the same on every retry, so Ray Train's FailureConfig must not retry it."""
    import ray.train.torch

    from lab.errors import LabError
    from lab.results import failed_row
    from lab.train import train

    quiet_checkpoint_logs()
    try:
        cfg = RunConfig.from_dict(loop_config["run"], where="Ray Train loop config")
        device = (ray.train.torch.get_device() if torch.cuda.is_available() and cfg.device != "cpu"
                  else torch.device("cpu"))
        train(cfg, RayTrainStore(), download=loop_config.get("download", False),
              progress=loop_config.get("progress", True), device=device)
    except LabError as exc:
        ray.train.report(jsonable_metrics({**failed_row(loop_config["run"], exc), "error": str(exc),
                                           "final": True}), checkpoint=None)


def make_trainer(cfg: RunConfig, storage: str | os.PathLike, name: str, download: bool = False,
                 in_tune: bool = False, loop=train_loop_per_worker, loop_config: dict | None = None,
                 tune_callback=None, storage_filesystem=None):
    """A TorchTrainer running `loop` (the lab's loop by default) on cfg.workers workers. in_tune: its reports go
    on to the Tune trial it runs in, through `tune_callback` (a TuneReportCallback; Ray's own by default).
    storage (in `storage_filesystem`, a pyarrow filesystem, for an object store) must be reached by every worker:
    each writes its checkpoints there, and a worker group restarted elsewhere reads them back."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # Train V2 sends a worker's print() to its logger as well as to the stream Ray already forwards: every
    # progress line of the loop reached the driver twice. Its switch travels from here to the controller and
    # the workers (Train V2 propagates it); one a user set is kept.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(tune_callback or TuneReportCallback())
    return TorchTrainer(
        loop,
        train_loop_config=loop_config or {"run": cfg.explicit, "download": download},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.threads or 1}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage), storage_filesystem=storage_filesystem, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=2)),
    )


def train_distributed(cfg: RunConfig, storage: str | os.PathLike, name: str | None = None,
                      download: bool = False, in_tune: bool = False, tune_callback=None,
                      storage_filesystem=None) -> dict[str, Any]:
    """Run the loop under TorchTrainer and return the final results row (rank 0's). A config or data error
    of the workers is raised here again, as the error it was (outside Tune: the command line's one line)."""
    from lab import errors

    if not in_tune:
        init_local_ray()
    trainer = make_trainer(cfg, storage, name or f"{cfg.method}-{cfg.fingerprint()}", download, in_tune,
                           tune_callback=tune_callback, storage_filesystem=storage_filesystem)
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if isinstance(metrics.get("history"), str):
        metrics["history"] = json.loads(metrics["history"])
    error_type = getattr(errors, str(metrics.get("error_type")), None)
    if not in_tune and isinstance(error_type, type) and issubclass(error_type, errors.LabError):
        raise error_type(metrics.get("error", metrics.get("status", "")))
    return metrics
