"""The study runner: validation before Ray, the batch-size study end to end at smoke scale,
and a SIGKILLed study that restarts, keeps its Optuna searcher and reruns no finished trial."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from lab.config import ConfigError
from studies.runner import check_space

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_in_a_search_space_fails_before_ray():
    with pytest.raises(ConfigError, match=r"search space: unknown key\(s\) \['tau'\]"):
        check_space({"scale": "smoke"}, {"tau": [0.1, 0.5]})
    with pytest.raises(ConfigError, match=r"grid cell \{'temperature': 0.0\}: temperature=0.0"):
        check_space({"scale": "smoke"}, {"temperature": [0.5, 0.0]})
    assert len(check_space({"scale": "smoke"}, {"method": ["simclr", "simsiam"], "batch_size": [32, 64]})) == 4


def _run_study(out: Path, log: Path, console: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAB_TRIAL_LOG": str(log), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with open(console, "w") as sink:  # a file, not a pipe: nobody drains a pipe while we wait
        return subprocess.Popen([sys.executable, "studies/batch_size.py", "--scale", "smoke", "--out", str(out)],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the study and every process of its session: the local Ray cluster its driver started
    (GCS, raylet, workers), and nothing else on the machine (unlike `ray stop --force`)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for _ in range(3):
        table = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
        pids = [int(pid) for pid, sid in zip(table[::2], table[1::2]) if int(sid) == process.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(1)


def _events(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


def test_killed_study_resumes_without_redoing_finished_trials(tmp_path):
    out, log = tmp_path / "study", tmp_path / "trials.log"
    first = _run_study(out, log, tmp_path / "first.txt")
    deadline = time.time() + 240
    while time.time() < deadline and not any(e == "done" for e, _ in _events(log)):
        time.sleep(0.2)
    _kill_session(first)
    events_before = _events(log)
    finished_before = {t for e, t in events_before if e == "done"}
    assert 1 <= len(finished_before) < 4, f"kill came too late or too early: {events_before}"

    second = _run_study(out, log, tmp_path / "second.txt")
    second.wait(timeout=400)
    output = (tmp_path / "second.txt").read_text()
    assert second.returncode == 0, output[-3000:]
    assert "resuming" in output
    events = _events(log)
    # only the second study's events: in the first, a trial that finished first may have started second
    restarted = [t for e, t in events[len(events_before):] if e == "start" and t in finished_before]
    assert not restarted, f"finished trials were run again: {restarted}"
    finished = [t for e, t in events if e == "done"]
    assert sorted(set(finished)) == sorted(finished) and len(finished) == 4, events

    results = pl.read_parquet(out / "results.parquet")
    assert len(results) == 4 and (results["status"] == "ok").all()
    cells = results.select(["method", "batch_size", "seed"]).unique()
    assert len(cells) == 4  # the grid, each cell once: the Optuna GridSampler state survived the restore
    assert sorted(results["batch_size"].unique().to_list()) == [32, 128]
    history = pl.read_parquet(out / "history.parquet")
    assert set(history["trial_id"].to_list()) == set(results["trial_id"].to_list())
    assert (out / "report.html").stat().st_size > 100_000  # plotly.js inlined

    # the same folder with another study's command: refused, nothing run
    other = subprocess.run([sys.executable, "studies/batch_size.py", "--scale", "smoke", "--seeds", "2", "--out",
                            str(out)], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"})
    assert other.returncode != 0 and "holds another study" in other.stderr


def test_a_searched_space_is_sampled_by_optuna_tpe(tmp_path, monkeypatch):
    import ray
    from ray import tune

    from studies.runner import run_study

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fixed = dict(scale="smoke", method="simclr", batch_size=64, train_subset=512, eval_subset=256, test_subset=128,
                 linear_epochs=2)
    try:
        results_path, _ = run_study("tpe", fixed, {"temperature": tune.loguniform(0.05, 1.0)}, tmp_path,
                                    num_samples=3, seed=0)
    finally:
        ray.shutdown()
    results = pl.read_parquet(results_path)
    assert len(results) == 3 and (results["status"] == "ok").all()
    temperatures = results["temperature"].to_list()
    assert len(set(temperatures)) == 3 and all(0.05 <= t <= 1.0 for t in temperatures)
