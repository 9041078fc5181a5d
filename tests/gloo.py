"""Run one step function on gloo worker processes (CPU) and collect what each returns: the
harness of every method file's "2 workers x B/2 = 1 worker x B" test.

`step(world, rank)` must be a module-level function (it is pickled into the worker processes);
it runs with torch.distributed initialised and 1 torch thread per process.

The workers are started once per test session and serve every step in turn (spawning 2 processes that
import torch and the lab took ~5 s per test, a minute over the suite). Each step starts from the same
process state: float32 default dtype, 1 thread, gradients on, a fresh seed; a step that fails returns its
traceback, one that hangs (a collective the other rank never joins) ends the pool after a timeout.
"""

from __future__ import annotations

import atexit
import io
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

STEP_TIMEOUT_S = 120


def _serve(rank: int, world: int, init_file: str, tasks, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        while (step := tasks.get()) is not None:
            torch.set_default_dtype(torch.float32)
            torch.set_grad_enabled(True)
            torch.set_num_threads(1)
            torch.manual_seed(0)
            try:
                buffer = io.BytesIO()
                torch.save(step(world, rank), buffer)
                results.put((rank, True, buffer.getvalue()))
            except BaseException:  # noqa: BLE001 - the traceback goes back to the test
                results.put((rank, False, traceback.format_exc()))
            dist.barrier()  # both ranks done before the next step's collectives
    finally:
        dist.destroy_process_group()


class GlooPool:
    """`world` gloo processes, each serving steps from its queue."""

    def __init__(self, world: int):
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self.world = world
        self.folder = tempfile.mkdtemp(prefix="lab-gloo-")
        self.tasks = [context.Queue() for _ in range(world)]
        self.results = context.Queue()
        self.processes = [context.Process(target=_serve, args=(rank, world, f"{self.folder}/init", self.tasks[rank],
                                                               self.results), daemon=True) for rank in range(world)]
        for process in self.processes:
            process.start()

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def run(self, step: Callable[[int, int], Any]) -> list[Any]:
        import queue

        for tasks in self.tasks:
            tasks.put(step)
        answers: dict[int, tuple[bool, Any]] = {}
        while len(answers) < self.world:
            try:
                rank, ok, payload = self.results.get(timeout=STEP_TIMEOUT_S)
            except queue.Empty:
                self.close()
                raise TimeoutError(f"{step.__qualname__} gave no answer within {STEP_TIMEOUT_S} s on gloo workers "
                                   f"(answered: {sorted(answers)}); the pool is closed") from None
            answers[rank] = (ok, payload)
        failed = [f"rank {rank}:\n{payload}" for rank, (ok, payload) in sorted(answers.items()) if not ok]
        if failed:
            raise RuntimeError(f"{step.__qualname__} failed on gloo workers:\n" + "\n".join(failed))
        return [torch.load(io.BytesIO(answers[rank][1]), weights_only=False) for rank in range(self.world)]

    def close(self) -> None:
        for tasks in self.tasks:
            tasks.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)


_POOLS: dict[int, GlooPool] = {}


@atexit.register
def _close_pools() -> None:
    while _POOLS:
        _POOLS.popitem()[1].close()


def run_on_gloo_workers(step: Callable[[int, int], Any], tmp_path: Path | None = None, world: int = 2) -> list[Any]:
    """step(world, rank) on `world` gloo processes (the session's pool); their results in rank order."""
    pool = _POOLS.get(world)
    if pool is None or not pool.alive():
        pool = _POOLS[world] = GlooPool(world)
    return pool.run(step)
