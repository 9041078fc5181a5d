"""The searcher under every study: Optuna picks the *points*, every point runs on each *cell*, and the Optuna
study lives in the study's folder.

A study's space has grid axes (lists: every value is run) and searched axes (ray.tune domains). With
searched axes, a point is one TPE sample of them and the cells are every combination of the grid axes
(seeds included): a point's Tune trials are its cells, and Optuna learns the mean of their scores. Without
searched axes, a point is one combination of the grid axes other than the seed, and the cells are the
seeds. A trial a scheduler stopped early counts with the last score it reported.

The Optuna study is `<out>/optuna.journal` (Optuna's journal storage: append-only, so a SIGKILL leaves it
readable): `optuna-dashboard <out>/optuna.journal` shows it while the study runs and after. A searched
point is an Optuna trial from `ask` (RUNNING while its cells run); a grid point is added to the study
complete (`add_trial`), as there is nothing to sample. Tune saves this searcher's bookkeeping (which Tune
trial is which point and cell) with its experiment, so a restored study continues the same Optuna study:
points asked after Tune's last snapshot, which the interruption lost, are marked failed there and asked
again, and a point told twice (its last cell finished just before the kill) is told once.

An extension of a study (more seeds, a new grid value, more samples) is a new Tune experiment in the same
folder and the same Optuna study: the points already run get only the cells they lack (Optuna keeps what
it was told of them), and new points are asked as before (TPE learns from every earlier point).
"""

from __future__ import annotations

import json
import math
import pickle
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import ProgressReporter
from ray.tune.schedulers import MedianStoppingRule, TrialScheduler
from ray.tune.search import Searcher

from studies.space import SCORE, key_of, knob_value, optuna_value

STORAGE_FILE = "optuna.journal"
METRIC_NAME = "kNN top-1 (%): test when finished, monitor when stopped early"


def optuna_distribution(domain: Any):
    """A ray.tune domain (float / integer / categorical) as the Optuna distribution that samples the same."""
    import optuna
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

    if isinstance(domain, Categorical):
        return optuna.distributions.CategoricalDistribution([optuna_value(c) for c in domain.categories])
    log = isinstance(domain.get_sampler(), LogUniform)
    if isinstance(domain, Integer):
        return optuna.distributions.IntDistribution(domain.lower, domain.upper - 1, log=log)  # Tune: upper exclusive
    if isinstance(domain, Float):
        return optuna.distributions.FloatDistribution(domain.lower, domain.upper, log=log)
    raise TypeError(f"{domain!r}: only float, integer and categorical domains can be searched")


