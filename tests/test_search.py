"""The searcher under every study (studies.search), driven by hand as Tune drives it, without Ray: points
and cells, what Optuna is told, a snapshot restored after a kill, and what an extension runs."""

import pickle

import optuna
import pytest
from ray import tune

from studies.runner import _search_for
from studies.search import STORAGE_FILE, LabSearch, Point, open_study
from studies.space import SCORE, grid_cells, key_of, split_axes

FIXED = {"scale": "smoke", "method": "simclr"}


def _run(search: LabSearch, scores, prefix: str = "t") -> list[dict]:
    """Ask until FINISHED; complete each trial with scores(config)."""
    configs = []
    while (config := search.suggest(f"{prefix}{len(configs)}")) != LabSearch.FINISHED:
        configs.append(config)
    for index, config in enumerate(configs):
        search.on_trial_complete(f"{prefix}{index}", {SCORE: scores(config)})
    return configs


def test_points_and_cells_of_a_space():
    grid = {"batch_size": [32, 64], "seed": [0, 1]}
    assert split_axes(grid, {}) == ({"batch_size": [32, 64]}, {"seed": [0, 1]})
    assert split_axes(grid, {"temperature": tune.loguniform(0.1, 1)}) == ({}, grid)
    assert grid_cells({}) == [{}] and len(grid_cells(grid)) == 4
    assert key_of({"b": 1, "a": [2, 3]}) == key_of({"a": (2, 3), "b": 1}) == '{"a": "[2, 3]", "b": 1}'


def test_a_grid_point_is_told_the_mean_over_its_seeds_once(tmp_path):
    points = [Point({"batch_size": b}, [{"seed": 0}, {"seed": 1}], tell=True) for b in (32, 64)]
    search = LabSearch(points, {}, [{"seed": 0}, {"seed": 1}], 0, tmp_path / STORAGE_FILE, "grid",
                       axes_of_grid={"batch_size": [32, 64]})
    assert search.total_trials == 4
    configs = _run(search, lambda c: c["batch_size"] + 10 * c["seed"])
    assert sorted((c["batch_size"], c["seed"]) for c in configs) == [(32, 0), (32, 1), (64, 0), (64, 1)]
    trials = open_study(tmp_path / STORAGE_FILE, "grid", 0).trials
    assert sorted((t.params["batch_size"], t.value) for t in trials) == [(32, 37.0), (64, 69.0)]
    # restored from its snapshot (Tune pickles the searcher, then restores its saved state), the last cell
    # replayed by a restored trial: the point is not added twice
    search.save(str(tmp_path / "state.pkl"))
    restored = pickle.loads(pickle.dumps(search))
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_complete("t3", {SCORE: 0.0})
    assert len(open_study(tmp_path / STORAGE_FILE, "grid", 0).trials) == 2


def test_searched_points_run_on_every_seed_and_a_point_lost_with_a_kill_is_failed_not_left_running(tmp_path):
    cells = [{"seed": 0}, {"seed": 1}]
    search = LabSearch([], {"temperature": tune.loguniform(0.05, 1.0)}, cells, 3, tmp_path / STORAGE_FILE, "tpe",
                       startup=2)
    pickled_at_start = pickle.dumps(search)  # what Tune's tuner.pkl holds
    first, second = search.suggest("a"), search.suggest("b")
    assert first["temperature"] == second["temperature"] and [first["seed"], second["seed"]] == [0, 1]
    search.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot
    search.suggest("c")  # a second point asked after the snapshot: the kill loses it
    restored = pickle.loads(pickled_at_start)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    configs = [first, second]
    while (config := restored.suggest(f"r{len(configs)}")) != LabSearch.FINISHED:
        configs.append(config)
    assert len(configs) == 6 and len({c["temperature"] for c in configs}) == 3
    restored.on_trial_complete("a", {SCORE: 10.0})
    restored.on_trial_complete("b", {SCORE: 20.0})
    for index in range(2, 6):
        restored.on_trial_complete(f"r{index}", {SCORE: 1.0 * index})
    study = open_study(tmp_path / STORAGE_FILE, "tpe", 0)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and states.count(optuna.trial.TrialState.FAIL) == 1
    complete = sorted(t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    assert complete == [2.5, 4.5, 15.0]  # each point's mean over its two seeds


def test_a_cell_without_a_score_counts_as_missing_and_a_point_with_none_fails(tmp_path):
    search = LabSearch([], {"temperature": tune.uniform(0.1, 1.0)}, [{"seed": 0}, {"seed": 1}], 2,
                       tmp_path / STORAGE_FILE, "missing")
    configs = [search.suggest(str(i)) for i in range(4)]
    search.on_trial_complete("0", {SCORE: 30.0})
    search.on_trial_complete("1", error=True)
    search.on_trial_complete("2", {SCORE: float("nan")})
    search.on_trial_complete("3", None)
    trials = open_study(tmp_path / STORAGE_FILE, "missing", 0).trials
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, 30.0),
                                                    (optuna.trial.TrialState.FAIL, None)]
    assert configs[0]["temperature"] == configs[1]["temperature"] != configs[2]["temperature"]


