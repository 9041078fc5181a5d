"""Where the loop's per-epoch checkpoints and metrics go.

The loop only knows this small interface: `load()` the latest state (or None) and
`save(state, metrics)` at the end of every epoch; `report(metrics)` for the final row.
`LocalStore` writes one file atomically (a SIGKILL mid-write leaves the previous
checkpoint intact); the Ray stores (lab.ray_train) hand the same state to Ray Train /
Ray Tune so that a restored trial resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import torch

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...

    def report(self, metrics: dict[str, Any]) -> None: ...


def save_state_file(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state_file(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class LocalStore:
    """Checkpoint in `directory/checkpoint.pt`, metrics appended to `directory/metrics.jsonl`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        return load_state_file(self.directory / CHECKPOINT_FILE)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        save_state_file(state, self.directory / CHECKPOINT_FILE)
        self.report(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        with open(self.directory / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(metrics, default=str) + "\n")


class MemoryStore:
    """Keeps everything in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.state = state
        self.report(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        self.metrics.append(metrics)
