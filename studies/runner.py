"""The runner under every study: Ray Tune runs the trials, Optuna picks them (studies.search), results to
parquet, resume and extension.

A study declares
  - `fixed`: knobs held constant (scale, dataset, ...; lab.config's flat names),
  - `space`: the axes it sweeps. Lists are grid axes (every value run); ray.tune domains
    (tune.loguniform, ...) are searched by Optuna's TPE for `num_samples` points, each point run on
    every combination of the grid axes (seeds included), Optuna told the mean;
  - optionally a scheduler (ASHA, median stopping) that stops trials early on the per-epoch monitor score;
and `run_study` does the rest: validates every key and value before starting Ray, runs the trials (each
one `lab.train.train`, or under TorchTrainer when workers > 1), and writes `out/results.parquet` (one
row per trial, the lab's results schema, sorted by the study's axes), `out/history.parquet` (one row per
trial and epoch), `out/study.json` (what the study is: its name, fixed knobs, space, axes, the report
that draws it, analysis.registry, and the experiments that ran it) and `out/optuna.journal`.

Every trial's last row is kept in the study's ledger, `out/final_rows/<trial>.json`: finished and failed
trials write theirs, the driver writes those of trials stopped early (`stopped early at epoch k`) and of
crashed ones. The results are built from the ledger.

Interruption: a Tune experiment lives in `out/tune/` (`out/tune-2/`, ... for extensions). Started again
with the same command, the study restores it (`Tuner.restore`, with the searcher's state) and runs only
the trials it still owes; unfinished trials resume from their last epoch checkpoint. ray #30861
(restore silently dropping the searcher) is guarded by tests/test_study.py. Started with more seeds,
new grid values or more samples after it finished, the study is extended: a new experiment runs only
the trials the ledger lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.checkpoint import CHECKPOINT_FILE, load_ray_checkpoint, save_state_file
from lab.config import RunConfig, knob_names
from lab.device import PRECISIONS
from lab.errors import ConfigError
from lab.knobs import SCALES
from lab.lockfile import FolderLock, check_out_folder
from lab.ray_train import init_local_ray, jsonable_metrics, quiet_checkpoint_logs
from studies.space import SCORE, grid_cells, split_axes
from lab.results import error_text, history_rows, result_row, results_frame
from studies.storage import StateFolder, StoreLease, mirror_folder, parse_storage

EXPERIMENT = "tune"
FINAL_ROWS = "final_rows"


# ------------------------------------------------------------------------------ trial side
class TuneStore:
    """The loop's CheckpointStore inside a Tune function trainable; a stage's store is a folder of the trial.

    The final row goes to the study's ledger (`final_path`, in the study's folder: a trial's own folder is a
    staging copy that reaches storage only on Tune's next sync) *before* it is reported: a scheduler may end
    the trial at that report, and a study killed after it restores the trial, which then replays the row."""

    where = "the trial's latest Tune checkpoint"

    def __init__(self, ledger: StateFolder, final_name: str, placement: dict[str, Any] | None = None) -> None:
        self.ledger, self.final_name = ledger, final_name
        self.placement = placement or {}  # where and since when the trial runs: rides with its final row

    def stage(self, name: str):
        from ray import tune

        from lab.checkpoint import LocalStore

        return LocalStore(Path(tune.get_context().get_trial_dir()) / "stages" / name)

    def load(self) -> dict[str, Any] | None:
        from ray import tune

        return load_ray_checkpoint(tune.get_checkpoint())

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        from ray import tune

        metrics = self._ledger(metrics)
        with tempfile.TemporaryDirectory() as directory:
            save_state_file(state, Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    def report(self, metrics: dict[str, Any]) -> None:
        from ray import tune

        tune.report(self._ledger(metrics))

    def finish(self, row: dict[str, Any]) -> None:
        """A row that did not come through the loop's own save (Ray Train's, a failed run's): ledger, report."""
        self.report({**row, "final": True})

    def _ledger(self, metrics: dict[str, Any]) -> dict[str, Any]:
        from lab.jsonio import dumps

        metrics = _trial_metrics(metrics)
        if metrics.get("final"):
            metrics.update(self.placement, ended_at=time.time())
            self.ledger.write_text(self.final_name, dumps(metrics))
            _log_trial_event("failed" if str(metrics.get("status", "")).startswith("failed") else "done")
        return metrics


def _trial_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    out = jsonable_metrics(metrics)
    score = out.get("knn_top1") if out.get("final") else out.get("monitor_knn_top1")
    out[SCORE] = score if score is not None and not (isinstance(score, float) and math.isnan(score)) else 0.0
    if out.get("final"):
        out.setdefault("epoch", out.get("epochs_done"))  # the progress table's epoch column
    return out


