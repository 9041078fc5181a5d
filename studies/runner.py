"""The runner under every study: Ray Tune + Optuna, results to parquet, resume.

A study script declares
  - `fixed`: knobs held constant (scale, dataset, ...; lab.config's flat names),
  - `space`: the axes it sweeps. Lists are a grid (every combination is run once,
    Optuna's GridSampler picks them: the figure needs every cell); Ray Tune domains
    (tune.loguniform, ...) are searched by Optuna's TPE sampler for `num_samples` trials.
and `run_study` does the rest: validates every key and value before starting Ray, runs
the trials (each one `lab.train.train`, or under TorchTrainer when workers > 1), and
writes `out/results.parquet` (one row per trial, the lab's results schema, sorted by the study's
axes), `out/history.parquet` (one row per trial and epoch) and `out/study.json` (what the study is:
its name, fixed knobs, space, axes and the report that draws it, analysis.registry).

Interruption: the Tune experiment lives in `out/tune/`. Started again with the same
command, the study restores it (`Tuner.restore`, with the Optuna searcher's state) and
runs only the trials it still owes; unfinished trials resume from their last epoch
checkpoint. ray #30861 (restore silently dropping the Optuna searcher) is guarded by
tests/test_study.py (a killed grid study and a killed searched study).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.checkpoint import CHECKPOINT_FILE, load_state_file, save_state_file
from lab.config import RunConfig, knob_names
from lab.errors import ConfigError
from lab.knobs import SCALES
from lab.lockfile import FolderLock, check_out_folder
from lab.ray_train import init_local_ray, jsonable_metrics
from lab.results import error_text, history_rows, result_row, results_frame

EXPERIMENT = "tune"
SCORE = "score"  # what Optuna optimises: monitor kNN per epoch, final test kNN at the end
FINAL_ROWS = "final_rows"


# ------------------------------------------------------------------------------ trial side
class TuneStore:
    """The loop's CheckpointStore inside a Tune function trainable; a stage's store is a folder of the trial."""

    where = "the trial's latest Tune checkpoint"

    def stage(self, name: str):
        from ray import tune

        from lab.checkpoint import LocalStore

        return LocalStore(Path(tune.get_context().get_trial_dir()) / "stages" / name)

    def load(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state_file(Path(directory) / CHECKPOINT_FILE)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as directory:
            save_state_file(state, Path(directory) / CHECKPOINT_FILE)
            tune.report(_trial_metrics(metrics), checkpoint=tune.Checkpoint.from_directory(directory))

    def report(self, metrics: dict[str, Any]) -> None:
        from ray import tune

        tune.report(_trial_metrics(metrics))


def _trial_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    out = jsonable_metrics(metrics)
    score = out.get("knn_top1") if out.get("final") else out.get("monitor_knn_top1")
    out[SCORE] = score if score is not None and not (isinstance(score, float) and math.isnan(score)) else 0.0
    return out


def run_trial(trial_config: dict[str, Any], final_dir: str) -> None:
    """The Tune trainable: one RunConfig, trained and evaluated by the lab's loop.

    Its final row is also written to `final_dir/<trial id>.json`, in the study's folder (a
    trial's own folder is a staging copy that reaches storage only on Tune's next sync): a
    study killed after a trial finished but before Tune saved its experiment state restores
    that trial as unfinished, and the trial then replays its stored row instead of running again.
    """
    from ray import tune

    from lab.errors import LabError
    from lab.jsonio import dumps
    from lab.results import failed_row

    final_path = Path(final_dir) / f"{tune.get_context().get_trial_id()}.json"
    if final_path.exists():
        _log_trial_event("replayed")
        tune.report(json.loads(final_path.read_text()))
        return
    _log_trial_event("start")
    reported = False
    try:
        cfg = RunConfig.from_dict(trial_config, where="trial config")
        if cfg.workers == 1:
            from lab.train import train

            result = train(cfg, TuneStore(), progress=False)
            reported = True  # the in-process loop reports its final row through TuneStore
        else:
            from lab.ray_train import train_distributed

            storage = Path(tune.get_context().get_trial_dir()) / "ray_train"
            result = train_distributed(cfg, storage=storage, name="run", in_tune=True)
    except LabError as exc:  # deterministic: a retry would fail the same way, so the trial ends with its row
        result = failed_row(trial_config, exc)
        reported = False
    final_row = _trial_metrics({**result, "final": True})
    if not reported:
        tune.report(final_row)
    tmp = final_path.with_suffix(".tmp")
    tmp.write_text(dumps(final_row))
    os.replace(tmp, final_path)
    _log_trial_event("done" if not str(final_row.get("status", "")).startswith("failed") else "failed")


def _log_trial_event(event: str) -> None:
    """Append 'event trial_id' to $LAB_TRIAL_LOG (how the resume test sees which trials ran)."""
    path = os.environ.get("LAB_TRIAL_LOG")
    if path:
        from ray import tune

        with open(path, "a") as fh:
            fh.write(f"{event} {tune.get_context().get_trial_id()}\n")


# ------------------------------------------------------------------------------ driver side
def check_space(fixed: dict[str, Any], space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every key known, every grid cell a valid RunConfig -- before Ray starts."""
    from ray.tune.search.sample import Domain

    known = set(knob_names())
    for where, keys in (("fixed settings", fixed), ("search space", space)):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown knob(s) {unknown}; `python -m lab.train --help` lists the knobs")
    grid_axes = {k: v for k, v in space.items() if isinstance(v, (list, tuple))}
    searched = {k: v for k, v in space.items() if isinstance(v, Domain)}
    other = sorted(set(space) - set(grid_axes) - set(searched))
    if other:
        raise ConfigError(f"search space: {other} must be a list (grid) or a ray.tune domain (searched)")
    if grid_axes and searched:
        raise ConfigError("search space: mix of grid lists and searched domains; run them as two studies")
    cells = [dict(zip(grid_axes, combo)) for combo in itertools.product(*grid_axes.values())] or [{}]
    for cell in cells:
        try:
            RunConfig.from_dict({**fixed, **cell})
        except ConfigError as exc:
            raise ConfigError(f"grid cell {cell}: {exc}") from None
    for name, domain in searched.items():
        for value in domain_extremes(name, domain):
            try:
                RunConfig.from_dict({**fixed, name: value})
            except ConfigError as exc:
                raise ConfigError(f"search space: {name} = {describe_domain(domain)} reaches {value!r}, which the knob "
                                  f"refuses ({exc}); give bounds inside the knob's range") from None
    return cells


