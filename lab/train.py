"""The one training loop of the lab, and its checkpoints.

    train(cfg, store) -> results row

It runs in-process (1 worker) or inside a Ray Train worker (lab.ray_train), where
torch.distributed is initialised: the config's batch size is then the GLOBAL batch, each
worker takes its slice of the same global permutation, BatchNorm becomes GlobalBatchNorm
and gradients are averaged over workers after each backward.

Stages: a method that needs another run first (Method.stages: PNDA needs RAIS) gets it here, through
this same loop, in the stage's own store; what the stage's method hands on (Method.outputs) reaches the
method as `upstream`, and is kept in every checkpoint of this run.

Repeatability: the data order of epoch e comes from a generator seeded by (seed, e) and
the augmentation RNG is reseeded at the start of every epoch from (seed, e), so a run
resumed from its end-of-epoch checkpoint continues exactly as the uninterrupted run would. It is seeded
alike on every worker, and each worker draws the views' parameters of the whole global batch and keeps
its own rows (lab.views), so a sample's views do not depend on the number of workers.

Interruption: a checkpoint (the method with its state, the optimiser, the history, the random
encoder's scores, the resolved config; the learning rate follows from the step) is written at the
end of every epoch, and once more with the run's row when it is done; `train` resumes from the
store's latest one, and returns the stored row of a finished run without running it again.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch

from lab import distributed as dist_utils
from lab.checkpoint import CHECKPOINT_FORMAT, CheckpointStore, MemoryStore, load_backbone_from
from lab.config import RunConfig
from lab.device import autocast, batch_to_device, in_memory_format, resolve_device, resolve_precision
from lab.errors import CheckpointError, ConfigError
from lab.methods import Method, build_method
from lab.methods.base import EpochData, embedding_spread
from lab.optim import build_optimizer, lr_at
from lab.protocol import Protocol
from lab.results import run_row
from lab.seeds import derived_seed
from lab.splits import load_run_data
from lab.views import EvalView, TrainViews, view_config_for


def prepare_for_workers(method: Method) -> Method:
    """Under torch.distributed: BatchNorm over the global batch and rank 0's initial state on every
    worker (gradients are averaged in `optimisation_step`). Unchanged on one worker."""
    if dist_utils.world_size() == 1:
        return method
    method = dist_utils.convert_to_global_batchnorm(method)
    dist_utils.broadcast_state(method)
    return method


def optimisation_step(method: Method, optimizer: torch.optim.Optimizer,
                      views: list[torch.Tensor], labels: torch.Tensor | None, global_step: int, total_steps: int,
                      indexes: torch.Tensor | None = None, precision: str = "fp32",
                      buckets: dist_utils.GradientBuckets | None = None):
    """Forward (under bf16 autocast when precision='bf16'; lab.device), backward, gradient average over
    workers (in `buckets` during backward, or in one all_reduce after it), optimiser step, the method's
    after-step hook. No host sync: a non-finite loss is recorded by the loop (Divergence) and looked at every
    few steps."""
    with autocast(views[0].device, precision):
        out = method(views, labels, indexes)
    optimizer.zero_grad(set_to_none=True)
    if buckets is not None:
        buckets.backward(out.loss)
    else:
        out.loss.backward()
        if dist_utils.is_distributed():
            dist_utils.average_gradients(method)
    optimizer.step()
    method.after_step(global_step, total_steps)
    return out


DIVERGENCE_CHECK_STEPS = 50  # steps between the loop's looks at the divergence record (and at each epoch's end)


class Divergence:
    """The first non-finite loss of a run, recorded on the device: `record` costs no host sync (a GPU's queue
    keeps running), `first` reads it (every DIVERGENCE_CHECK_STEPS steps and at the epoch's end) and agrees
    over workers, so that every worker stops at the same step. Steps after the first one still run (and may
    leave non-finite weights) until the next look; the row names the step where it began."""

    def __init__(self, device: torch.device):
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # steps recorded
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), dtype=torch.float64, device=device)

    def record(self, loss: torch.Tensor) -> None:
        first = (self.step < 0) & ~torch.isfinite(loss)
        self.step = torch.where(first, self.count, self.step)
        self.loss = torch.where(first, loss.detach().double(), self.loss)
        self.count += 1

    def first(self) -> tuple[int, float] | None:
        """(step counted from this record's start, its loss) of the first non-finite loss on any worker."""
        step = int(self.step.item())
        step = dist_utils.min_over_workers(step if step >= 0 else None)
        if step is None:
            return None
        return step, float(self.loss.item()) if int(self.step.item()) == step else float("nan")


class Progress:
    """One line per report on stderr: epoch, step, loss, images/s (rank 0 only)."""

    def __init__(self, enabled: bool, total_steps: int, epochs: int, every_s: float = 10.0, label: str = ""):
        self.enabled, self.total, self.epochs, self.every_s = enabled, total_steps, epochs, every_s
        self.label = f" {label}" if label else ""
        self.last = time.perf_counter()

    def due(self) -> bool:
        """Whether a line is due (the caller then reads the loss off the device, and only then)."""
        return self.enabled and time.perf_counter() - self.last >= self.every_s

    def update(self, epoch: int, step: int, loss: float, images_per_s: float, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last >= self.every_s):
            self.last = now
            print(f"[lab]{self.label} epoch {epoch + 1}/{self.epochs} step {step}/{self.total} "
                  f"({100 * step / self.total:.0f}%) loss {loss:.4f} {images_per_s:.0f} img/s", file=sys.stderr,
                  flush=True)


def check_resumable(state: dict[str, Any], cfg: RunConfig, where: str) -> None:
    """A stored state this config may continue, or CheckpointError saying why not and what to do."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} was written by an earlier version of the lab (checkpoint format "
                              f"{state.get('format', 1)}, this one reads {CHECKPOINT_FORMAT}): start the run afresh in "
                              "another output folder, or delete that file")
    differences = cfg.differences(state["config"])
    if differences:
        raise CheckpointError(f"{where} belongs to another configuration ({'; '.join(differences)}): use another "
                              "output folder, or the settings it was started with")


def check_same_data(state: dict[str, Any], sources: dict[str, str], where: str) -> None:
    """A resume reads its images from where the run started (data_root is not part of the fingerprint)."""
    stored = state.get("data_sources", {})
    moved = [f"{k.split('_')[0]} images: stored {stored[k]}, now {v}" for k, v in sources.items()
             if k in stored and stored[k] != v]
    if moved:
        raise CheckpointError(f"{where} was trained on other data ({'; '.join(moved)}): resume with the data_root it "
                              "started with, or start the run afresh in another output folder")


def run_stages(cfg: RunConfig, store: CheckpointStore, download: bool, progress: bool,
               device: torch.device, **progress_settings: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Each stage the method declares, trained through this loop in its own store; their outputs."""
    upstream = {}
    for name, changes in cfg.method_class.stages(cfg).items():
        stage_cfg = cfg.for_method(changes)
        if progress and dist_utils.rank() == 0:
            print(f"[lab] stage {name} of {cfg.method}: {stage_cfg.method}, {stage_cfg.epochs} epochs",
                  file=sys.stderr, flush=True)
        stage_store = store.stage(name)
        train(stage_cfg, stage_store, download=download, progress=progress, device=device, **progress_settings)
        upstream[name] = stage_store.load()["outputs"]
    return upstream


def train(cfg: RunConfig, store: CheckpointStore | None = None, download: bool = False,
          progress: bool = True, device: torch.device | None = None, progress_label: str = "",
          progress_every_s: float = 10.0) -> dict[str, Any]:
    """Train `cfg` (resuming from `store`), evaluate it, and return its results row. progress: a line on
    stderr every progress_every_s seconds and after each epoch, headed by progress_label (a study's trial
    says which it is)."""
    store = store or MemoryStore()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device or resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if world != 1 and world != cfg.workers:
        raise ConfigError(f"workers={cfg.workers} but torch.distributed runs {world} processes")
    local_batch = cfg.batch_size // world

    state = store.load()
    if state is not None:
        check_resumable(state, cfg, store.where)
        if state.get("result") is not None:  # a finished run: its row, not a second evaluation
            return state["result"]

    data = load_run_data(cfg, download)
    if state is not None:
        check_same_data(state, data.sources, store.where)
    if len(data.train) < cfg.batch_size:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(data.train)} training images of "
                          f"{cfg.dataset} (train_subset={cfg.train_subset})")
    cfg.method_class.check_data(cfg, len(data.train))
    views = TrainViews(cfg.dataset, data.train.image_size, view_config_for(cfg))
    eval_view = EvalView(cfg.dataset, views.out_size)
    if state is not None:
        upstream = state["upstream"]
    else:
        upstream = run_stages(cfg, store, download, progress, device, progress_label=progress_label,
                              progress_every_s=progress_every_s)
    method = build_method(cfg, data.train.channels, len(data.train), upstream)
    if cfg.init_from is not None:
        load_backbone_from(method, cfg.init_from)
    method = method.to(device)
    if cfg.channels_last:  # convolution weights in NHWC (the views follow, below)
        method = method.to(memory_format=torch.channels_last)
    method = prepare_for_workers(method)
    if cfg.compile:  # the encoder only: the methods' Python state (queue pointers, schedules) would recompile
        method.encoder.compile()
    buckets = dist_utils.GradientBuckets(method, cfg.grad_bucket_mb) if dist_utils.is_distributed() and \
        cfg.grad_bucket_mb > 0 else None
    optimizer = build_optimizer(cfg, method)
    method_class = type(method)

    def epoch_batches(epoch: int) -> torch.Tensor:
        return method_class.epoch_batches(cfg, data.train.labels, torch.Generator().manual_seed(
            derived_seed(cfg.seed, epoch)))

    steps_per_epoch = epoch_batches(0).shape[0]
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    protocol = Protocol(cfg, data, eval_view, device, precision)

    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, random_scores = state["epoch"], state["history"], state["random_scores"]
        wall_s = state["wall_s"]
        resumes = [*state.get("resumes", []), start_epoch]
        if rank == 0 and progress:
            print(f"[lab] resumed {cfg.method} from the end of epoch {start_epoch}", file=sys.stderr, flush=True)
    else:
        start_epoch, history, wall_s, resumes = 0, [], 0.0, []
        # The random encoder is this run's own initialisation: the baseline of every score.
        random_scores = protocol.full(method) if rank == 0 else {}

    status = "ok"
    embedding_dim = 0
    peak_lr = cfg.lr
    reporter = Progress(progress and rank == 0, total_steps, cfg.epochs, progress_every_s, progress_label)
    images = data.train.images
    epoch_data = EpochData(images, data.train.labels, eval_view, device)

    def checkpoint(epoch: int, **final: Any) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "fingerprint": cfg.fingerprint(), "config": cfg.to_row(),
                "epoch": epoch, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "history": history, "random_scores": random_scores, "wall_s": wall_s, "upstream": upstream,
                "data_sources": data.sources, "resumes": resumes, **final}

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        batches = epoch_batches(epoch)
        method.before_epoch(epoch, steps_per_epoch, epoch_data)
        torch.manual_seed(derived_seed(cfg.seed, epoch, offset=1))  # alike on every worker: lab.views draws globally
        method.train()
        # sums on the device, read at the epoch's end: no host sync per step (a GPU's queue keeps running)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        std_sum = torch.zeros((), dtype=torch.float64, device=device)
        steps, seen = 0, 0
        log_sums: dict[str, Any] = {}
        divergence = Divergence(device)
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, warmup_steps, peak_lr)
            index = batches[step, rank * local_batch:(rank + 1) * local_batch]
            batch = batch_to_device(images[index], device)  # uint8: the views are made on the device
            labels = data.train.labels[index].to(device, non_blocking=True)
            batch_views = [in_memory_format(v, cfg.channels_last) for v in views(batch, method.n_views)]
            out = optimisation_step(method, optimizer, batch_views, labels, global_step, total_steps,
                                    index.to(device), precision, buckets)
            loss = out.loss.detach()
            divergence.record(loss)
            loss_sum += loss.double()
            std_sum += embedding_spread(out.embedding)
            for key, value in out.logs.items():
                value = value.detach().double() if torch.is_tensor(value) else float(value)
                log_sums[key] = log_sums.get(key, 0.0) + value
            embedding_dim = out.embedding.shape[1]
            steps += 1
            seen += cfg.batch_size
            if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == steps_per_epoch:
                first = divergence.first()
                if first is not None:
                    status = f"diverged: loss {first[1]} at epoch {epoch + 1} step {first[0]}"
                    break
            if reporter.due():
                reporter.update(epoch, global_step + 1, loss.item(), seen / (time.perf_counter() - epoch_start))
        if status != "ok":
            break
        epoch_s = time.perf_counter() - epoch_start
        wall_s += epoch_s
        row = {
            "epoch": epoch + 1,
            "loss": dist_utils.mean_over_workers(float(loss_sum) / steps),
            "embedding_std": dist_utils.mean_over_workers(float(std_sum) / steps),
            "embedding_dim": embedding_dim,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / epoch_s,
            "epoch_s": epoch_s,
            # the method's own signals (DINO's teacher entropy, SwAV's code entropy, ...), epoch means
            **{key: dist_utils.mean_over_workers(float(total) / steps) for key, total in sorted(log_sums.items())},
        }
        if rank == 0:
            row.update({f"monitor_{k}": v for k, v in protocol.monitor(method).items()})
        history.append(row)
        reporter.update(epoch, (epoch + 1) * steps_per_epoch, row["loss"], row["images_per_s"], force=True)
        store.save(checkpoint(epoch + 1), {**row, "final": False})

    final_scores = protocol.full(method) if rank == 0 and status == "ok" else {}
    last = history[-1] if history else {}
    outputs = method.outputs(epoch_data) if status == "ok" else {}
    extra = method.result_columns(images) if status == "ok" else {}
    result = run_row(cfg, final_scores, random_scores, history, 100.0 / data.train.num_classes,
                     method.collapse_reason(last), {**extra, **data.sources,
                                                    "resumed_from_epoch": resumes[-1] if resumes else None,
                                                    "precision_used": precision},
                     status, wall_s)
    # not "done": Tune reserves that key
    store.save(checkpoint(len(history), result=result, outputs=outputs), {**result, "final": True})
    return result


if __name__ == "__main__":  # python -m lab.train: the command line of lab.cli (a script entry, not an import)
    from lab.cli import main

    main()
