"""The study runner end to end on small studies: validation before Ray; a SIGKILLed grid study, its state in a
--storage apart from --out, that restarts and reruns no finished trial, is extended by a batch size, and is
fetched into another --out; seeds under searched points with ASHA, its stopped trials recorded as such (slow:
the command line's killed and restored sweep in tests/test_sweep.py runs the same checks in the default
suite)."""

import json
from pathlib import Path

import polars as pl
import pytest

from lab.errors import ConfigError
from studies.runner import check_space, run_study
from studies.search import STORAGE_FILE, open_study
from tests.processes import kill_session, start, wait_for
from tests.small_study import check_asha_study

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
    the lab's settings reach the trials through the job's runtime environment. The study's state is in its
    --storage, a folder apart from --out (what every node of a cluster would mount): the trials write only
    there, the restarted driver resumes from there, and the results and report land in --out. Here Tune's
    restore fails (its searcher's snapshot is damaged, as an older searcher's was after an upgrade): Tune logs
    it and goes on without the trials it could not restore, and the study runs those from its ledger in a new
    experiment (the killed sweep of tests/test_sweep.py, its state in its --out, restores cleanly)."""
    out, storage, log = tmp_path / "study", tmp_path / "shared" / "study", tmp_path / "trials.log"
    args = ["-m", "tests.small_study", "grid", str(out), str(storage)]
    events_before = _kill_after_first_done(args, log, tmp_path / "first.txt", ray_head.address)
    finished_before = {t for e, t in events_before if e == "done"}
    assert 1 <= len(finished_before) < 4, f"kill came too late or too early: {events_before}"
    for snapshot in (storage / "tune").glob("searcher-state-*.pkl"):
        snapshot.write_bytes(b"not a pickle")

    second = start(args, tmp_path / "second.txt", LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address)
    second.wait(timeout=400)
    output = (tmp_path / "second.txt").read_text()
    assert second.returncode == 0, output[-3000:]
    assert f"resuming {storage / 'tune'}" in output and "without a row: running them in a new experiment" in output
    assert {p.name for p in out.iterdir()} >= {"results.parquet", "history.parquet", "report.html", "study.json"}
    assert not {"tune", "tune-2", "final_rows", STORAGE_FILE} & {p.name for p in out.iterdir()}
    assert {"tune", "tune-2", "final_rows", STORAGE_FILE, "study.json"} <= {p.name for p in storage.iterdir()}
    events = _events(log)
    # only the second study's events: in the first, a trial that finished first may have started second
    restarted = [t for e, t in events[len(events_before):] if e == "start" and t in finished_before]
    assert not restarted, f"finished trials were run again: {restarted}"
    finished = [t for e, t in events if e == "done"]
    assert sorted(set(finished)) == sorted(finished) and len(finished) == 4, events

    results = pl.read_parquet(out / "results.parquet")
    assert len(results) == 4 and (results["status"] == "ok").all()
    cells = results.select(["method", "batch_size", "seed"]).unique()
    assert len(cells) == 4  # the grid, each cell once: the searcher's state survived the restore
    assert sorted(results["batch_size"].unique().to_list()) == [32, 64]
    assert results["batch_size"].to_list() == sorted(results["batch_size"].to_list()[:2]) * 2  # sorted by axes
    history = pl.read_parquet(out / "history.parquet")
    assert set(history["trial_id"].to_list()) == set(results["trial_id"].to_list())
    assert "batch_size" in history.columns  # the study's axes ride along with each epoch
    assert (out / "report.html").stat().st_size > 100_000  # plotly.js inlined

    # a third batch size in the same folder: an extension that runs the 2 cells it lacks and nothing else (the
    # cells an extension by more seeds runs are tests/test_search.py's; both are the same ledger lookup)
    more = start(["-m", "tests.small_study", "grid_more_batches", str(out), str(storage)], tmp_path / "more.txt",
                 LAB_TRIAL_LOG=str(log), RAY_ADDRESS=ray_head.address)
    assert more.wait(timeout=400) == 0, (tmp_path / "more.txt").read_text()[-3000:]
    started = [t for e, t in _events(log)[len(events):] if e == "start"]
    assert len(started) == 2 and not set(started) & set(finished), started
    results = pl.read_parquet(out / "results.parquet")
    assert len(results) == 6 and (results["status"] == "ok").all()
    assert sorted(results.filter(pl.col("trial_id").is_in(started))["batch_size"].to_list()) == [16, 16]
    study = json.loads((storage / "study.json").read_text())
    assert [e["name"] for e in study["experiments"]] == ["tune", "tune-2", "tune-3"] and study["trials"] == 6
    assert all(e["finished"] for e in study["experiments"]) and (out / "study.json").read_text() == json.dumps(
        study, indent=1)  # the report's copy
    # the Optuna study: one grid point per (method, batch size), each told once
    trials = open_study(storage / STORAGE_FILE, "small_grid", 0).trials
    assert sorted((t.params["method"], t.params["batch_size"]) for t in trials) == sorted(
        results.select(["method", "batch_size"]).rows())

    # fetched back: the same study with another --out and the same --storage rebuilds the results there, no Ray
    from tests.small_study import FIXED
    fetched = tmp_path / "fetched"
    run_study("small_grid", FIXED, {"method": ["simclr", "simsiam"], "batch_size": [32, 64, 16], "seed": [0]},
              fetched, report="batch_size", storage=storage)
    assert pl.read_parquet(fetched / "results.parquet").equals(results)

    # a space that drops a value or changes what the folder holds is refused before Ray, nothing run
    with pytest.raises(ConfigError, match=r"another space \(batch_size lost \[64\]\)"):
        run_study("small_grid", FIXED, {"method": ["simclr", "simsiam"], "batch_size": [32, 16], "seed": [0]}, out,
                  report="batch_size", storage=storage)
    with pytest.raises(ConfigError, match="holds another study"):
        run_study("small_grid", {**FIXED, "epochs": 3}, {"method": ["simclr"], "seed": [0]}, out, report="batch_size",
                  storage=storage)


@pytest.mark.parametrize("storage, message", [
    ("ftp://host/study", "ftp:// is not a store the lab reads"),
    ("relative/study", "give an absolute path, the same on every node"),
    ("{out}/state", "one lies inside the other"),
])
def test_a_storage_that_not_every_node_can_use_is_refused_before_anything_runs(tmp_path, storage, message):
    from tests.small_study import FIXED

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        run_study("small_grid", FIXED, {"seed": [0]}, out, storage=storage.format(out=out))
    assert not out.exists()


@pytest.mark.slow  # the same checks, after a kill and a restore, run through the command line in tests/test_sweep.py
def test_seeds_under_searched_points_with_asha_record_trials_stopped_early(tmp_path, ray_head):
    """TPE over the temperature with two seeds under each point and ASHA from epoch 1, run by the runner (the
    command line's run is tests/test_sweep.py's): the checks of tests.small_study.check_asha_study."""
    out = tmp_path / "asha"
    proc = start(["-m", "tests.small_study", "search_seeds", str(out)], tmp_path / "console.txt",
                 RAY_ADDRESS=ray_head.address)
    assert proc.wait(timeout=400) == 0, (tmp_path / "console.txt").read_text()[-3000:]
    console = (tmp_path / "console.txt").read_text()
    check_asha_study(out, console)