def trial_label(trial_config: dict[str, Any], keys: list[str]) -> str:
    """What a trial's progress lines say it is: its swept knobs' values ('batch_size=64 seed=1')."""
    def short(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " ".join(f"{k}={short(trial_config[k])}" for k in keys if k in trial_config)


def run_trial(trial_config: dict[str, Any], final_dir: StateFolder, label_keys: list[str] = (),
              train_storage: StateFolder | None = None) -> None:
    """The Tune trainable: one RunConfig, trained and evaluated by the lab's loop; its final row in the
    study's ledger, `final_dir/<trial id>.json` (TuneStore). A trial restored after its row was written
    (the study was killed before Tune saved its state) replays the row instead of running again. A trial of
    several workers keeps its Ray Train run in `train_storage/<trial id>` (the study's storage: every worker
    writes its checkpoints there, and a worker group restarted on other nodes reads them back)."""
    from ray import tune

    from lab.errors import DatasetError, LabError
    from lab.results import failed_row

    quiet_checkpoint_logs()
    trial_id = tune.get_context().get_trial_id()
    final_name = f"{trial_id}.json"
    if final_dir.exists(final_name):
        _log_trial_event("replayed")
        tune.report(json.loads(final_dir.read_text(final_name)))
        return
    _log_trial_event("start")
    node = trial_node()
    store = TuneStore(final_dir, final_name, {"node": node, "started_at": time.time()})
    try:
        cfg = RunConfig.from_dict(trial_config, where="trial config")
        if cfg.workers == 1:
            from lab.train import train

            # a line per epoch, and every 30 s within one, headed by the trial's knobs
            train(cfg, store, progress=True, progress_label=f"[{trial_label(trial_config, label_keys)}]",
                  progress_every_s=30.0)
        else:
            from lab.ray_train import train_distributed

            where = train_storage.join(trial_id) if train_storage is not None else \
                StateFolder.local(Path(tune.get_context().get_trial_dir()) / "ray_train")
            store.finish(train_distributed(cfg, storage=where.path, name="run", in_tune=True,
                                           tune_callback=study_report_callback(), storage_filesystem=where.fs))
    except DatasetError as exc:  # this node lacks the data: say which node, and how every node gets it
        store.finish(failed_row(trial_config, DatasetError(
            f"on node {node}: {exc} (on a cluster, every node needs the data: `python -m lab.data DATASET` in its "
            "set-up, or LAB_DATA pointing every node at a shared copy; cluster/cluster.yaml does the first)")))
    except LabError as exc:  # deterministic: a retry would fail the same way, so the trial ends with its row
        store.finish(failed_row(trial_config, exc))


class RestoreNewestCheckpoint:
    """Mixin of the trial's Tune trainable (`run_trial.__mixins__`): a restored trial starts from the newest
    checkpoint in its folder, not from the one Tune's experiment snapshot names.

    With num_to_keep=1, Tune's driver registers checkpoint n+1 and deletes n at once, and the snapshot naming
    n+1 reaches storage a moment later: a study killed in between restored from a snapshot naming a deleted
    checkpoint, the trial failed twice ("does not exist on storage anymore") and ran again from scratch in a
    follow-up experiment. A checkpoint is on storage before the driver hears of it, so a newer one in the
    folder is this trial's own later state -- where it is whole: a study killed while a trial uploaded one
    leaves a folder without the lab's file, or (on a local file system) a truncated file, and restoring that
    would start the trial afresh or fail it, so the newest whole one is taken (torch.save writes a zip, whose
    directory is its last bytes). The lab's trials report once per checkpoint (every epoch's report carries
    one), so Tune's training_iteration moves on by as many checkpoints; an empty folder at the deleted name is
    what Tune's checkpoint manager deletes when the trial registers its next one (it raised on a missing
    path)."""

    def restore(self, checkpoint_path):
        from pathlib import PurePosixPath

        import pyarrow.fs
        from ray import tune

        named = getattr(checkpoint_path, "checkpoint", None)
        index = _checkpoint_index(PurePosixPath(named.path).name) if named is not None else None
        if index is None:
            return super().restore(checkpoint_path)
        fs, folder = named.filesystem, str(PurePosixPath(named.path).parent)
        folders = [info for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
                   if info.type == pyarrow.fs.FileType.Directory]
        found = {i: info.path for info in folders if (i := _checkpoint_index(info.base_name)) is not None}
        newest = next((i for i in sorted(found, reverse=True) if i > index and _whole_checkpoint(fs, found[i])), None)
        if newest is None:
            return super().restore(checkpoint_path)
        if index not in found:
            fs.create_dir(named.path)
        print(f"[lab] {PurePosixPath(folder).name}: Tune's snapshot named {PurePosixPath(named.path).name}"
              f"{'' if index in found else ' (gone)'}; restoring the newer {PurePosixPath(found[newest]).name} of "
              "the trial's folder", file=sys.stderr, flush=True)
        metrics = {**checkpoint_path.metrics,
                   "training_iteration": checkpoint_path.metrics.get("training_iteration", 0) + newest - index}
        if getattr(self, "_storage", None) is not None:
            self._storage.current_checkpoint_index = newest  # the next one is newest + 1, not an existing name
        return super().restore(type(checkpoint_path)(checkpoint=tune.Checkpoint(found[newest], filesystem=fs),
                                                     metrics=metrics))


def _checkpoint_index(name: str) -> int | None:
    """n of a Tune checkpoint folder's name, checkpoint_<n>; None for any other name."""
    import re

    match = re.fullmatch(r"checkpoint_(\d+)", name)
    return int(match.group(1)) if match else None


def _whole_checkpoint(fs, folder: str) -> bool:
    """Whether a checkpoint folder holds the lab's state file, whole (a zip whose central directory reads)."""
    import zipfile

    try:
        with fs.open_input_file(f"{folder}/{CHECKPOINT_FILE}") as fh:
            zipfile.ZipFile(fh).close()
    except (OSError, zipfile.BadZipFile):
        return False
    return True


run_trial.__mixins__ = (RestoreNewestCheckpoint,)  # tune.with_parameters carries it to the wrapped trainable


def study_report_callback():
    """Ray's TuneReportCallback, each epoch's metrics given the study's score first (what the searcher and the
    schedulers compare; the in-process loop's reports get it in TuneStore). Defined here: cloudpickle carries it
    to the Train controller by value."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class StudyReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, [_trial_metrics(metrics[0]), *metrics[1:]], checkpoint)

    return StudyReportCallback()


def trial_node() -> str:
    """The Ray node this process runs on: 'hostname (node IP) node-id' (the id tells apart the nodes of one
    machine: a local autoscaling cluster's, or a machine's several Ray nodes)."""
    import socket

    import ray

    return node_name(socket.gethostname(), ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())


def node_name(hostname: str, ip: str, node_id: str) -> str:
    return f"{hostname} ({ip}) {node_id}"


def _log_trial_event(event: str) -> None:
    """Append 'event trial_id' to $LAB_TRIAL_LOG (how the resume test sees which trials ran)."""
    path = os.environ.get("LAB_TRIAL_LOG")
    if path:
        from ray import tune

        with open(path, "a") as fh:
            fh.write(f"{event} {tune.get_context().get_trial_id()}\n")


# ------------------------------------------------------------------------------ driver side
def split_space(space: dict[str, Any]) -> tuple[dict[str, list], dict[str, Any]]:
    """(grid axes, searched axes) of a space; anything else is a ConfigError."""
    from ray.tune.search.sample import Domain

    grid = {k: list(v) for k, v in space.items() if isinstance(v, (list, tuple))}
    searched = {k: v for k, v in space.items() if isinstance(v, Domain)}
    other = sorted(set(space) - set(grid) - set(searched))
    if other:
        raise ConfigError(f"search space: {other} must be a list (grid) or a ray.tune domain (searched)")
    empty = sorted(k for k, v in grid.items() if not v)
    if empty:
        raise ConfigError(f"search space: grid axis {empty} has no values; give at least one")
    return grid, searched


def check_space(fixed: dict[str, Any], space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every key known, every grid cell a valid RunConfig, every searched axis valid at its ends in every
    cell -- before Ray starts. Returns the grid's cells."""
    known = set(knob_names())
    for where, keys in (("fixed settings", fixed), ("search space", space)):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown knob(s) {unknown}; `python -m lab.train --help` lists the knobs")
    both = sorted(set(fixed) & set(space))
    if both:
        raise ConfigError(f"{both} both fixed and swept: give each knob once")
    grid, searched = split_space(space)
    cells = grid_cells(grid)
    for cell in cells:
        try:
            RunConfig.from_dict({**fixed, **cell})
        except ConfigError as exc:
            raise ConfigError(f"grid cell {cell}: {exc}") from None
        for name, domain in searched.items():
            for value in domain_extremes(name, domain):
                try:
                    RunConfig.from_dict({**fixed, **cell, name: value})
                except ConfigError as exc:
                    raise ConfigError(f"search space: {name} = {describe_domain(domain)} reaches {value!r}, which "
                                      f"the knob refuses{' in grid cell ' + str(cell) if cell else ''} ({exc}); give "
                                      "bounds inside the knob's range") from None
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


def _configs_to_check(fixed: dict[str, Any], space: dict[str, Any], cells: list[dict[str, Any]]) -> list[RunConfig]:
    grid, searched = split_space(space)
    configs = [RunConfig.from_dict({**fixed, **cell}) for cell in cells]
    configs += [RunConfig.from_dict({**fixed, **cell, k: value}) for cell in cells for k, d in searched.items()
                for value in domain_extremes(k, d)]
    return configs


def check_data(fixed: dict[str, Any], space: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """Every cell's training set holds its batch and whatever its method needs of the data (a memory bank's
    K, PCL's clusters): checked on the driver before Ray starts, each distinct data selection read once. A
    missing or damaged dataset is the same one-line error here."""
    from lab.data import _load_cached
    from lab.splits import load_run_data

    sizes: dict[tuple, int] = {}
    try:
        for cfg in _configs_to_check(fixed, space, cells):
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


SCHEDULERS = ("none", "asha", "median")


def make_scheduler(kind: str, epochs: int, grace_epochs: int | None):
    """Early stopping on the per-epoch monitor score: ASHA (Li et al. 2020; rungs at grace x 3^k epochs, the
    bottom two thirds of each rung stopped) or the median stopping rule (Golovin et al. 2017: stop a trial
    whose best score falls below the median of the others' running means at the same epoch). Time is Tune's
    training_iteration, one report per epoch (the final evaluation's report comes after), and no rule stops
    a trial at its last epoch: it has trained, only its evaluation is left."""
    if kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    from studies.search import MedianBeforeLastEpoch

    grace = grace_epochs or max(1, epochs // 4)
    if not 1 <= grace < epochs:
        raise ConfigError(f"grace_epochs={grace}: a scheduler needs 1 <= grace_epochs < epochs ({epochs}); give more "
                          "epochs or a smaller grace")
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", metric=SCORE, mode="max", max_t=epochs - 1,
                             grace_period=grace, reduction_factor=3, stop_last_trials=False)
    return MedianBeforeLastEpoch(epochs, time_attr="training_iteration", metric=SCORE, mode="max", grace_period=grace,
                                 min_samples_required=3)


def ledger_callback(final_dir: StateFolder):
    """A tune.Callback that writes the row of a trial a scheduler stopped early (`stopped early at epoch k`,
    with the scores of its last epoch and its history so far) into the study's ledger, beside the rows
    finished trials write themselves. Its histories are saved with the experiment (get_state)."""
    from ray import tune
    from ray.tune.result import AUTO_RESULT_KEYS

    from lab.jsonio import dumps

    tune_keys = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "final", SCORE,
                                         "time_this_iter_s", "timestamp", "date", "hostname", "node_ip", "pid"}

    class Ledger(tune.Callback):
        def __init__(self) -> None:
            self.histories: dict[str, dict[int, dict[str, Any]]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if not result.get("final") and "epoch" in result:
                row = {k: v for k, v in result.items() if k not in tune_keys}
                self.histories.setdefault(trial.trial_id, {})[int(result["epoch"])] = row

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            last = trial.last_result or {}
            name = f"{trial.trial_id}.json"
            if last.get("final") or final_dir.exists(name) or "epoch" not in last:
                return
            history = [row for _, row in sorted(self.histories.get(trial.trial_id, {}).items())]
            cfg = RunConfig.from_dict({k: v for k, v in trial.config.items()}, where=f"trial {trial.trial_id}")
            epoch = int(last["epoch"])
            row = {**cfg.to_row(), **{k: v for k, v in last.items() if k not in tune_keys},
                   "status": f"stopped early at epoch {epoch}", "epochs_done": epoch,
                   "final_loss": last.get("loss"), "fingerprint": cfg.fingerprint(), "final": True,
                   SCORE: last.get(SCORE), "history": json.dumps(history)}
            final_dir.write_text(name, dumps(row))

        def get_state(self) -> dict | None:
            return {"histories": self.histories} if self.histories else None

        def set_state(self, state: dict) -> None:
            self.histories = state["histories"]

    return Ledger()


def run_study(name: str, fixed: dict[str, Any], space: dict[str, Any], out: str | os.PathLike,
              num_samples: int | None = None, seed: int = 0, max_concurrent: int = 4,
              report: str | None = None, scheduler: str = "none", grace_epochs: int | None = None,
              storage: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Run, resume or extend a study in `out`; returns the paths of results.parquet and history.parquet.

    fixed: knobs held constant (lab.config's names). space: the swept knobs, each a list (a grid axis: every
    value is run) or a ray.tune domain (tune.loguniform, tune.uniform, tune.randint, tune.choice: searched by
    Optuna's TPE for `num_samples` points, default 10, each point run on every grid cell, seeds included).
    seed: the sampler's. max_concurrent: trials at once in a searched study or one of multi-worker trials (a grid of
    in-process trials has every cell pending at once).
    report: the analysis report that draws it (analysis.registry; default: the one named like the study, else
    the generic report). scheduler: none / asha / median, early stopping on the per-epoch monitor score after
    grace_epochs (default a quarter of the epochs). storage: where the study's state lives (study_storage;
    default `out` itself), read and written by every node; the results and the report go to `out`.

    The same call again resumes an interrupted study; with more seeds, new grid values or more samples it
    extends a finished one in the same folder, running only the trials it lacks."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler={scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    out = check_out_folder(out)
    store = study_storage(storage, out)
    with _holding(out, store):
        return _run_study(name, fixed, space, out, store, num_samples, seed, max_concurrent, report, scheduler,
                          grace_epochs)


def study_storage(storage: str | os.PathLike | StateFolder | None, out: Path) -> StateFolder:
    """Where a study's state lives -- Tune's experiments and their checkpoints, the ledger of final rows, the
    Optuna journal, study.json and the node records -- and from which it resumes: `out` itself; or `storage`,
    a folder every node of the cluster reaches at the same absolute path (NFS, EFS, a mounted bucket), or an
    object store (s3://bucket/prefix, gs://bucket/prefix: studies.storage, checked up front). The trials write
    their rows and checkpoints there only; the driver writes results.parquet, history.parquet and the report to
    `out` (and a copy of study.json and the node records, which the report reads)."""
    if storage is None:
        return StateFolder.local(out)
    if isinstance(storage, StateFolder):  # a plan's part, under the plan's storage (checked there)
        return storage
    text = str(storage)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "file":
        text = text[len("file://"):]
    elif scheme:
        return parse_storage(text)
    if not Path(text).is_absolute():
        raise ConfigError(f"--storage {storage}: give an absolute path, the same on every node (a relative one is "
                          "relative to each process's own working folder)")
    state = check_out_folder(text, "--storage")
    if state != out and (state in out.parents or out in state.parents):
        raise ConfigError(f"--storage {storage} and --out {out}: one lies inside the other; give two separate folders "
                          "(or leave --storage out to keep the state in --out)")
    return StateFolder.local(state)


def _run_study(name: str, fixed: dict[str, Any], space: dict[str, Any], out: Path, store: StateFolder,
               num_samples: int | None, seed: int, max_concurrent: int, report: str | None, scheduler: str,
               grace_epochs: int | None) -> tuple[Path, Path]:
    state = local_of(store)  # the driver's files; Tune and the trials use the store itself
    cells = check_space(fixed, space)
    check_data(fixed, space, cells)
    grid, searched = split_space(space)
    if searched and num_samples is not None and num_samples < 1:
        raise ConfigError(f"num_samples={num_samples}: give the number of points to search, >= 1")
    samples = (num_samples or 10) if searched else None
    configs = _configs_to_check(fixed, space, cells)
    threads, workers = trial_shape(fixed, cells)
    # Trials at once: a searched space is capped so that TPE learns from finished points before it asks more, and
    # so is a study of multi-worker trials (each asks Tune for no CPU: see with_resources below); a grid of
    # in-process trials is not (None), and has all its cells pending at once.
    live_limit = max_concurrent if searched or workers > 1 else None
    epochs = max(cfg.epochs for cfg in configs)
    trial_scheduler = make_scheduler(scheduler, epochs, grace_epochs)
    description = describe_study(name, fixed, space, report, samples, scheduler)
    ledger = store.join(FINAL_ROWS)
    stored = json.loads((state / "study.json").read_text()) if (state / "study.json").exists() else None
    experiments = _check_same_study(stored, description, state)

    from ray import tune

    from studies.search import StudyProgress

    last = experiments[-1] if experiments else None
    resume = last is not None and not last.get("finished") and tune.Tuner.can_restore(
        store.file(last["name"]), storage_filesystem=store.fs)
    if resume and not _same_experiment(last, description):
        raise ConfigError(f"{state} holds an unfinished study ({_experiment_words(last)}): finish it first with the "
                          "command that started it, then extend it")
    point_axes, cell_axes = split_axes(grid, searched)
    if resume:
        experiment, search = last["name"], None
    else:
        if last is not None and not last.get("finished"):
            experiments.pop()  # interrupted before Tune wrote its first state: nothing of it to keep
        _check_extension(experiments, description, state)
        search = _search_for(fixed, grid, searched, point_axes, cell_axes, cells, samples, _ledger_rows(ledger),
                             store, name, seed, live_limit)
        if search.total_trials == 0:
            print(f"[study] {name}: every trial of this space has run; results rebuilt", file=sys.stderr, flush=True)
            return write_results(None, store, description["axes"], out)
        experiment = EXPERIMENT if not experiments else f"{EXPERIMENT}-{len(experiments) + 1}"
        experiments.append({"name": experiment, "space": description["space"], "samples": samples,
                            "scheduler": scheduler, "trials": search.total_trials, "finished": False})
    out.mkdir(parents=True, exist_ok=True)
    _write_study_json(store, description, experiments)

    init_local_ray()
    columns = [*point_axes, *searched, *cell_axes]
    trainable = tune.with_parameters(run_trial, final_dir=ledger, label_keys=columns,
                                     train_storage=store.join("ray_train"))
    # workers > 1: the trial only drives a TorchTrainer, whose worker group (Ray Train V2) reserves its own
    # placement group of `workers` x `threads` CPUs; reserving them for the trial as well asked for 1 + 2N x T
    # CPUs, and on a machine with N x T CPUs the trial never started. Its concurrency is then the searcher's
    # (max_concurrent); 1 byte of memory because Tune refuses a trial that asks for nothing, and any CPU it
    # took would be missing from the worker group on a machine of exactly N x T CPUs.
    trainable = tune.with_resources(trainable, {"cpu": threads} if workers == 1 else {"cpu": 0, "memory": 1})
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the table below, not a result box per trial and epoch
    # Each epoch's checkpoint forces a snapshot of the experiment (num_to_keep=1: what a resume needs);
    # Tune's warning that this happens often is about exactly that.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        print(f"[study] {name}: resuming {store.join(experiment)}", file=sys.stderr, flush=True)
        tuner = tune.Tuner.restore(store.file(experiment), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=dict(fixed), storage_filesystem=store.fs)
    else:
        trials = experiments[-1]["trials"]
        what = [f"{len(search.points)} points run on {sum(len(p.cells) for p in search.points)} cells"] \
            if search.points else []
        what += [f"{search.new_points} points to search x {len(search.cells)} cells"] if search.new_points else []
        print(f"[study] {name}: {trials} trials in {experiment} ({'; '.join(what)})"
              + (", extending the study in this folder" if len(experiments) > 1 else ""), file=sys.stderr, flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=dict(fixed),
            tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, scheduler=trial_scheduler,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=experiment, storage_path=store.path, storage_filesystem=store.fs, verbose=1,
                callbacks=[ledger_callback(ledger)],
                progress_reporter=StudyProgress(columns),
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    started = time.perf_counter()
    # Pending trials: as many as may run (the searcher holds the rest back), or every cell of an uncapped grid
    # (the free slots fill at once, and an autoscaling cluster sees the whole demand). Tune's "auto" keeps 1
    # pending under a searcher, which ran short trials one at a time and grew a cluster by one node per cycle.
    pending = live_limit or experiments[-1]["trials"]
    with _environment(TUNE_MAX_PENDING_TRIALS_PG=str(max(1, pending))), NodeRecord(state / NODES_FILE, store):
        grid_results = tuner.fit()
    with_rows = _ledger_ids(ledger)  # listed once: on an object store, a listing is a request
    unfinished = [r for r in grid_results if _trial_id(r) not in with_rows]
    print(f"[study] {name}: {len(grid_results)} trials, {time.perf_counter() - started:.0f} s this session"
          + (f", {len(unfinished)} not finished" if unfinished else ""), file=sys.stderr, flush=True)
    experiments[-1]["finished"] = not unfinished
    if resume:
        # Tune restores what its last snapshot knew, and goes on without the rest when a restore fails (it logs
        # "Failed to restore the run state" and carries on): the ledger says what this space still lacks.
        left = _search_for(fixed, grid, searched, point_axes, cell_axes, cells, samples, _ledger_rows(ledger), store,
                           name, seed).total_trials
        if left:
            experiments[-1].update(finished=True, trials=experiments[-1]["trials"] - left, left_to_next=left)
            _write_study_json(store, description, experiments)
            write_results(grid_results, store, description["axes"], out)
            print(f"[study] {name}: the restored experiment left {left} trials of this space without a row: "
                  "running them in a new experiment", file=sys.stderr, flush=True)
            return _run_study(name, fixed, space, out, store, num_samples, seed, max_concurrent, report, scheduler,
                              grace_epochs)
    _write_study_json(store, description, experiments)
    return write_results(grid_results, store, description["axes"], out)


def trial_dirname(trial) -> str:
    """A trial's folder under the experiment: its id, as the ledger and the results' trial_id name it."""
    return trial.trial_id


def trial_shape(fixed: dict[str, Any], cells: list[dict[str, Any]]) -> tuple[int, int]:
    """(threads, workers) of a study's trials, read from a whole cell: the fixed knobs alone need not be a valid
    run (SwAV's default 256 prototypes exceed a batch of 64 without a queue until the cell sets them; reading
    the fixed knobs alone stopped that study at once)."""
    cfg = RunConfig.from_dict({**fixed, **cells[0]})
    return cfg.threads or 1, cfg.workers


NODES_FILE = "nodes.jsonl"  # the cluster's nodes over the study's sessions (the report's node count over time)


class NodeRecord:
    """While a study runs: every `every_s` seconds a line {t, nodes: [{node, head, cpus, gpus}]} of the Ray nodes
    alive (the head included) in `path`, from a thread of the driver; what an autoscaling sweep looked like. With
    the state in an object store, the file is put there every `put_every_s` seconds and at the end."""

    def __init__(self, path: Path, store: StateFolder | None = None, every_s: float = 5.0, put_every_s: float = 60.0):
        import threading

        self.path, self.every_s, self.stop = path, every_s, threading.Event()
        self.store = store if store is not None and store.remote else None
        self.put_every_s, self.put_at = put_every_s, 0.0
        self.thread = threading.Thread(target=self._run, name="lab-node-record", daemon=True)

    def _sample(self) -> None:
        import ray

        nodes = [{"node": node_name(n.get("NodeManagerHostname", ""), n.get("NodeManagerAddress", ""), n["NodeID"]),
                  "head": "node:__internal_head__" in n.get("Resources", {}),
                  "cpus": n.get("Resources", {}).get("CPU", 0), "gpus": n.get("Resources", {}).get("GPU", 0)}
                 for n in ray.nodes() if n.get("Alive")]
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"t": time.time(), "nodes": nodes}) + "\n")
        if self.store is not None and (self.stop.is_set() or time.monotonic() >= self.put_at):
            self.store.put(self.path)
            self.put_at = time.monotonic() + self.put_every_s

    def _run(self) -> None:
        while True:
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a record is a picture, never a reason to stop a study
                pass
            if self.stop.wait(self.every_s):
                return

    def __enter__(self) -> "NodeRecord":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        try:
            self._sample()  # the state at the end
        except Exception:  # noqa: BLE001
            pass


