"""The one training loop of the lab.

    train(cfg, store) -> results row

It runs in-process (1 worker) or inside a Ray Train worker (lab.ray_train), where
torch.distributed is initialised: the config's batch size is then the GLOBAL batch, each
worker takes its slice of the same global permutation, BatchNorm becomes GlobalBatchNorm
and gradients are averaged over workers after each backward.

Repeatability: the data order of epoch e comes from a generator seeded by (seed, e) and
the augmentation RNG is reseeded at the start of every epoch from (seed, e, rank), so a run
resumed from its end-of-epoch checkpoint continues exactly as the uninterrupted run would.

Interruption: a checkpoint (the method with its state, the optimiser, the history, the random
encoder's scores; the learning rate follows from the step) is written at the end of every
epoch; `train` resumes from the store's latest one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Any

import torch
from torch import nn

from lab import distributed as dist_utils
from lab.backbones import build_backbone
from lab.checkpoint import CheckpointStore, LocalStore, MemoryStore
from lab.config import ConfigError, RunConfig, field_names
from lab.data import DATASETS, ImageSet, load_split
from lab.clustering import cluster_scores
from lab.evaluate import evaluate_encoder, extract_features
from lab.retrieval import recall_at_k
from lab.methods import Method, embedding_std, get_method_class
from lab.methods.base import EpochData
from lab.views import EvalView, TrainViews, view_config_for

# Per-epoch monitoring kNN uses a fixed subset so that it stays cheap on 2 cores.
MONITOR_BANK, MONITOR_TEST = 5000, 1000


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the run's row records it instead of crashing a study."""


def collapse_reason(std: float, dim: int, knn_top1: float, chance_top1: float) -> str | None:
    """The collapse signal (SimSiam Fig. 2), or None: the per-dimension std of the l2-normalised
    embedding below a tenth of the 1/sqrt(d) of a spread-out embedding, or kNN within 5 points of
    chance. Methods add their own (Method.collapse_reason: DINO's teacher entropy)."""
    std_ratio = std * math.sqrt(dim) if dim else float("nan")
    if std_ratio < COLLAPSE_STD_RATIO:
        return f"embedding std x sqrt(d) = {std_ratio:.3f} < {COLLAPSE_STD_RATIO}"
    if knn_top1 < chance_top1 + COLLAPSE_KNN_MARGIN:
        return f"kNN top-1 {knn_top1:.1f} within {COLLAPSE_KNN_MARGIN:g} points of chance ({chance_top1:.1f})"
    return None


COLLAPSE_STD_RATIO, COLLAPSE_KNN_MARGIN = 0.1, 5.0
# scores only some runs have (NaN in the others' rows): clustering methods, zero-shot retrieval
OPTIONAL_SCORES = ("classifier_top1", "cluster_nmi", "cluster_acc", "cluster_ari",
                   *(f"{layer}recall_at_{k}" for layer in ("", "fc_") for k in (1, 2, 4, 8)))


