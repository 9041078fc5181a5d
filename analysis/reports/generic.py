"""Reports for any study the lab did not write a report for, and for a single run's folder.

generic: the score against each knob the study swept (study.json's axes), beside the random
encoder's, a summary over seeds, and every run's training curves. run: one `python -m lab.train`
folder (result.json): its scores beside its random encoder's and its training curves.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import polars as pl

from analysis.figures import METHODS_BARS_CAPTION, accuracy_vs_knob, methods_bars, spread_caption, training_curves
from analysis.html import render_report
from analysis.load import read_history, read_results, read_run, summarise
from analysis.registry import GENERIC, RUN, register, study_description

METRICS = ["knn_top1", "linear_top1"]


def _numeric(results: pl.DataFrame, axis: str) -> bool:
    return results.schema[axis].is_numeric() and results[axis].drop_nulls().len() > 0


def _x_type(results: pl.DataFrame, axis: str) -> str:
    """log for a positive numeric knob spanning a decade or more, linear for other numbers, else category (the
    values as they are: strings, booleans, lists, which a numeric axis would drop)."""
    if not _numeric(results, axis) or results.schema[axis] == pl.Boolean:
        return "category"
    values = results[axis].drop_nulls()
    return "log" if values.min() > 0 and values.max() / values.min() >= 10 else "linear"


def study_axes(study_dir: Path, results: pl.DataFrame) -> list[str]:
    axes = study_description(study_dir).get("axes")
    if axes is None:  # folders from before study.json named its axes: the configuration columns that vary
        scores = {c for c in results.columns if "top1" in c or "recall" in c or c.startswith("cluster_")}
        identity = {"seed", "trial_id", "fingerprint", "status", "wall_s", "history"} | scores
        axes = [c for c in results.columns if c not in identity and results.schema[c] != pl.List
                and results[c].n_unique() > 1 and c.split("_")[0] not in ("random", "embedding", "final")]
    return [a for a in axes if a in results.columns]


def generic_summary(study_dir: str | Path) -> pl.DataFrame:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    axes = study_axes(study_dir, results) or ["method"]
    return summarise(results, list(dict.fromkeys(["method", *axes])), METRICS + [f"random_{m}" for m in METRICS]
                     + ["wall_s"])


def write_generic_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    ok = results.filter(pl.col("status") == "ok")
    axes = study_axes(study_dir, results)
    name = study_description(study_dir).get("name", study_dir.name)
    first = results.row(0, named=True)
    paragraphs = [
        f"Study <b>{html.escape(str(name))}</b>: dataset <b>{html.escape(str(first['dataset']))}</b>, scale "
        f"<b>{html.escape(str(first['scale']))}</b>, {len(ok)} finished runs of {len(results)}; swept: "
        f"{html.escape(', '.join(axes) or 'nothing but the seed')}. Scores are top-1 on the held-out test split of "
        "frozen features (weighted kNN and a linear probe); dashed lines are the same protocol on each run's randomly "
        "initialised encoder."]
    sections: list = []
    for axis in axes:
        if axis == "method":
            runs = summarise(ok, ["method"], [])["runs"].to_list()
            sections.append(("Accuracy per method", methods_bars(ok), METHODS_BARS_CAPTION + " " + spread_caption(
                runs, "its seeds x the other swept knobs' values" if len(axes) > 1 else "one per seed")))
        else:
            runs = summarise(ok, list(dict.fromkeys(["method", axis])), [])["runs"].to_list()
            # with several swept knobs a point averages over the others too: its runs are not only its seeds
            caption = spread_caption(runs, "its seeds x the other swept knobs' values" if len(axes) > 1
                                     else "one per seed")
            sections.append((f"Accuracy vs {axis}", accuracy_vs_knob(ok, axis, x_type=_x_type(ok, axis),
                                                                    title=f"Accuracy vs {axis}"), caption))
    sections += [("Training curves", training_curves(read_history(study_dir), axes or ["method"]), ""),
                 ("Summary over seeds", generic_summary(study_dir), "")]
    failed = results.filter(pl.col("status") != "ok")
    if len(failed):
        sections.append(("Runs that did not finish", failed.select([*axes, "seed", "status"]), ""))
    return render_report(study_dir / "report.html", f"Study {name}", paragraphs, sections)


def write_run_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    results, history = read_run(run_dir)
    row = results.row(0, named=True)
    scores = [(name, row.get(name), row.get(f"random_{name}")) for name in
              ("knn_top1", "linear_top1", "classifier_top1", "cluster_nmi", "recall_at_1", "fc_recall_at_1")]
    table = pl.DataFrame([{"score": n, "trained": v, "random encoder": r} for n, v, r in scores
                          if v is not None and not (isinstance(v, float) and math.isnan(v))])
    paragraphs = [f"Run <b>{html.escape(run_dir.name)}</b>: method <b>{html.escape(str(row['method']))}</b> on "
                  f"{html.escape(str(row['dataset']))}, scale {html.escape(str(row['scale']))}, {row['epochs_done']} "
                  f"of {row['epochs']} epochs, status {html.escape(str(row['status']))}."]
    sections = [("Scores on the test split", table, "The random encoder is this run's own initialisation."),
                ("Training curves", training_curves(history, ["method"]), "")]
    return render_report(run_dir / "report.html", f"Run {run_dir.name}", paragraphs, sections)


register(GENERIC, write_generic_report, generic_summary, studies=("any study without a report of its own",))
register(RUN, write_run_report, lambda folder: read_run(Path(folder))[0], studies=("a lab.train run folder",))
