"""The study runner: validation before Ray, the batch-size study end to end at smoke scale, and a
SIGKILLed study that restarts, keeps its Optuna searcher and reruns no finished trial -- a grid study and
a searched (TPE) one."""

import glob
import pickle
from pathlib import Path

import polars as pl
import pytest

from lab.errors import ConfigError
from studies.runner import check_space
from tests.processes import kill_session, start, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_in_a_search_space_fails_before_ray():
    with pytest.raises(ConfigError, match=r"search space: unknown knob\(s\) \['tau'\]"):
        check_space({"scale": "smoke"}, {"tau": [0.1, 0.5]})
    with pytest.raises(ConfigError, match=r"grid cell \{'temperature': 0.0\}: .*temperature=0.0"):
        check_space({"scale": "smoke"}, {"temperature": [0.5, 0.0]})
    assert len(check_space({"scale": "smoke"}, {"method": ["simclr", "simsiam"], "batch_size": [32, 64]})) == 4


def _events(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


def _kill_after_first_done(args: list[str], log: Path, console: Path, address: str, timeout: float = 240) -> list:
    first = start(args, console, LAB_TRIAL_LOG=str(log), RAY_ADDRESS=address)
    wait_for(lambda: any(e == "done" for e, _ in _events(log)), timeout)
    kill_session(first)
    return _events(log)


def test_killed_study_resumes_without_redoing_finished_trials(tmp_path, ray_head):
    """The drivers join the test session's Ray head (a killed driver takes its trials with it, not the head);
    the lab's settings reach the trials through the job's runtime environment."""
    out, log = tmp_path / "study", tmp_path / "trials.log"
    args = ["-m", "tests.small_study", "grid", str(out)]
    events_before = _kill_after_first_done(args, log, tmp_path / "first.txt", ray_head.address)
    finished_before = {t for e, t in events_before if e == "done"}
    assert 1 <= len(finished_before) < 4, f"kill came too late or too early: {events_before}"

    second = start(args, tmp_path / "second.txt", LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address)
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
    assert sorted(results["batch_size"].unique().to_list()) == [32, 64]
    assert results["batch_size"].to_list() == sorted(results["batch_size"].to_list()[:2]) * 2  # sorted by axes
    history = pl.read_parquet(out / "history.parquet")
    assert set(history["trial_id"].to_list()) == set(results["trial_id"].to_list())
    assert "batch_size" in history.columns  # the study's axes ride along with each epoch
    assert (out / "report.html").stat().st_size > 100_000  # plotly.js inlined

    # the same folder with another study's command: refused, nothing run
    other = start(["-m", "tests.small_study", "grid_more_seeds", str(out)], tmp_path / "other.txt",
                  RAY_ADDRESS=ray_head.address)
    assert other.wait(timeout=120) != 0 and "holds another study" in (tmp_path / "other.txt").read_text()


def test_a_killed_searched_study_is_restored_with_its_optuna_searcher(tmp_path, ray_head):
    """TPE over the temperature, 4 samples, killed after its first finished trial. Restored, it runs only the
    trials it owes, and its searcher is the first session's: the Optuna study Tune saves holds all 4 trials,
    those suggested before the kill included (ray #30861 dropped the searcher on restore)."""
    from tests.small_study import SAMPLES

    out, log = tmp_path / "searched", tmp_path / "trials.log"
    args = ["-m", "tests.small_study", "search", str(out)]
    events_before = _kill_after_first_done(args, log, tmp_path / "first.txt", ray_head.address)
    finished_before = {t for e, t in events_before if e == "done"}
    assert 1 <= len(finished_before) < SAMPLES, events_before

    second = start(args, tmp_path / "second.txt", LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address)
    second.wait(timeout=400)
    assert second.returncode == 0, (tmp_path / "second.txt").read_text()[-3000:]
    events = _events(log)[len(events_before):]
    assert not [t for e, t in events if e == "start" and t in finished_before], events
    results = pl.read_parquet(out / "results.parquet")
    assert len(results) == SAMPLES and (results["status"] == "ok").all()
    temperatures = results["temperature"].to_list()
    assert len(set(temperatures)) == SAMPLES and all(0.05 <= t <= 1.0 for t in temperatures)
    # the searcher Tune saved last (a file this test's own study wrote): one Optuna study across both sessions
    state_file = sorted(glob.glob(str(out / "tune" / "searcher-state-*.pkl")))[-1]  # named by session start
    with open(state_file, "rb") as fh:
        state = pickle.load(fh)
    study = state["searcher"]._ot_study if "searcher" in state else state["_ot_study"]
    suggested = sorted(t.params["temperature"] for t in study.trials)
    assert len(study.trials) == SAMPLES and suggested == pytest.approx(sorted(temperatures))