@torch.no_grad()
def classifier_scores(method: Method, images: torch.Tensor, labels: torch.Tensor, view: EvalView,
                      device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """Top-1 (%) of the method's own classifier (Method.classify) on a labelled set; {} if it has none."""
    was_training = method.training
    method.eval()
    correct, total = 0, 0
    try:
        for start in range(0, len(images), batch_size):
            logits = method.classify(view(images[start:start + batch_size].to(device)))
            if logits is None:
                return {}
            correct += (logits.argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
            total += len(logits)
    finally:
        method.train(was_training)
    return {"classifier_top1": 100.0 * correct / max(total, 1)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(name)


@dataclasses.dataclass
class RunData:
    train: ImageSet
    bank: ImageSet  # train-split images whose features the kNN / linear probe fit on
    test: ImageSet


def load_run_data(cfg: RunConfig, download: bool = False) -> RunData:
    """The run's training images, its evaluation bank and its test images.

    class_split='half' (zero-shot retrieval, document 003): training sees only the first half of
    the classes; the bank and the test images are those of the unseen second half (relabelled from 0).
    label_fraction < 1 keeps a class-stratified fraction of the training images (few-label fine-tuning).
    """
    train_split = load_split(cfg.dataset, "train", cfg.data_root, download)
    test_split = load_split(cfg.dataset, "test", cfg.data_root, download)
    bank_split = train_split
    if cfg.class_split == "half":
        seen = train_split.num_classes // 2
        unseen_test = test_split.classes(seen, test_split.num_classes)
        if DATASETS[cfg.dataset].zero_shot_all_images:  # CUB / Cars: every image of the unseen classes
            unseen_test = unseen_test.concat(train_split.classes(seen, train_split.num_classes))
        train_split, bank_split = train_split.classes(0, seen), train_split.classes(seen, train_split.num_classes)
        test_split = unseen_test
    # Subsets are fixed by dataset (seed 0), not by the run's seed: every run of a study sees the same data.
    return RunData(train_split.subset(cfg.train_subset).labelled_fraction(cfg.label_fraction),
                   bank_split.subset(cfg.eval_subset), test_split.subset(cfg.test_subset))


def load_backbone_from(method: Method, path: str) -> None:
    """Initialise the method's backbone from another run's checkpoint (a run folder or the file)."""
    file = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise ConfigError(f"init_from={path!r}: no checkpoint at {file}; point it at a finished run's folder")
    state = torch.load(file, map_location="cpu", weights_only=False)["method"]
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    missing, unexpected = method.backbone.load_state_dict(backbone, strict=False)
    if missing or unexpected or not backbone:
        raise ConfigError(f"init_from={path!r}: its backbone does not match this run's (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}): use the same backbone and input channels")


def build_method(cfg: RunConfig, in_channels: int, train_size: int | None = None) -> Method:
    """The method with its backbone, initialised from cfg.seed (a memory bank gets one row per training image)."""
    if cfg.memory_bank_size is None and train_size is not None:
        cfg = cfg.replace(memory_bank_size=train_size)
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_channels, cfg.ba2m_blocks, cfg.ba2m_reduction)
    return get_method_class(cfg.method)(cfg, backbone)


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
                      indexes: torch.Tensor | None = None):
    """Forward, backward, gradient average over workers, optimiser step, the method's after-step hook."""
    device_type = views[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        out = method(views, labels, indexes)
    if not torch.isfinite(out.loss):
        raise DivergedError(f"loss {out.loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if dist_utils.is_distributed():
        dist_utils.average_gradients(method)
    optimizer.step()
    method.after_step(global_step, total_steps)
    return out


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warm-up, then cosine decay to 0 (SimCLR / SimSiam schedules)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _epoch_seed(cfg: RunConfig, epoch: int, salt: int = 0) -> int:
    return (cfg.seed * 1_000_003 + epoch * 7919 + salt) % (2**63 - 1)


class Progress:
    """One line per report on stderr: epoch, step, loss, images/s (rank 0 only)."""

    def __init__(self, enabled: bool, total_steps: int, every_s: float = 10.0):
        self.enabled, self.total, self.every_s = enabled, total_steps, every_s
        self.last = time.perf_counter()

    def update(self, epoch: int, step: int, loss: float, images_per_s: float, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last >= self.every_s):
            self.last = now
            print(f"[lab] epoch {epoch + 1} step {step}/{self.total} ({100 * step / self.total:.0f}%) "
                  f"loss {loss:.4f} {images_per_s:.0f} img/s", file=sys.stderr, flush=True)


def train(cfg: RunConfig, store: CheckpointStore | None = None, download: bool = False,
          progress: bool = True, device: torch.device | None = None, evaluation: bool = True) -> dict[str, Any]:
    """Train `cfg` (resuming from `store`), evaluate it, and return its results row.

    evaluation=False skips every kNN / linear-probe evaluation (a stage inside another run: RAIS)."""
    cfg = cfg.resolved()
    store = store or MemoryStore()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device or resolve_device(cfg.device)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if world != 1 and world != cfg.workers:
        raise ConfigError(f"workers={cfg.workers} but torch.distributed runs {world} processes")
    local_batch = cfg.batch_size // world

    data = load_run_data(cfg, download)
    if len(data.train) < cfg.batch_size:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(data.train)} training images of "
                          f"{cfg.dataset} (train_subset={cfg.train_subset})")
    views = TrainViews(cfg.dataset, data.train.image_size, view_config_for(cfg))
    eval_view = EvalView(cfg.dataset, views.out_size)
    method = build_method(cfg, data.train.channels, len(data.train))
    if cfg.init_from is not None:
        load_backbone_from(method, cfg.init_from)
    method = prepare_for_workers(method.to(device))
    optimizer = build_optimizer(cfg, method)
    method_class = type(method)

    def epoch_batches(epoch: int) -> torch.Tensor:
        return method_class.epoch_batches(cfg, data.train.labels,
                                          torch.Generator().manual_seed(_epoch_seed(cfg, epoch)))

    steps_per_epoch = epoch_batches(0).shape[0]
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    monitor_bank = data.bank.subset(MONITOR_BANK)
    monitor_test = data.test.subset(MONITOR_TEST)

    def evaluate(full: bool) -> dict[str, float]:
        bank, test = (data.bank, data.test) if full else (monitor_bank, monitor_test)
        scores = evaluate_encoder(method.encoder, bank.images, bank.labels, test.images, test.labels, eval_view,
                                  data.train.num_classes, device, cfg.knn_k, cfg.knn_temperature,
                                  cfg.linear_epochs if full else None, cfg.seed)
        if full:  # methods that cluster (Contrastive Clustering): NMI / ACC / ARI of their own assignments
            scores.update(cluster_scores(method, test.images, test.labels, eval_view, device))
            scores.update(classifier_scores(method, test.images, test.labels, eval_view, device))
        if full and cfg.class_split == "half":  # zero-shot retrieval on the unseen classes (document 003)
            # {"recall_at_K": %} on the encoder; metric learning also at its trained embedding (fc6): fc_recall_at_K
            layers = {"": method.encoder, **({"fc_": method.embedder()} if hasattr(method, "embedder") else {})}
            for prefix, net in layers.items():
                features = extract_features(net, test.images, eval_view, device)
                scores.update({prefix + name: value for name, value in recall_at_k(features, test.labels.to(device)).items()})
        return scores

    state = store.load()
    if state is not None:
        if state["fingerprint"] != cfg.fingerprint():
            raise ConfigError("the checkpoint found belongs to another configuration "
                              f"({state['fingerprint']} != {cfg.fingerprint()}); use another output folder")
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, random_scores = state["epoch"], state["history"], state["random_scores"]
        wall_s = state["wall_s"]
        if rank == 0 and progress:
            print(f"[lab] resumed {cfg.method} from the end of epoch {start_epoch}", file=sys.stderr, flush=True)
    else:
        start_epoch, history, wall_s = 0, [], 0.0
        # The random encoder is this run's own initialisation: the baseline of every score.
        random_scores = evaluate(full=True) if rank == 0 and evaluation else {}

    status = "ok"
    embedding_dim = 0
    peak_lr = cfg.lr
    reporter = Progress(progress and rank == 0, total_steps)
    images = data.train.images
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        batches = epoch_batches(epoch)
        method.before_epoch(epoch, steps_per_epoch, EpochData(images, data.train.labels, eval_view, device))
        torch.manual_seed(_epoch_seed(cfg, epoch, salt=1 + rank))
        method.train()
        loss_sum, std_sum, steps, seen = 0.0, 0.0, 0, 0
        log_sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, warmup_steps, peak_lr)
            index = batches[step, rank * local_batch:(rank + 1) * local_batch]
            batch = images[index].to(device, non_blocking=True)
            labels = data.train.labels[index].to(device, non_blocking=True)
            try:
                out = optimisation_step(method, optimizer, views(batch, method.n_views), labels,
                                        global_step, total_steps, index.to(device))
            except DivergedError as exc:
                status = f"diverged: {exc} at epoch {epoch + 1} step {step}"
                break
            loss = out.loss
            loss_sum += loss.item()
            std_sum += embedding_std(out.embedding)
            for key, value in out.logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + float(value)
            embedding_dim = out.embedding.shape[1]
            steps += 1
            seen += cfg.batch_size
            reporter.update(epoch, global_step + 1, loss.item(), seen / (time.perf_counter() - epoch_start))
        if status != "ok":
            break
        epoch_s = time.perf_counter() - epoch_start
        wall_s += epoch_s
        row = {
            "epoch": epoch + 1,
            "loss": dist_utils.mean_over_workers(loss_sum / steps),
            "embedding_std": dist_utils.mean_over_workers(std_sum / steps),
            "embedding_dim": embedding_dim,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / epoch_s,
            "epoch_s": epoch_s,
            # the method's own signals (DINO's teacher entropy, SwAV's code entropy, ...), epoch means
            **{key: dist_utils.mean_over_workers(total / steps) for key, total in sorted(log_sums.items())},
        }
        if rank == 0 and evaluation:
            row.update({f"monitor_{k}": v for k, v in evaluate(full=False).items()})
        history.append(row)
        reporter.update(epoch, (epoch + 1) * steps_per_epoch, row["loss"], row["images_per_s"], force=True)
        checkpoint = {
            "fingerprint": cfg.fingerprint(), "epoch": epoch + 1, "method": method.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "random_scores": random_scores,
            "wall_s": wall_s, "config": cfg.to_row(),
        }
        store.save(checkpoint, {**row, "final": False})

    final_scores = evaluate(full=True) if rank == 0 and status == "ok" and evaluation else {}
    last = history[-1] if history else {}
    result = {
        **cfg.to_row(),
        "knn_top1": final_scores.get("knn_top1", float("nan")),
        "linear_top1": final_scores.get("linear_top1", float("nan")),
        "random_knn_top1": random_scores.get("knn_top1", float("nan")),
        "random_linear_top1": random_scores.get("linear_top1", float("nan")),
        **{f"{prefix}{name}": scores.get(name, float("nan"))
           for prefix, scores in (("", final_scores), ("random_", random_scores)) for name in OPTIONAL_SCORES},
        "epochs": cfg.epochs,
        "epochs_done": len(history),
        "final_loss": last.get("loss", float("nan")),
        "embedding_std": last.get("embedding_std", float("nan")),
        # collapse signal: embedding_std * sqrt(d) is ~1 for embeddings spread over the sphere, ~0 collapsed
        "embedding_std_ratio": last.get("embedding_std", float("nan")) * math.sqrt(last.get("embedding_dim") or float("nan")),
        "chance_top1": 100.0 / data.train.num_classes,
        "collapse_reason": (collapse_reason(last.get("embedding_std", float("nan")), last.get("embedding_dim") or 0,
                                            final_scores.get("knn_top1", float("nan")), 100.0 / data.train.num_classes)
                            or method.collapse_reason(last) or ""),
        "wall_s": wall_s,
        **(method.result_columns(images) if status == "ok" else {}),
        "status": status,
        "fingerprint": cfg.fingerprint(),
        "history": history,
    }
    result["collapsed"] = bool(result["collapse_reason"])
    store.report({**result, "final": True})  # not "done": Tune reserves that key
    return result