def _row(**values):
    return {"method": "simclr", "crashed": False, **values}


def test_an_extension_runs_only_the_cells_and_points_the_ledger_lacks(tmp_path):
    # a grid: batch sizes 32, 64 had seed 0; now seeds 0, 1 and a new batch size 128
    rows = {"a": _row(batch_size=32, seed=0), "b": _row(batch_size=64, seed=0),
            "c": _row(batch_size=64, seed=1, crashed=True)}  # a crashed cell is run again
    before = {"batch_size": [32, 64], "seed": [0]}  # the first experiment, which told Optuna of its points
    _search_for(FIXED, before, {}, *split_axes(before, {}), grid_cells(before), None, rows, tmp_path, "g", 0)
    grid = {"batch_size": [32, 64, 128], "seed": [0, 1]}
    search = _search_for(FIXED, grid, {}, *split_axes(grid, {}), grid_cells(grid), None, rows, tmp_path, "g", 0)
    plan = sorted((p.params["batch_size"], [c["seed"] for c in p.cells], p.tell) for p in search.points)
    assert plan == [(32, [1], False), (64, [1], False), (128, [0, 1], True)] and search.total_trials == 4
    # a search: 2 points ran on seed 0; now 2 seeds and 3 points: the old points' seed 1, one new point on both
    space = {"temperature": tune.loguniform(0.05, 1.0)}
    rows = {"a": _row(temperature=0.1, seed=0), "b": _row(temperature=0.3, seed=0)}
    told = open_study(tmp_path / STORAGE_FILE, "s", 0)
    for temperature in (0.1, 0.3):
        told.add_trial(optuna.trial.create_trial(params={"temperature": temperature}, value=50.0, distributions={
            "temperature": optuna.distributions.FloatDistribution(0.05, 1.0, log=True)}))
    grid = {"seed": [0, 1]}
    search = _search_for(FIXED, grid, space, *split_axes(grid, space), grid_cells(grid), 3, rows, tmp_path, "s", 0)
    assert sorted((p.params["temperature"], [c["seed"] for c in p.cells], p.tell) for p in search.points) == [
        (0.1, [1], False), (0.3, [1], False)]
    assert search.new_points == 1 and search.total_trials == 4
    # nothing new: nothing to run
    rows = {"a": _row(batch_size=32, seed=0)}
    grid = {"batch_size": [32], "seed": [0]}
    assert _search_for(FIXED, grid, {}, *split_axes(grid, {}), grid_cells(grid), None, rows, tmp_path, "n",
                       0).total_trials == 0


@pytest.mark.parametrize("domain, expected", [
    (tune.loguniform(0.01, 1.0), optuna.distributions.FloatDistribution(0.01, 1.0, log=True)),
    (tune.randint(1, 5), optuna.distributions.IntDistribution(1, 4)),
    (tune.choice([[1, 2], [3]]), optuna.distributions.CategoricalDistribution(["[1, 2]", "[3]"])),
])
def test_tune_domains_become_the_optuna_distributions_that_sample_the_same(domain, expected):
    from studies.search import optuna_distribution

    assert optuna_distribution(domain) == expected