def domain_extremes(name: str, domain: Any) -> list[Any]:
    """The values a searched domain can take at its ends (or all of its categories): what must be valid knob
    values before a trial samples them."""
    from ray.tune.search.sample import Categorical, Float, Integer

    from lab.config import knob_table

    knob = knob_table().knobs[name]
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer):
        return [domain.lower, domain.upper - 1]  # tune.randint's upper bound is exclusive
    if isinstance(domain, Float):
        if knob.kind is int:
            raise ConfigError(f"search space: {name} is an integer knob, searched with a float domain "
                              f"({describe_domain(domain)}); use tune.randint / tune.lograndint")
        return [float(domain.lower), math.nextafter(float(domain.upper), -math.inf)]
    raise ConfigError(f"search space: {name} = {describe_domain(domain)}: only float, integer and categorical domains "
                      "are supported")


def check_data(fixed: dict[str, Any], space: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """Every cell's training set holds its batch and whatever its method needs of the data (a memory bank's
    K, PCL's clusters): checked on the driver before Ray starts, each distinct data selection read once. A
    missing or damaged dataset is the same one-line error here."""
    from lab.data import _load_cached
    from lab.splits import load_run_data

    sizes: dict[tuple, int] = {}
    searched = {k: v for k, v in space.items() if not isinstance(v, (list, tuple))}
    configs = [RunConfig.from_dict({**fixed, **cell}) for cell in cells]
    configs += [RunConfig.from_dict({**fixed, k: value}) for k, d in searched.items() for value in domain_extremes(k, d)]
    try:
        for cfg in configs:
            key = (cfg.dataset, cfg.data_root, cfg.class_split, cfg.label_fraction, cfg.train_subset)
            if key not in sizes:
                sizes[key] = len(load_run_data(cfg).train)
            size = sizes[key]
            if cfg.batch_size > size:
                raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {size} training images of {cfg.dataset} "
                                  f"(train_subset={cfg.train_subset}, class_split={cfg.class_split}, label_fraction="
                                  f"{cfg.label_fraction}): use batch_size <= {size}")
            cfg.method_class.check_data(cfg, size)
    finally:
        _load_cached.cache_clear()  # the trials read their own copies


def _searcher(space: dict[str, Any], seed: int):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if all(isinstance(v, (list, tuple)) for v in space.values()):
        distributions = {k: optuna.distributions.CategoricalDistribution(list(v)) for k, v in space.items()}
        sampler = optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=seed)
        return OptunaSearch(space=distributions, sampler=sampler, metric=SCORE, mode="max")
    return OptunaSearch(metric=SCORE, mode="max", sampler=optuna.samplers.TPESampler(seed=seed))