def startup_points(samples: int) -> int:
    """TPE's random points before it models (Optuna's default is 10 whatever the budget): a third of the
    points, 2 to 10, so that a 12-point search spends 8 of them on TPE's suggestions."""
    return max(2, min(10, samples // 3))


def tpe_sampler(seed: int, trials_so_far: int, startup: int = 10):
    """TPE for the next ask, seeded from the study's seed and its number of trials: TPE keeps no state but its
    random generator and reads the trials from storage, so a sampler made anew per ask samples the same
    whether or not the study was restored in between (one made once per session would repeat its first
    session's draws after a restore)."""
    import optuna

    from lab.seeds import derived_seed

    return optuna.samplers.TPESampler(seed=derived_seed(seed, trials_so_far) % 2**32, n_startup_trials=startup)


def open_study(storage_path: Path, name: str, seed: int, startup: int = 10, journal_store=None):
    """The Optuna study in its journal file; with `journal_store` (a studies.storage.StateFolder of an object
    store), the file is the driver's mirror and is put back into the store after every append."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    class MirroredJournal(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            super().append_logs(logs)
            journal_store.put(Path(storage_path), STORAGE_FILE)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = JournalFileBackend if journal_store is None else MirroredJournal
    storage = JournalStorage(backend(str(storage_path), lock_obj=JournalFileOpenLock(str(storage_path))))
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=tpe_sampler(seed, 0, startup))
    if not study.metric_names:
        with warnings.catch_warnings():  # an experimental API of Optuna's: what optuna-dashboard labels the axis
            warnings.simplefilter("ignore")
            study.set_metric_names([METRIC_NAME])
    return study


@dataclass
class Point:
    """One point of the search and the cells it still runs in this experiment."""

    params: dict[str, Any]
    cells: list[dict[str, Any]]
    tell: bool  # False for a point an earlier experiment told Optuna about: its new cells are not told
    number: int | None = None  # its Optuna trial (searched points; grid points get one when told)
    # cells an earlier experiment ran of a point it never told (the restore that ran them lost the rest of
    # the point to a follow-up experiment): cell key -> score, counted in the mean this experiment tells
    earlier: dict[str, float | None] = field(default_factory=dict)
    issued: int = 0
    scores: list[float | None] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)

    def __post_init__(self):
        self.scores = self.scores or [None] * len(self.cells)
        self.done = self.done or [False] * len(self.cells)


def score_of(row: dict[str, Any]) -> float | None:
    score = row.get(SCORE)
    return float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None


def _same(stored: Any, wanted: Any) -> bool:
    """A ledger row's knob value against a cell's (numbers compared as numbers, lists item by item)."""
    if isinstance(wanted, (list, tuple)):
        return isinstance(stored, (list, tuple)) and len(stored) == len(wanted) and all(
            _same(a, b) for a, b in zip(stored, wanted))
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return stored is wanted
    if isinstance(wanted, (int, float)) and isinstance(stored, (int, float)):
        return math.isclose(stored, wanted, rel_tol=1e-9, abs_tol=1e-12)
    return stored == wanted


class LabSearch(Searcher):
    """Tune's searcher for a lab study: `carried` points (given params and cells: grid points, and the new
    cells of points an earlier experiment ran) first, then `new_points` points asked of TPE, each on `cells`."""

    def __init__(self, carried: list[Point], searched: dict[str, Any], cells: list[dict[str, Any]], new_points: int,
                 storage_path: str | Path, study_name: str, seed: int = 0, axes_of_grid: dict[str, list] | None = None,
                 startup: int = 10, ledger_dir=None, max_live: int | None = None, journal_store=None):
        super().__init__(metric=SCORE, mode="max")
        # trials issued and not finished at most (None: every cell of a grid at once). Here, not in Tune's
        # ConcurrencyLimiter: when Tune's restore fails it keeps the limiter's restored set of live trials
        # (trials it then drops, which never finish) and waits for a free slot forever.
        self.max_live = max_live
        # the study's final rows (a studies.storage.StateFolder: the trials write them, on whichever node), and
        # the object store the Optuna journal is put back into (None: the journal is the state's own file)
        self.ledger_dir, self.journal_store = ledger_dir, journal_store
        self.points = list(carried)
        self.searched, self.cells, self.new_points = dict(searched), list(cells), new_points
        self.storage_path, self.study_name, self.seed, self.startup = str(storage_path), study_name, seed, startup
        self.distributions = {k: optuna_distribution(d) for k, d in searched.items()}
        self.grid_distributions = None
        if axes_of_grid:  # a grid point in Optuna: each of its axes a categorical of the grid's values
            import optuna

            self.grid_distributions = {k: optuna.distributions.CategoricalDistribution(
                list(dict.fromkeys(optuna_value(v) for v in values))) for k, values in axes_of_grid.items()}
        self.asked = 0
        self.trials: dict[str, tuple[int, int]] = {}  # Tune trial id -> (point, cell)
        self._study = None

    @property
    def total_trials(self) -> int:
        return sum(len(p.cells) for p in self.points) + self.new_points * len(self.cells)

    # --- the Optuna study (reopened from its file after a restore: it is not pickled) ------------------
    @property
    def study(self):
        if self._study is None:
            journal_store = getattr(self, "journal_store", None)
            if journal_store is None:
                path = Path(self.storage_path)
            else:  # this driver's mirror of it (a searcher restored on another machine names the old driver's)
                from studies.storage import mirror_folder

                path = mirror_folder(journal_store) / STORAGE_FILE
            self._study = open_study(path, self.study_name, self.seed, self.startup, journal_store)
            self._reconcile()
        return self._study

    def _reconcile(self) -> None:
        """Optuna trials still RUNNING that this bookkeeping does not know were asked after Tune's last
        snapshot, and lost with the interruption: say so in the study (they are asked again)."""
        import optuna

        known = {p.number for p in self.points}
        for trial in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number not in known:
                self._study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_study"] = None
        state.pop("_ledger_cache", None)
        return state

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is this searcher's own; metric and mode are fixed (score, max)

    # --- Tune's interface ----------------------------------------------------------------------------
    def live(self) -> int:
        """Trials issued in this session (or restored with its snapshot) that have not finished."""
        return sum(not self.points[index].done[cell] for index, cell in self.trials.values())

    def suggest(self, trial_id: str):
        if getattr(self, "max_live", None) and self.live() >= self.max_live:
            return None  # asked again when a trial finishes
        for index, point in enumerate(self.points):
            while point.issued < len(point.cells):
                row = self._ledger_row({**point.params, **point.cells[point.issued]})
                if row is None:
                    return self._issue(trial_id, index)
                # run already (a searcher restored from an older snapshot, or none: Tune goes on with the
                # searcher it was started with when a restore fails): count its row, do not run it twice
                point.scores[point.issued], point.done[point.issued] = score_of(row), True
                point.issued += 1
                if all(point.done) and point.tell:
                    self._tell(point)
        if self.asked >= self.new_points:
            return Searcher.FINISHED
        self.study.sampler = tpe_sampler(self.seed, len(self.study.get_trials(deepcopy=False)), self.startup)
        trial = self.study.ask(self.distributions)
        trial.set_user_attr("cells", [key_of(c) for c in self.cells])
        self.asked += 1
        self.points.append(Point({k: knob_value(trial.params[k]) for k in self.searched}, list(self.cells),
                                 tell=True, number=trial.number))
        return self._issue(trial_id, len(self.points) - 1)

    def _ledger_row(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The study's final row of this configuration (not of a crashed trial), if it has one."""
        ledger = self._ledger()
        if ledger is None:
            return None
        cache = self.__dict__.setdefault("_ledger_cache", {})  # file name -> row (rows are written once)
        for name in ledger.names(".json"):
            if name.endswith(".error.json"):
                continue
            if name not in cache:
                cache[name] = json.loads(ledger.read_text(name))
            row = cache[name]
            if all(_same(row.get(k), v) for k, v in config.items()):
                return row
        return None

    def _ledger(self):
        """The ledger as a StateFolder (a searcher pickled by an older lab holds its path as a string; one
        pickled before it had a ledger, None)."""
        from studies.storage import StateFolder

        ledger = getattr(self, "ledger_dir", None)
        return StateFolder.local(Path(ledger)) if isinstance(ledger, (str, Path)) else ledger

    def _issue(self, trial_id: str, index: int) -> dict[str, Any]:
        point = self.points[index]
        cell = point.cells[point.issued]
        self.trials[trial_id] = (index, point.issued)
        point.issued += 1
        return {**point.params, **cell}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        index, cell = self.trials[trial_id]
        point = self.points[index]
        point.scores[cell] = None if error else score_of(result or {})
        point.done[cell] = True
        if all(point.done) and point.tell:
            self._tell(point)

    def tell_finished_grid_point(self, params: dict[str, Any], cells: list[dict[str, Any]],
                                 rows: list[dict[str, Any]]) -> None:
        """A grid point every cell of which has its row, added to the Optuna study if it is not there (the
        driver was killed after the rows were written and before it told Optuna; a restarted searcher that
        finds the rows in the ledger would otherwise never tell it)."""
        self._tell(Point(params, cells, tell=True, scores=[score_of(r) for r in rows], done=[True] * len(rows)))

    def _tell(self, point: Point) -> None:
        import optuna

        cell_scores = [*point.earlier.values(), *point.scores]
        scores = [s for s in cell_scores if s is not None]
        value = sum(scores) / len(scores) if scores else None
        attrs = {"cells": [*point.earlier, *(key_of(c) for c in point.cells)], "cell_scores": cell_scores}
        if point.number is None:  # a grid point, or a searched one whose trial was lost: added complete, once
            point_key = key_of(point.params)  # (a replayed last cell finds it there)
            if any(t.user_attrs.get("point") == point_key for t in self.study.get_trials(deepcopy=False)):
                return
            distributions = {**(self.grid_distributions or {}), **self.distributions}
            self.study.add_trial(optuna.trial.create_trial(
                params={k: optuna_value(v) for k, v in point.params.items()},
                distributions={k: distributions[k] for k in point.params},
                value=value, state=(optuna.trial.TrialState.COMPLETE if scores else optuna.trial.TrialState.FAIL),
                user_attrs={"point": point_key, **attrs}))
            return
        if scores:
            self.study.tell(point.number, value, skip_if_finished=True)
        else:
            self.study.tell(point.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"points": self.points, "trials": self.trials, "asked": self.asked}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:  # written by save() above, in the study's own folder
            state = pickle.load(fh)
        self.points, self.trials, self.asked = state["points"], state["trials"], state["asked"]
        self._study = None  # reopened (and reconciled) on first use
        self._catch_up_from_ledger()

    def _catch_up_from_ledger(self) -> None:
        """Trials that finished after this searcher's last snapshot but before the interruption: Tune restores
        them as terminated and never reports them again, so their final rows (the ledger, written before a
        trial's last report) are read here and their points told, instead of left open or marked failed."""
        ledger = self._ledger()
        if ledger is None:
            return
        for trial_id, (index, cell) in self.trials.items():
            point, name = self.points[index], f"{trial_id}.json"
            if point.done[cell] or not ledger.exists(name):
                continue
            self.on_trial_complete(trial_id, json.loads(ledger.read_text(name)))


def told_of(storage_path: Path, name: str, seed: int, searched: bool) -> dict[str, Any]:
    """The Optuna study's trials by the key of their point: a searched point by its params (its asked trial),
    a grid point by the `point` it was added under. What a new experiment reads to know whether a point it
    carries was told (an extension adds cells to it untold) or not (its cells are counted when it is told)."""
    if not storage_path.exists():
        return {}
    trials = open_study(storage_path, name, seed).get_trials(deepcopy=False)
    if searched:
        return {key_of({k: knob_value(v) for k, v in t.params.items()}): t for t in trials}
    return {t.user_attrs["point"]: t for t in trials if "point" in t.user_attrs}


class MedianBeforeLastEpoch(MedianStoppingRule):
    """The median stopping rule (Golovin et al. 2017), never at or after the last epoch: a trial that has
    trained every epoch lacks only its evaluation, and stopping it then would waste the run. (ASHA gets the
    same from max_t = epochs - 1 with stop_last_trials=False: its rungs all lie before the last epoch.)"""

    def __init__(self, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.last_epoch:
            self._results[trial].append(result)  # still counts in the others' medians
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class StudyProgress(ProgressReporter):
    """The study's table in the terminal, every `every_s` seconds and at the end: a headline (trials by
    state, the best score so far and where), then one row per trial with its swept knobs, its state, its
    epoch and its current score -- running trials first, then the best of the others, at most `rows`."""

    def __init__(self, columns: list[str], every_s: float = 30.0, rows: int = 20) -> None:
        self.columns, self.every_s, self.rows = list(columns), every_s, rows
        self.last = 0.0

    def should_report(self, trials, done: bool = False) -> bool:
        return done or time.monotonic() - self.last >= self.every_s

    @staticmethod
    def state(trial) -> str:
        last = trial.last_result or {}
        if trial.status == "TERMINATED":
            return "stopped early" if not last.get("final") and "epoch" in last else "done"
        return {"ERROR": "error", "RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}.get(trial.status,
                                                                                                   trial.status.lower())

    def report(self, trials, done: bool, *sys_info: str) -> None:
        self.last = time.monotonic()
        states = Counter(self.state(t) for t in trials)
        scored = [t for t in trials if isinstance((t.last_result or {}).get(SCORE), (int, float))]
        best = max(scored, key=lambda t: t.last_result[SCORE], default=None)
        headline = f"[study] {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        if best is not None:
            headline += f"; best score {best.last_result[SCORE]:.2f} ({self._knobs(best)})"
        order = sorted(trials, key=lambda t: (self.state(t) != "running",
                                              -((t.last_result or {}).get(SCORE) or -math.inf)))
        shown = order[:self.rows]
        header = [*self.columns, "state", "epoch", "score"]
        table = [header] + [[*(self._value(t.config.get(c)) for c in self.columns), self.state(t),
                             self._value((t.last_result or {}).get("epoch")),
                             self._value((t.last_result or {}).get(SCORE))] for t in shown]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = [headline] + ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
        if len(order) > len(shown):
            lines.append(f"  ... {len(order) - len(shown)} more")
        print("\n".join(lines), file=sys.stdout, flush=True)

    def _knobs(self, trial) -> str:
        return " ".join(f"{c}={self._value(trial.config.get(c))}" for c in self.columns)

    @staticmethod
    def _value(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)
