"""The report of a sweep (python -m studies.sweep, or any study with searched axes): where the score lies
along each swept knob, how the knobs combine (parallel coordinates), which knobs matter (Optuna's
PED-ANOVA importances, when there are enough points), how the search progressed, and every trial's curves.

A trial's score is what the searcher learnt from: the test kNN top-1 of a finished trial, the monitor kNN
top-1 at the last epoch of a trial a scheduler stopped early (drawn open: it is not a test score). A
point is one setting of the swept knobs; its score is the mean over its seeds (n says how many).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import series_colours, training_curves
from analysis.html import render_report
from analysis.load import read_history, read_results
from analysis.registry import register, study_description

SCORE = "score"
MIN_POINTS_FOR_IMPORTANCE = 8


def _swept(description: dict) -> tuple[list[str], list[str]]:
    """(grid axes, searched axes) of the study, seeds left out."""
    space = description.get("space", {})
    grid = [k for k, v in space.items() if isinstance(v, list) and k != "seed"]
    searched = [k for k, v in space.items() if not isinstance(v, list)]
    return grid, searched


def _log_scale(description: dict, results: pl.DataFrame, axis: str) -> bool:
    spec = description.get("space", {}).get(axis)
    if isinstance(spec, str):
        return "LogUniform" in spec
    values = results[axis].drop_nulls()
    return (results.schema[axis].is_numeric() and len(values) > 0 and values.min() > 0
            and values.max() / values.min() >= 10)


def trial_scores(results: pl.DataFrame) -> pl.DataFrame:
    """Each finished or stopped trial with its score (test kNN finished, monitor kNN if stopped early)."""
    stopped = pl.col("status").str.starts_with("stopped early")
    return (results.filter((pl.col("status") == "ok") | stopped)
            .with_columns(pl.when(stopped).then(pl.col("monitor_knn_top1")).otherwise(pl.col("knn_top1")).alias(SCORE),
                          stopped.alias("stopped_early")))


def point_table(scores: pl.DataFrame, axes: list[str]) -> pl.DataFrame:
    """One row per point: its knobs, n (trials), the mean score and its spread over seeds (null for n = 1),
    the test kNN of its finished trials, best first."""
    table = (scores.group_by(axes).agg(pl.len().alias("n"), pl.col(SCORE).mean().alias("mean score"),
                                       pl.col(SCORE).std().alias("std over seeds"),
                                       pl.col("stopped_early").sum().alias("stopped early"),
                                       pl.col("knn_top1").filter(~pl.col("stopped_early")).mean()
                                       .alias("test kNN (finished)"))
             .sort("mean score", descending=True))
    return table.with_columns(pl.when(pl.col("n") > 1).then(pl.col("std over seeds")).alias("std over seeds"))


def score_vs_knobs(scores: pl.DataFrame, axes: list[str], description: dict) -> go.Figure:
    """One panel per swept knob: every trial's score at its value (open markers: stopped early, monitor score)."""
    grid = [a for a in axes if a != "method" and not isinstance(description.get("space", {}).get(a), str)]
    colour_by = "method" if "method" in axes else (grid[0] if grid else None)  # a knob under every point
    colours = series_colours(scores[colour_by].to_list()) if colour_by else {}
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, horizontal_spacing=0.06)
    shown = set()
    for col, axis in enumerate(axes, start=1):
        categorical = not scores.schema[axis].is_numeric()
        keys = [colour_by, "stopped_early"] if colour_by else ["stopped_early"]
        for values, part in scores.group_by(keys, maintain_order=True):
            group, stopped = values if colour_by else ("trials", values[0])
            name = f"{colour_by} {group}" if colour_by else "trials"
            name += " (stopped early: monitor score)" if stopped else ""
            fig.add_trace(go.Scatter(
                x=[str(v) for v in part[axis].to_list()] if categorical else part[axis].to_list(),
                y=part[SCORE].to_list(), mode="markers", name=name, legendgroup=name, showlegend=name not in shown,
                marker=dict(color=colours.get(group, "#1f77b4"), size=9, symbol="circle-open" if stopped else "circle",
                            line=dict(width=2)),
                customdata=part["trial_id"].to_list(),
                hovertemplate=f"{axis}=%{{x}}<br>score=%{{y:.2f}}<br>trial %{{customdata}}<extra>{html.escape(name)}"
                              "</extra>"), row=1, col=col)
            shown.add(name)
        fig.update_xaxes(title_text=axis, row=1, col=col,
                         type="category" if categorical else ("log" if _log_scale(description, scores, axis)
                                                              else "linear"))
    fig.update_yaxes(title_text="score: kNN top-1 (%)", row=1, col=1)
    fig.update_layout(title="Score against each swept knob (every trial)", height=430,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def parallel_coordinates(points: pl.DataFrame, axes: list[str]) -> go.Figure:
    """Every point as a line across its knobs to its mean score, coloured by the score."""
    dimensions = []
    for axis in axes:
        values = points[axis].to_list()
        if points.schema[axis].is_numeric() and not isinstance(values[0], (list, bool)):
            dimensions.append(dict(label=axis, values=values))
        else:  # categories as positions, labelled
            labels = sorted({str(v) for v in values})
            dimensions.append(dict(label=axis, values=[labels.index(str(v)) for v in values],
                                   tickvals=list(range(len(labels))), ticktext=labels))
    dimensions.append(dict(label="mean score (%)", values=points["mean score"].to_list()))
    fig = go.Figure(go.Parcoords(line=dict(color=points["mean score"].to_list(), colorscale="Viridis",
                                           showscale=True, colorbar=dict(title="score")), dimensions=dimensions))
    fig.update_layout(title="The points across their knobs (drag along an axis to filter)", height=420,
                      margin=dict(l=80, r=80))
    return fig


def _optuna_trials(study_dir: Path, description: dict):
    """The study's Optuna study (the journal study.json names), read only, and its complete points."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = study_dir / description.get("optuna_storage", "")
    if not description.get("optuna_storage") or not path.is_file():
        return None, []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=description["name"], storage=JournalStorage(JournalFileBackend(str(path))))
    return study, study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def importances(study, complete) -> go.Figure | None:
    """PED-ANOVA (Watanabe et al. 2023) over the points in the top quantile: how much of the good points'
    spread each knob explains. None with fewer than MIN_POINTS_FOR_IMPORTANCE points or one knob."""
    import optuna

    params = {p for t in complete for p in t.params}
    if len(complete) < MIN_POINTS_FOR_IMPORTANCE or len(params) < 2:
        return None
    quantile = min(0.5, max(0.1, 3 / len(complete)))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = sorted(values, key=values.get)
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h", marker_color="#1f77b4"))
    fig.update_layout(title=f"Knob importances (PED-ANOVA, top {quantile:.0%} of {len(complete)} points)",
                      xaxis_title="importance (sums to 1)", height=120 + 40 * len(names))
    return fig


def search_history(complete) -> go.Figure:
    """Each point's score in the order the searcher asked it, and the best so far."""
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    best, running = [], -math.inf
    for value in values:
        running = max(running, value)
        best.append(running)
    fig = go.Figure([go.Scatter(x=numbers, y=values, mode="markers", name="point (mean over its seeds)"),
                     go.Scatter(x=numbers, y=best, mode="lines", name="best so far", line=dict(shape="hv"))])
    fig.update_layout(title="The search, point by point", xaxis_title="Optuna trial number",
                      yaxis_title="score (%)", height=380, legend=dict(orientation="h", y=-0.3))
    return fig


def write_sweep_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    description = study_description(study_dir)
    results = read_results(study_dir)
    grid, searched = _swept(description)
    axes = [a for a in grid + searched if a in results.columns]
    scores = trial_scores(results)
    points = point_table(scores, axes) if axes and len(scores) else pl.DataFrame()
    name = description.get("name", study_dir.name)
    first = results.row(0, named=True) if len(results) else {}
    stopped = int(scores["stopped_early"].sum()) if len(scores) else 0
    seeds = description.get("space", {}).get("seed", [0])
    monitor = (f"validation images held out of training ({first.get('validation_images')})"
               if first.get("validation_images") else "a fixed subset of the test split")
    paragraphs = [
        f"Sweep <b>{html.escape(str(name))}</b> of {html.escape(', '.join(sorted(results['method'].unique().to_list())))} "
        f"on {html.escape(str(first.get('dataset')))} at scale {html.escape(str(first.get('scale')))}: "
        f"{len(results)} trials, {len(scores) - stopped} finished, {stopped} stopped early"
        f"{' by ' + html.escape(str(description.get('scheduler'))) if stopped else ''}, "
        f"{len(results) - len(scores)} failed or unfinished. Grid: {html.escape(', '.join(grid) or 'none')}; "
        f"searched by TPE: {html.escape(', '.join(searched) or 'none')}; {len(seeds)} seed(s) under each point.",
        "A trial's score is the test kNN top-1 (frozen features, weighted kNN) of a finished trial, and the monitor "
        f"kNN top-1 after the last epoch of a trial stopped early (open markers). The monitor scores {monitor}; "
        "the searcher and the scheduler only ever see the monitor during training."]
    sections: list = []
    if len(points):
        shown = points.head(10)
        sections.append(("Best points", shown, "Mean over each point's trials; n = 1 has no spread (–). The test kNN "
                         "column averages only its finished trials."))
        sections.append(("Score against each knob", score_vs_knobs(scores, axes, description), ""))
        if len(axes) >= 1 and len(points) >= 2:
            sections.append(("Parallel coordinates", parallel_coordinates(points, axes), ""))
    study, complete = _optuna_trials(study_dir, description)
    if complete:
        figure = importances(study, complete)
        if figure is not None:
            sections.append(("Which knobs matter", figure, "Importances say how much each knob separates the best "
                             "points from the rest; with a handful of points they are a hint, not a measurement."))
        else:
            sections.append(("Which knobs matter", f"<p>Importances need {MIN_POINTS_FOR_IMPORTANCE} points and two "
                             f"knobs; this study has {len(complete)} point(s) of "
                             f"{len({p for t in complete for p in t.params})} knob(s).</p>", ""))
        if searched:
            sections.append(("Search history", search_history(complete), ""))
    history = read_history(study_dir)
    if len(history):
        sections.append(("Training curves", training_curves(history, axes + ["seed"]), ""))
    failed = results.filter((pl.col("status") != "ok") & ~pl.col("status").str.starts_with("stopped early"))
    if len(failed):
        sections.append(("Trials that did not finish", failed.select([*axes, "seed", "status"]), ""))
    if description.get("experiments"):
        runs = pl.DataFrame([{"experiment": e["name"], "trials": e.get("trials"), "finished": e.get("finished"),
                              "scheduler": e.get("scheduler"), "samples": e.get("samples")}
                             for e in description["experiments"]])
        sections.append(("How the study was run", runs, "Each later experiment extended the study in this folder: "
                         "it ran only the trials the earlier ones lacked."))
    title = "Sweep" if name == "sweep" else f"Sweep {name}"
    return render_report(study_dir / "report.html", title, paragraphs, sections)


register("sweep", write_sweep_report, lambda folder: point_table(
    trial_scores(read_results(folder)), [a for a in sum(_swept(study_description(Path(folder))), [])
                                         if a in read_results(folder).columns]),
    studies=("sweep",))