@contextlib.contextmanager
def _environment(**variables: str):
    """These environment variables set in this process for the block, then as they were."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or (Path(result.path).name if result.path else "")


def _check_same_study(stored: dict | None, description: dict, out: Path) -> list[dict[str, Any]]:
    """The experiments `out` already holds, after checking that it holds this study (the same name, fixed
    knobs and report; its space may grow)."""
    if stored is None:
        return []
    same = all(stored.get(k) == description[k] for k in ("name", "fixed", "report"))
    if not same:
        raise ConfigError(f"{out} holds another study ({stored.get('name')}, fixed {stored.get('fixed')}): resume "
                          "it with its own command, or use another --out")
    return stored.get("experiments") or [  # a folder written before experiments were recorded
        {"name": EXPERIMENT, "space": stored.get("space"), "samples": None, "scheduler": "none",
         "trials": stored.get("trials"), "finished": False}]


def _same_experiment(experiment: dict[str, Any], description: dict[str, Any]) -> bool:
    return (experiment["space"] == description["space"] and experiment.get("samples") == description["samples"]
            and experiment.get("scheduler", "none") == description["scheduler"])


def _experiment_words(experiment: dict[str, Any]) -> str:
    words = ", ".join(f"{k}={v}" for k, v in experiment["space"].items())
    if experiment.get("samples"):
        words += f", {experiment['samples']} samples"
    return words + f", scheduler {experiment.get('scheduler', 'none')}"


def _check_extension(experiments: list[dict[str, Any]], description: dict[str, Any], out: Path) -> None:
    """A new experiment in a study's folder may add seeds, grid values or samples; it may not drop a grid value,
    add or drop an axis, or change a searched axis (the points already run would not belong to its space)."""
    if not experiments:
        return
    before, now = experiments[-1]["space"], description["space"]
    problems = []
    if set(before) != set(now):
        problems.append(f"axes {sorted(before)} became {sorted(now)}")
    for key in sorted(set(before) & set(now)):
        old, new = before[key], now[key]
        if isinstance(old, list) and isinstance(new, list):
            lost = [v for v in old if v not in new]
            if lost:
                problems.append(f"{key} lost {lost}")
        elif old != new:
            problems.append(f"{key} was {old}, now {new}")
    if problems:
        raise ConfigError(f"{out} holds this study with another space ({'; '.join(problems)}): a study can gain "
                          "seeds, grid values and samples in its folder, nothing else; use another --out")


def _ledger_ids(ledger: StateFolder) -> set[str]:
    return {n.removesuffix(".json") for n in ledger.names(".json") if not n.endswith(".error.json")}


def _ledger_rows(ledger: StateFolder | Path) -> dict[str, dict[str, Any]]:
    """Trial id -> its stored row: finished, failed or stopped early (a crash's .error.json only where the
    trial has no other row)."""
    ledger = as_state_folder(ledger)
    rows: dict[str, dict[str, Any]] = {}
    names = ledger.names(".json")
    for name in names:
        trial_id = name.removesuffix(".error.json").removesuffix(".json")
        if name.endswith(".error.json") and f"{trial_id}.json" in names:
            continue
        rows[trial_id] = {**json.loads(ledger.read_text(name)), "crashed": name.endswith(".error.json")}
    return rows


def as_state_folder(folder: StateFolder | str | os.PathLike) -> StateFolder:
    return folder if isinstance(folder, StateFolder) else StateFolder.local(Path(folder))


def local_of(store: StateFolder) -> Path:
    """The folder the driver reads and writes its own files in (study.json, the Optuna journal, the node
    records): the state itself, or for an object store its local mirror (studies.storage)."""
    return mirror_folder(store) if store.remote else Path(store.path)


def _fetch_mirror(store: StateFolder) -> None:
    """An object store's study.json, Optuna journal and node records into the driver's mirror, as the store has
    them (a mirror left by an earlier driver on this machine is overwritten: the store is the truth)."""
    from studies.search import STORAGE_FILE

    if store.remote:
        local = local_of(store)
        local.mkdir(parents=True, exist_ok=True)
        for name in ("study.json", STORAGE_FILE, NODES_FILE):
            store.fetch(name, local / name)


@contextlib.contextmanager
def _holding(out: Path, store: StateFolder):
    """The output folder and the state are this driver's while the block runs: folder locks, and for an object
    store a lease in it (studies.storage.StoreLease), its mirror fetched once the lease is held."""
    lease = StoreLease(store) if store.remote else contextlib.nullcontext()
    with FolderLock(out), FolderLock(local_of(store)), lease:
        _fetch_mirror(store)
        yield


def _search_for(fixed: dict[str, Any], grid: dict[str, list], searched: dict[str, Any], point_axes: dict[str, list],
                cell_axes: dict[str, list], cells: list[dict[str, Any]], samples: int | None,
                rows: dict[str, dict[str, Any]], store: StateFolder | Path, name: str, seed: int,
                max_live: int | None = None):
    """The searcher of a new experiment: the grid's points, or the points already searched, on the cells they
    lack (what earlier experiments ran is in the ledger), then the new searched points; at most max_live trials
    at once (None: no cap)."""
    from studies.search import STORAGE_FILE, LabSearch, Point, score_of, startup_points, told_of
    from studies.space import key_of

    point_keys = list(point_axes) + list(searched)
    unit_cells = grid_cells(cell_axes)

    def canonical(values: dict[str, Any], within: dict[str, Any] | None = None) -> dict[str, Any]:
        """`values` as the results row writes them, read in a whole configuration (the fixed knobs alone need
        not be a valid run: SwAV's default prototypes exceed a small batch without a queue)."""
        row = RunConfig.from_dict({**fixed, **(within or {}), **values}).to_row()
        return {k: row[k] for k in values}

    done: dict[str, dict[str, Any]] = {}  # point key -> {"params", "cells": set of cell keys}
    for row in rows.values():
        if row.get("crashed") or any(k not in row for k in point_keys + list(cell_axes)):
            continue
        params = {k: row[k] for k in point_keys}
        entry = done.setdefault(key_of(params), {"params": params, "cells": set(), "rows": []})
        entry["cells"].add(key_of({k: row[k] for k in cell_axes}))
        entry["rows"].append(row)
    carried = []
    if searched:
        points = [entry["params"] for entry in done.values()]
    else:
        points = [canonical(p, unit_cells[0]) for p in grid_cells(point_axes)]
    store = as_state_folder(store)
    state = local_of(store)
    told = told_of(state / STORAGE_FILE, name, seed, bool(searched)) if done else {}
    for params in points:
        entry = done.get(key_of(params))
        missing = [c for c in unit_cells if entry is None or key_of(canonical(c, params)) not in entry["cells"]]
        if not missing:
            continue
        if entry is None:
            carried.append(Point(params, missing, tell=True))
            continue
        # A point with cells run: an extension's (Optuna was told of it; the new cells are not told), or one a
        # restore split (its Optuna trial still running, or failed by a reconcile): told with its earlier cells.
        trial = told.get(key_of(params))
        if trial is not None and (not searched or trial.state.name == "COMPLETE"):  # a grid point is added told
            carried.append(Point(params, missing, tell=False))
            continue
        earlier = {key_of({k: row[k] for k in cell_axes}): score_of(row) for row in entry["rows"]}
        number = trial.number if trial is not None and not trial.state.is_finished() else None
        carried.append(Point(params, missing, tell=True, number=number, earlier=earlier))
    new_points = max(0, samples - len(done)) if searched else 0
    search = LabSearch(carried, searched, unit_cells, new_points, state / STORAGE_FILE, name, seed=seed,
                       axes_of_grid=point_axes, startup=startup_points(samples or 0), ledger_dir=store.join(FINAL_ROWS),
                       journal_store=store if store.remote else None,
                       max_live=max_live)
    if not searched:  # grid points whose rows are all in, told to Optuna if a kill came between rows and tell
        carried_keys = {key_of(p.params) for p in carried}
        for key, entry in done.items():
            if key not in carried_keys:
                search.tell_finished_grid_point(entry["params"], [{k: r[k] for k in cell_axes} for r in entry["rows"]],
                                                entry["rows"])
    return search


def _write_study_json(store: StateFolder, description: dict[str, Any], experiments: list[dict[str, Any]]) -> None:
    from studies.search import STORAGE_FILE

    trials = sum(e.get("trials") or 0 for e in experiments)
    text = json.dumps({**description, "trials": trials, "optuna_storage": STORAGE_FILE, "experiments": experiments},
                      indent=1, default=str)
    state = local_of(store)
    StateFolder.local(state).write_text("study.json", text)
    if store.remote:
        store.put(state / "study.json")


def describe_study(name: str, fixed: dict[str, Any], space: dict[str, Any], report: str | None = None,
                   samples: int | None = None, scheduler: str = "none") -> dict[str, Any]:
    """What study.json holds: the study's name, the report that draws it, its swept knobs (axes), its fixed
    knobs and space, its number of searched points and its scheduler (then the experiments that ran it)."""
    return json.loads(json.dumps({
        "name": name, "report": report or name, "axes": [k for k in space if k != "seed"], "fixed": fixed,
        "space": {k: (list(v) if isinstance(v, (list, tuple)) else describe_domain(v)) for k, v in space.items()},
        "samples": samples, "scheduler": scheduler}, default=str))


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
    num_samples: int | None = None  # searched points (space with ray.tune domains)
    scheduler: str = "none"  # none / asha / median (run_study)
    grace_epochs: int | None = None
    max_concurrent: int = 4
    search_seed: int = 0


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


def run_plan(plan: Plan, out: str | os.PathLike, storage: str | os.PathLike | None = None) -> Path:
    """Run a plan's single runs and parts (each resumable), then draw its report; returns report.html. With
    `storage`, each part's state lives in its folder under it (study_storage); the single runs, which the
    driver runs itself, stay in `out`."""
    from analysis.report import write_report

    out = check_out_folder(out)
    store = study_storage(storage, out)
    with _holding(out, store):
        return _run_plan(plan, out, write_report, store)


def _run_plan(plan: Plan, out: Path, write_report, store: StateFolder) -> Path:
    # Every part's knobs, space and data before anything runs; a run folder of this plan that a part
    # initialises from (init_from) is checked as None here, and as itself once the runs have made it.
    pending = {str((out / folder).resolve()) for folder in plan.runs}

    def as_checkable(knobs: dict[str, Any]) -> dict[str, Any]:
        def value(v: Any) -> Any:
            if isinstance(v, list):
                values = []
                for x in (value(x) for x in v):
                    values += [] if x in values else [x]
                return values
            return None if isinstance(v, str) and str(Path(v).resolve()) in pending else v
        return {k: value(v) for k, v in knobs.items()}

    for part in plan.parts:
        fixed, space = as_checkable(part.fixed), as_checkable(part.space)
        check_data(fixed, space, check_space(fixed, space))
    if plan.is_parent:
        write_parent(out, plan.name, report=plan.report or plan.name, parts=[p.folder for p in plan.parts],
                     runs=list(plan.runs), **plan.layout)
    for folder, knobs in plan.runs.items():
        run_single(out / folder, knobs)
    if plan.before_parts is not None:
        plan.before_parts(out)
    for part in plan.parts:
        run_study(part.name, part.fixed, part.space, out / part.folder, num_samples=part.num_samples,
                  report=part.report, scheduler=part.scheduler, grace_epochs=part.grace_epochs,
                  max_concurrent=part.max_concurrent, seed=part.search_seed,
                  storage=None if not store.remote and Path(store.path) == out else store.join(part.folder))
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


def write_results(grid_results, store: StateFolder | Path, axes: list[str],
                  out: Path | None = None) -> tuple[Path, Path]:
    """results.parquet and history.parquet in `out` (default: `state`) from the ledger in `state` (every
    experiment's finished, failed and stopped trials) and this session's unfinished trials; a crashed trial's
    row is kept until a later run of the same configuration replaces it. With the state elsewhere, its
    study.json and node records are copied beside the results, for the report."""
    import shutil

    import polars as pl

    from lab.jsonio import dumps

    store = as_state_folder(store)
    state = local_of(store)
    out = out or state
    ledger = store.join(FINAL_ROWS)
    unfinished = []
    done = _ledger_ids(ledger)
    for result in grid_results or []:
        trial_id = _trial_id(result)
        if trial_id in done:
            continue
        config = dict(result.config or {})
        if result.error is not None:
            try:
                fingerprint = RunConfig.from_dict(config).fingerprint()
            except ConfigError:
                fingerprint = None
            row = {**config, "status": f"failed: {error_text(result.error)}", "fingerprint": fingerprint,
                   "history": "[]"}
            ledger.write_text(f"{trial_id}.error.json", dumps(row))
        else:
            unfinished.append((trial_id, {**config, **(result.metrics or {}), "status": "unfinished"}))
    stored = _ledger_rows(ledger)
    kept = {row.get("fingerprint") for row in stored.values() if not row["crashed"]}
    rows, histories = [], []
    for trial_id, metrics in [*stored.items(), *unfinished]:
        if metrics.get("crashed") and metrics.get("fingerprint") in kept:
            continue  # run again, in a later experiment
        history = metrics.get("history") or "[]"
        history = json.loads(history) if isinstance(history, str) else history
        row = result_row(metrics, trial_id=trial_id)
        rows.append(row)
        histories += history_rows(row, history, axes)
    results_path, history_path = out / "results.parquet", out / "history.parquet"
    order = list(dict.fromkeys(["method", *axes, "seed", "trial_id"]))
    results_frame(rows).sort(order, nulls_last=True).write_parquet(results_path)
    pl.DataFrame(histories, infer_schema_length=None).write_parquet(history_path)
    for name in ("study.json", NODES_FILE) if out != state else ():
        if (state / name).exists():
            shutil.copyfile(state / name, out / name)
    return results_path, history_path


def write_parent(out: Path, name: str, **layout: Any) -> None:
    """study.json of a folder that holds several studies (`parts`) and single runs (`runs`), drawn as one
    report (analysis.registry): the collapse ablations, formula-driven pretraining."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"name": name, "report": name, **layout}, indent=1))


COMMAND_LINE_KNOBS = ("scale", "dataset", "data_root", "workers", "threads", "precision")  # study_arguments


def fixed_from(args: argparse.Namespace, **knobs: Any) -> dict[str, Any]:
    """The knobs every study takes from its command line (study_arguments), and the study's own (a knob given
    twice is a TypeError)."""
    return dict(**{name: getattr(args, name) for name in COMMAND_LINE_KNOBS}, **knobs)


def seeds_of(args: argparse.Namespace, default: list[int]) -> list[int]:
    """--seeds N: seeds 0 .. N-1; not given: the study's seeds at its scale."""
    if args.seeds is None:
        return list(default)
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: give the number of seeds per cell, >= 1 (leave it out for the "
                          f"scale's {len(default)})")
    return list(range(args.seeds))