def run_study(name: str, fixed: dict[str, Any], space: dict[str, Any], out: str | os.PathLike,
              num_samples: int | None = None, seed: int = 0, max_concurrent: int = 4,
              report: str | None = None) -> tuple[Path, Path]:
    """Run (or resume) a study; returns the paths of results.parquet and history.parquet.

    report: the analysis report that draws the study (analysis.registry; default: the one named like the
    study, else the generic report of every swept knob)."""
    out = check_out_folder(out)
    with FolderLock(out):
        return _run_study(name, fixed, space, out, num_samples, seed, max_concurrent, report)


def _run_study(name: str, fixed: dict[str, Any], space: dict[str, Any], out: Path, num_samples: int | None,
               seed: int, max_concurrent: int, report: str | None) -> tuple[Path, Path]:
    cells = check_space(fixed, space)
    check_data(fixed, space, cells)
    grid = all(isinstance(v, (list, tuple)) for v in space.values())
    total = len(cells) if grid else (num_samples or 10)
    fixed_cfg = RunConfig.from_dict(fixed)
    threads, workers = fixed_cfg.threads or 1, fixed_cfg.workers

    from ray import tune

    experiment = out / EXPERIMENT
    description = describe_study(name, fixed, space, total, report)
    axes = description["axes"]
    resuming = tune.Tuner.can_restore(str(experiment))
    if resuming and (out / "study.json").exists():
        stored = json.loads((out / "study.json").read_text())
        if json.loads(json.dumps(description, default=str)) != stored:
            raise ConfigError(f"{out} holds another study ({stored['name']}, fixed {stored['fixed']}, space "
                              f"{stored['space']}); resume it with the same command or use another --out")
    init_local_ray()
    (out / FINAL_ROWS).mkdir(parents=True, exist_ok=True)
    trainable = tune.with_parameters(run_trial, final_dir=str(out / FINAL_ROWS))
    trainable = tune.with_resources(trainable, {"cpu": threads * workers} if workers == 1 else
                                    tune.PlacementGroupFactory([{"CPU": 1}] + [{"CPU": threads}] * workers))
    if resuming:
        print(f"[study] {name}: resuming {experiment}", file=sys.stderr, flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space={**fixed, **{k: v for k, v in space.items() if not grid}})
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "study.json").write_text(json.dumps(description, indent=1, default=str))
        tuner = tune.Tuner(
            trainable,
            param_space={**fixed, **{k: v for k, v in space.items() if not grid}},
            # A grid asks for every free slot (an autoscaling cluster grows while trials wait); a
            # searched space is capped so that TPE learns from finished trials before it suggests more.
            tune_config=tune.TuneConfig(search_alg=_searcher(space, seed), num_samples=total,
                                        max_concurrent_trials=None if grid else max_concurrent),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out), verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    started = time.perf_counter()
    grid_results = tuner.fit()
    print(f"[study] {name}: {len(grid_results)} trials, {time.perf_counter() - started:.0f} s this session",
          file=sys.stderr, flush=True)
    return write_results(grid_results, out, axes)


def describe_study(name: str, fixed: dict[str, Any], space: dict[str, Any], trials: int,
                   report: str | None = None) -> dict[str, Any]:
    """What study.json holds: the study's name, the report that draws it, its swept knobs (axes), its fixed
    knobs and space, and its number of trials."""
    return json.loads(json.dumps({
        "name": name, "report": report or name, "axes": [k for k in space if k != "seed"], "fixed": fixed,
        "space": {k: (list(v) if isinstance(v, (list, tuple)) else describe_domain(v)) for k, v in space.items()},
        "trials": trials}, default=str))


def describe_domain(domain: Any) -> str:
    """A searched axis in words that stay the same from one session to the next (its kind, sampler, bounds
    or categories; never an object's address): what a resumed study is compared on."""
    parts = [type(domain).__name__]
    sampler = domain.get_sampler() if hasattr(domain, "get_sampler") else None
    if sampler is not None:
        parts.append(type(sampler).__name__)
        if getattr(sampler, "base", None) is not None:
            parts.append(f"base={sampler.base}")
    for attribute in ("lower", "upper", "categories"):
        if getattr(domain, attribute, None) is not None:
            parts.append(f"{attribute}={getattr(domain, attribute)!r}")
    return " ".join(parts)


@dataclass
class Part:
    """One study of a plan: its knobs and space, and the folder under the plan's --out ('' = --out itself)."""

    name: str
    fixed: dict[str, Any]
    space: dict[str, Any]
    folder: str = ""
    report: str | None = None
    num_samples: int | None = None


