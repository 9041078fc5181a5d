"""Where the loop's per-epoch checkpoints and metrics go, and reading another run's backbone.

The loop only knows this small interface: `load()` the latest state (or None), `save(state, metrics)`
at the end of every epoch and once more when the run is done (the state then holds the run's row and
its outputs), `report(metrics)` for rows without state, and `stage(name)`: the store of a stage that
runs before this run (PNDA's RAIS). `LocalStore` writes one file atomically (a SIGKILL mid-write
leaves the previous checkpoint intact); the Ray stores (lab.ray_train, studies.runner) hand the same
state to Ray Train / Ray Tune so that a restored trial resumes where it stopped.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any, Protocol

import torch

from lab.errors import CheckpointError, ConfigError
from lab.jsonio import dumps


CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: knobs declared per method (lab.knobs), momentum networks and queues as modules


class CheckpointStore(Protocol):
    where: str

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...

    def report(self, metrics: dict[str, Any]) -> None: ...

    def stage(self, name: str) -> "CheckpointStore": ...


def save_state_file(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


LAB_STATE_KEYS = ("format", "method", "optimizer", "epoch", "config")


def load_state_file(path: Path) -> dict[str, Any] | None:
    """A checkpoint of the lab, or None if there is none. Read with torch's weights-only unpickler: tensors,
    dicts, lists, numbers and strings, never code. Anything else, or a damaged file, is refused with the
    file's name and what to do."""
    path = Path(path)
    if not path.exists():
        return None
    recover = f"start the run afresh in another output folder, or delete {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path} is not a lab checkpoint: it holds objects no checkpoint of the lab holds, "
                              f"so it was not loaded ({reason}). Fix: {recover}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is damaged or truncated ({reason}). Fix: {recover}") from None
    if not isinstance(state, dict) or not all(key in state for key in LAB_STATE_KEYS):
        raise CheckpointError(f"{path} is not a lab checkpoint (a lab checkpoint is a dict with {list(LAB_STATE_KEYS)}). "
                              f"Fix: {recover}")
    return state


def load_ray_checkpoint(checkpoint) -> dict[str, Any] | None:
    """The lab's state in a checkpoint Ray Tune or Ray Train hands a restored run, or None (none handed). A
    checkpoint without the lab's file (lost from the study's storage) is said in a line, and the run starts
    afresh: the same run, as every run is seeded."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory) / CHECKPOINT_FILE
        if not path.exists():
            print(f"[lab] {checkpoint.path} holds no {CHECKPOINT_FILE} (lost from the study's storage?): the run "
                  "starts afresh", file=sys.stderr, flush=True)
            return None
        return load_state_file(path)


class LocalStore:
    """Checkpoint in `directory/checkpoint.pt`, metrics appended to `directory/metrics.jsonl`; a stage's
    store is `directory/stages/<name>`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.where = str(self.directory / CHECKPOINT_FILE)

    def load(self) -> dict[str, Any] | None:
        return load_state_file(self.directory / CHECKPOINT_FILE)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        save_state_file(state, self.directory / CHECKPOINT_FILE)
        self.report(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        with open(self.directory / "metrics.jsonl", "a") as fh:
            fh.write(dumps(metrics) + "\n")

    def stage(self, name: str) -> "LocalStore":
        return LocalStore(self.directory / "stages" / name)


class MemoryStore:
    """Keeps everything in memory (tests, benchmarks, stages inside Ray Train workers)."""

    def __init__(self, where: str = "memory") -> None:
        self.state: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []
        self.stages: dict[str, MemoryStore] = {}
        self.where = where

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.state = state
        self.report(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        self.metrics.append(metrics)

    def stage(self, name: str) -> "MemoryStore":
        return self.stages.setdefault(name, MemoryStore(f"{self.where}/stages/{name}"))


def load_backbone_from(method: torch.nn.Module, path: str) -> None:
    """Initialise the method's backbone from another run's checkpoint (a run folder or the file): `init_from`,
    how runs chain (formula-driven pretraining, then fine-tuning)."""
    file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise ConfigError(f"init_from={path!r}: no checkpoint at {file}; point it at a finished run's folder")
    state = load_state_file(Path(file))
    if not isinstance(state, dict) or "method" not in state:
        raise CheckpointError(f"init_from={path!r}: {file} is not a lab checkpoint (no method state in it)")
    backbone = {k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")}
    missing, unexpected = method.backbone.load_state_dict(backbone, strict=False)
    if missing or unexpected or not backbone:
        raise ConfigError(f"init_from={path!r}: its backbone does not match this run's (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}): use the same backbone and input channels")