def study_main(doc: str, default_out: str, plan_of, add_arguments=None, argv: list[str] | None = None,
               epilog: str | None = None):
    """The command line of a study script: its options, its plan for them, run. A config or data error is one
    line and exit status 2. doc: the script's docstring, whose first paragraph is the --help description
    (whole: never cut mid-sentence); epilog: the end of --help (default: the study's grid at each scale)."""
    from lab.errors import LabError

    parser = study_arguments(first_paragraph(doc), default_out)
    if add_arguments is not None:
        add_arguments(parser)
    parser.epilog = epilog if epilog is not None else grid_per_scale(parser, plan_of)
    args = parser.parse_args(argv)
    try:
        report = run_plan(plan_of(args), args.out, storage=args.storage)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {Path(args.out).resolve()}\nreport:  {report}")
    return report


def first_paragraph(doc: str) -> str:
    """A docstring's first paragraph, its lines filled to 100 columns."""
    import textwrap

    return textwrap.fill(" ".join((doc or "").strip().split("\n\n")[0].split()), 100)


def grid_per_scale(parser: argparse.ArgumentParser, plan_of) -> str:
    """What the study runs at each scale (its parts' spaces and single runs), for the end of --help."""
    from lab.errors import LabError

    lines = ["what it runs at each scale (--seeds N replaces the seeds):"]
    for scale in SCALES:
        try:
            args = parser.parse_args(["--scale", scale])
            plan = plan_of(args)
        except (LabError, SystemExit):
            continue
        out = str(Path(args.out).resolve())

        def short(value: Any) -> str:  # folders under --out as <out>/...
            if isinstance(value, list):
                return "[" + ", ".join(short(v) for v in value) + "]"
            return str(value).replace(out, "<out>") if isinstance(value, str) else str(value)

        lines.append(f"  {scale}:")
        for folder, knobs in plan.runs.items():
            lines.append(f"    run {folder}: " + ", ".join(f"{k}={v}" for k, v in knobs.items()
                                                         if k not in ("scale", "threads", "data_root", "precision")))
        for part in plan.parts:
            axes = ", ".join(f"{k} {short(v) if isinstance(v, list) else describe_domain(v)}"
                             for k, v in part.space.items())
            own = {k: v for k, v in part.fixed.items() if k not in COMMAND_LINE_KNOBS}
            where = f" ({part.folder})" if part.folder else ""
            lines.append(f"    {part.name}{where}: {axes}" + (f"; fixed {own}" if own else ""))
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default (an option without one says in its help what None means), and the
    epilog's lines as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default == [] or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action)


def study_arguments(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="cpu",
                        help="smoke: tooling check in minutes; cpu: meaningful on 2 cores; gpu: the papers' settings")
    parser.add_argument("--out", default=default_out, help="output folder: results, report (and the study's state, "
                        "without --storage)")
    parser.add_argument("--storage", default=None, help="where the study's state lives (Tune's experiments and "
                        "checkpoints, the trials' rows, the Optuna journal) and it resumes from: a folder every node "
                        "reaches at the same absolute path (NFS, EFS), or s3://bucket/prefix, gs://bucket/prefix "
                        "(every node's credentials must write it). None: --out")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per grid cell, >= 1 (None: the scale's)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (global batch kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (= CPUs) per worker")
    parser.add_argument("--dataset", default="fashion_mnist", help="the dataset (lab.train's --dataset)")
    parser.add_argument("--data-root", default=None, help="the folder the dataset is read from (None: the lab's "
                        "default for the dataset)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="matrix products in fp32, or bf16 "
                        "under autocast (auto: bf16 where the device has fast bf16 units; lab.device)")
    return parser