@pytest.mark.parametrize("searched", [True, False])
def test_a_point_a_restore_split_over_two_experiments_is_told_once_with_all_its_cells(tmp_path, searched):
    """A restore that lost a trial leaves its point's other cells to a follow-up experiment (CI, in the sweep
    kill test: a point's seed 0 ran in the first experiment, its seed 1 in the second). The point was never
    told: the follow-up tells it the mean over both experiments' cells -- a searched point in its own asked
    trial (still running, so the follow-up's reconcile must not fail it), a grid point added once."""
    knob = {"temperature": 0.2} if searched else {"batch_size": 32}
    space = {"temperature": tune.loguniform(0.05, 1.0)} if searched else {}
    grid = {"seed": [0, 1]} if searched else {"batch_size": [32], "seed": [0, 1]}
    study = open_study(tmp_path / STORAGE_FILE, "split", 0)
    if searched:  # the first experiment's ask, never told
        asked = study.ask({"temperature": optuna.distributions.FloatDistribution(0.05, 1.0, log=True)})
        knob = {"temperature": asked.params["temperature"]}
    rows = {"a": {**_row(**knob, seed=0), SCORE: 40.0}}
    search = _search_for(FIXED, grid, space, *split_axes(grid, space), grid_cells(grid), 1 if searched else None,
                         rows, tmp_path, "split", 0)
    assert [(p.tell, p.cells) for p in search.points] == [(True, [{"seed": 1}])] and search.total_trials == 1
    _run(search, lambda c: 50.0)
    trials = open_study(tmp_path / STORAGE_FILE, "split", 0).get_trials()
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 45.0)]
    if not searched:  # (a searched point's cells are in the user attributes of its ask)
        assert trials[0].user_attrs["cell_scores"] == [40.0, 50.0]


def test_a_grid_point_whose_rows_came_in_before_a_kill_is_told_once_by_the_next_searcher(tmp_path):
    """The driver was killed after a trial wrote its row and before the searcher told Optuna: the next
    experiment's searcher finds the point complete in the ledger and tells it (once, the mean of its rows)."""
    rows = {"a": {**_row(batch_size=32, seed=0), SCORE: 40.0}, "b": {**_row(batch_size=32, seed=1), SCORE: 50.0}}
    grid = {"batch_size": [32, 64], "seed": [0, 1]}
    for _ in range(2):  # a second restart finds it told and adds nothing
        search = _search_for(FIXED, grid, {}, *split_axes(grid, {}), grid_cells(grid), None, rows, tmp_path, "g", 0)
        assert [p.params["batch_size"] for p in search.points] == [64]
        trials = open_study(tmp_path / STORAGE_FILE, "g", 0).trials
        assert [(t.params["batch_size"], t.value) for t in trials] == [(32, 45.0)]


def test_a_grid_whose_fixed_knobs_alone_are_no_valid_run_is_resumed_from_its_ledger(tmp_path):
    """SwAV at batch 64 without a queue, its prototypes a grid axis: the fixed knobs alone would take the
    scale's 256 prototypes, more than the 64 samples of the codes, which the lab refuses. A finished cell in
    the ledger is read within its point, so the next experiment runs only the cell it lacks (a resume of
    studies/swav_prototypes.py stopped here with that refusal)."""
    fixed = {"scale": "cpu", "method": "swav", "batch_size": 64, "swav_queue_size": 0}
    grid = {"swav_prototypes": [32, 64], "seed": [0]}
    rows = {"a": {**_row(method="swav", swav_prototypes=64, seed=0), SCORE: 70.0}}
    search = _search_for(fixed, grid, {}, *split_axes(grid, {}), grid_cells(grid), None, rows, tmp_path, "swav", 0)
    assert [(p.params, p.cells) for p in search.points] == [({"swav_prototypes": 32}, [{"seed": 0}])]