# --------------------------------------------------------------------------------------------
def _parse_value(text: str, default: Any) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def config_from_cli(argv: list[str]) -> tuple[RunConfig, argparse.Namespace]:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(description="Train one run of the lab (resumes from --out if it holds a checkpoint).")
    parser.add_argument("--out", required=True, help="folder for the checkpoint, metrics.jsonl and result.json")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    parser.add_argument("--quiet", action="store_true")
    for name in sorted(field_names()):
        parser.add_argument(f"--{name}", type=str, default=None)
    args = parser.parse_args(argv)
    values = {name: _parse_value(getattr(args, name), getattr(defaults, name))
              for name in field_names() if getattr(args, name) is not None}
    return RunConfig.from_dict(values, where="command line"), args


def main(argv: list[str] | None = None) -> None:
    import json

    cfg, args = config_from_cli(sys.argv[1:] if argv is None else argv)
    if cfg.workers > 1:
        from lab.ray_train import train_distributed

        result = train_distributed(cfg, storage=os.path.abspath(args.out), download=args.download)
    else:
        result = train(cfg, LocalStore(args.out), download=args.download, progress=not args.quiet)
    with open(os.path.join(args.out, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(json.dumps({k: v for k, v in result.items() if k in (
        "method", "batch_size", "knn_top1", "linear_top1", "random_knn_top1", "random_linear_top1",
        "wall_s", "status")}))


if __name__ == "__main__":
    main()