@dataclass
class Plan:
    """What a study script runs: single runs first (`runs`: folder -> knobs, as `python -m lab.train` runs
    them; formula-driven pretraining), then its parts. A plan of several parts gets a parent study.json
    naming `report` for the whole folder."""

    name: str
    parts: list[Part]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: str | None = None
    layout: dict[str, Any] = field(default_factory=dict)  # more of the parent's study.json (baselines)
    before_parts: Any = None  # out folder -> None, after the runs (formula pretraining's sample grids)

    @property
    def is_parent(self) -> bool:
        return len(self.parts) > 1 or bool(self.runs) or any(p.folder for p in self.parts)


def run_plan(plan: Plan, out: str | os.PathLike) -> Path:
    """Run a plan's single runs and parts (each resumable), then draw its report; returns report.html."""
    from analysis.report import write_report

    out = check_out_folder(out)
    with FolderLock(out):
        return _run_plan(plan, out, write_report)


def _run_plan(plan: Plan, out: Path, write_report) -> Path:
    for part in plan.parts:  # every part's knobs, space and data before anything runs
        check_data(part.fixed, part.space, check_space(part.fixed, part.space))
    if plan.is_parent:
        write_parent(out, plan.name, report=plan.report or plan.name, parts=[p.folder for p in plan.parts],
                     runs=list(plan.runs), **plan.layout)
    for folder, knobs in plan.runs.items():
        run_single(out / folder, knobs)
    if plan.before_parts is not None:
        plan.before_parts(out)
    for part in plan.parts:
        run_study(part.name, part.fixed, part.space, out / part.folder, num_samples=part.num_samples,
                  report=part.report)
    return write_report(out)


def run_single(folder: Path, knobs: dict[str, Any]) -> dict[str, Any]:
    """One `python -m lab.train`-style run into `folder` (resumed if interrupted, kept if finished)."""
    from lab.checkpoint import LocalStore
    from lab.train import train

    if (folder / "result.json").exists():
        return json.loads((folder / "result.json").read_text())
    result = train(RunConfig.from_dict(knobs, where=str(folder)), LocalStore(folder))
    (folder / "result.json").write_text(json.dumps(result, default=str, indent=1))
    return result


def write_results(grid_results, out: Path, axes: list[str]) -> tuple[Path, Path]:
    import polars as pl

    rows, histories = [], []
    for result in grid_results:
        metrics = dict(result.metrics or {})
        error = result.error
        if not metrics.get("final"):
            metrics = {**(result.config or {}), **metrics}
            metrics["status"] = f"failed: {error_text(error)}" if error else "unfinished"
        history = json.loads(metrics.get("history") or "[]")
        row = result_row(metrics, trial_id=result.path.rsplit("/", 1)[-1] if result.path else "")
        rows.append(row)
        histories += history_rows(row, history, axes)
    results_path, history_path = out / "results.parquet", out / "history.parquet"
    order = list(dict.fromkeys(["method", *axes, "seed", "trial_id"]))
    results_frame(rows).sort(order, nulls_last=True).write_parquet(results_path)
    pl.DataFrame(histories, infer_schema_length=None).write_parquet(history_path)
    return results_path, history_path


def write_parent(out: Path, name: str, **layout: Any) -> None:
    """study.json of a folder that holds several studies (`parts`) and single runs (`runs`), drawn as one
    report (analysis.registry): the collapse ablations, formula-driven pretraining."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"name": name, "report": name, **layout}, indent=1))


def fixed_from(args: argparse.Namespace, **knobs: Any) -> dict[str, Any]:
    """The knobs every study takes from its command line (study_arguments), and the study's own."""
    return dict(scale=args.scale, dataset=args.dataset, data_root=args.data_root, workers=args.workers,
                threads=args.threads, **knobs)


def seeds_of(args: argparse.Namespace, default: list[int]) -> list[int]:
    """--seeds N: seeds 0 .. N-1; not given: the study's seeds at its scale."""
    if args.seeds is None:
        return list(default)
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: give the number of seeds per cell, >= 1 (leave it out for the "
                          f"scale's {len(default)})")
    return list(range(args.seeds))


def study_main(description: str, default_out: str, plan_of, add_arguments=None, argv: list[str] | None = None):
    """The command line of a study script: its options, its plan for them, run. A config or data error is one
    line and exit status 2."""
    from lab.errors import LabError

    parser = study_arguments(description, default_out)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run_plan(plan_of(args), args.out)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {Path(args.out).resolve()}\nreport:  {report}")
    return report


def study_arguments(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=SCALES, default="cpu",
                        help="smoke: tooling check in minutes; cpu: meaningful on 2 cores (default); gpu: the papers' settings")
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per grid cell (default: the scale's)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (global batch kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (= CPUs) per worker")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-root", default=None)
    return parser
