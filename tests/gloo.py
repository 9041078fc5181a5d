"""Run one step function on gloo worker processes (CPU) and collect what each returns: the
harness of every method file's "2 workers x B/2 = 1 worker x B" test.

`step(world, rank)` must be a module-level function (it is pickled into the spawned processes);
it runs with torch.distributed initialised and 1 torch thread per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch


def _worker(rank: int, world: int, init_file: str, out_dir: str, step: Callable[[int, int], Any]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(step(world, rank), f"{out_dir}/worker{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_gloo_workers(step: Callable[[int, int], Any], tmp_path: Path, world: int = 2) -> list[Any]:
    """step(world, rank) on `world` gloo processes; their results in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path), step), nprocs=world)
    return [torch.load(tmp_path / f"worker{rank}.pt") for rank in range(world)]
