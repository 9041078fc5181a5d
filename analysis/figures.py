"""One function per figure: a polars frame in, a plotly figure out."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.load import summarise
from analysis.references import ReferenceCurve

# One colour per method of the lab; tests/test_report.py checks that every lab method has one and that any two
# differ by a CIELAB distance a reader sees (the methods study draws 14 of them side by side). The first ten
# are plotly's defaults, so simclr is blue and simsiam red as in earlier reports.
PALETTE = {
    "simclr": "#1f77b4", "simsiam": "#d62728", "moco": "#2ca02c", "supcon": "#9467bd", "byol": "#ff7f0e",
    "barlow_twins": "#8c564b", "vicreg": "#e377c2", "rotation": "#7f7f7f", "swav": "#bcbd22",
    "contrastive_clustering": "#17becf", "pcl": "#0b0b8a", "dino": "#000000", "jigsaw": "#66cc00",
    "context_prediction": "#c000c0", "supervised": "#2f5f2f", "rais": "#e6ab02", "pnda": "#a6761d",
    "metric": "#006666",
}
SERIES = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f")  # for series that are not methods (values of a swept knob)
DEFAULT_COLOR = "#555555"
RANDOM_COLOR = "#bbbbbb"  # the randomly initialised encoder's bars and markers
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")
TITLE_FONT = 13  # subplot titles: small enough that three panels' titles do not run into each other


def _color(method: str) -> str:
    return PALETTE.get(method, DEFAULT_COLOR)


def series_colours(values: list) -> dict:
    """A colour per distinct value: the method's own for methods, else the SERIES cycle in order."""
    distinct = list(dict.fromkeys(values))
    if all(v in PALETTE for v in distinct):
        return {v: PALETTE[v] for v in distinct}
    return {v: SERIES[i % len(SERIES)] for i, v in enumerate(distinct)}


def _short(value) -> str:
    """A knob's value for a legend: a searched float to 4 significant digits (0.1192, not 0.11923686...)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_label(row: dict, axes: list[str]) -> str:
    """'simclr batch_size=64 seed 0': the method, the swept knobs other than the method and the seed (each said
    once, not as 'method=simclr' or 'seed=0' again), then the seed."""
    parts = [str(row.get("method", ""))] + [f"{k}={_short(row[k])}" for k in dict.fromkeys(axes)
                                            if k not in ("method", "seed") and k in row]
    return " ".join(parts) + (f" seed {row['seed']}" if row.get("seed") is not None else "")


def metric_title(metric: str) -> str:
    """'knn_top1' -> 'kNN top-1 (%)'."""
    names = {"knn_top1": "kNN top-1 (%)", "linear_top1": "linear top-1 (%)", "classifier_top1": "classifier top-1 (%)"}
    return names.get(metric, metric)


def spreads(std: list, runs: list) -> list:
    """Each point's std over its runs where it has two runs or more, else None (one seed has no spread)."""
    return [s if n is not None and n > 1 and s is not None else None for s, n in zip(std, runs)]


def add_with_spread(fig: go.Figure, trace: go.Scatter | go.Bar, spread: list, row: int | None = None,
                    col: int | None = None) -> None:
    """Add `trace` and, for its points with a spread (see spreads), a companion trace that carries their error bars
    and nothing else. Not error_y on `trace` itself: plotly draws a null error as a bar of length 0 (a cap on the
    point), which would claim that a single seed has a spread of 0."""
    fig.add_trace(trace, row=row, col=col)
    keep = [i for i, (y, s) in enumerate(zip(trace.y, spread)) if s is not None and y is not None]
    if not keep:
        return
    colour = trace.line.color if isinstance(trace, go.Scatter) else "#333333"
    common = dict(x=[trace.x[i] for i in keep], y=[trace.y[i] for i in keep], showlegend=False, hoverinfo="skip",
                  legendgroup=trace.legendgroup, error_y=dict(type="data", array=[spread[i] for i in keep],
                                                              color=colour, thickness=1.5, width=4))
    if isinstance(trace, go.Bar):  # same offsetgroup: drawn over its bar, not in a slot of its own
        companion = go.Bar(**common, marker_color="rgba(0,0,0,0)", offsetgroup=trace.offsetgroup)
    else:
        companion = go.Scatter(**common, mode="markers", marker=dict(opacity=0))
    fig.add_trace(companion, row=row, col=col)


def runs_note(runs: list[int]) -> str:
    """How a series' points were averaged, for its legend entry: 'n = 1 run' (no spread drawn) or
    'mean ± std, n = 3 runs' (runs: the seeds, times the values of any other knob the figure averages over)."""
    low, high = min(runs), max(runs)
    if high <= 1:
        return "n = 1 run"
    return f"mean ± std, n = {low if low == high else f'{low}–{high}'} runs"


def point_hover(means: list, std: list, runs: list) -> list[str]:
    """Each point's value as the hover shows it: '62.00 ± 1.06 (n = 2)', or '62.00 (n = 1)' with no ±."""
    texts = []
    for mean, s, n in zip(means, std, runs):
        if mean is None:
            texts.append("no score")
        elif n > 1 and s is not None:
            texts.append(f"{mean:.2f} ± {s:.2f} (n = {n})")
        else:
            texts.append(f"{mean:.2f} (n = {n}, no spread)")
    return texts


def spread_caption(runs: list[int], runs_are: str = "one per seed") -> str:
    """The caption's word on error bars, from the runs behind each point (`runs_are`: what a point's runs are)."""
    if not runs or max(runs) <= 1:
        return "One run per point (n = 1, a single seed): no error bars, as one run has no spread."
    if min(runs) <= 1:
        return (f"Error bars: standard deviation over each point's runs ({runs_are}); points with a single run "
                "(n = 1, see the hover) have none.")
    return f"Error bars: standard deviation over each point's runs ({runs_are}; n in the hover)."


def data_range(values: list, errors: list | None = None, below: float = 3.0, above: float = 2.0) -> list[float]:
    """An axis range around every value (and its error bar), so that no marker falls off the axis."""
    errors = errors or [None] * len(values)
    points = [(v, e or 0.0) for v, e in zip(values, errors) if v is not None and v == v]
    if not points:
        return [0.0, 100.0]
    return [min(v - e for v, e in points) - below, max(v + e for v, e in points) + above]


def _x_values(values: list, x_type: str) -> list:
    return [str(v) for v in values] if x_type == "category" else values


def accuracy_vs_knob(results: pl.DataFrame, knob: str, references: tuple[ReferenceCurve, ...] = (),
                     metrics: tuple[str, ...] = ("knn_top1", "linear_top1"), x_type: str = "log",
                     title: str | None = None, random: tuple[str, ...] | None = None,
                     series: str = "method") -> go.Figure:
    """Accuracy vs `knob` per method: the lab's mean over seeds (error bars: std, where there are two seeds or
    more) and, dashed, the randomly initialised encoder on the same protocol (for the metrics in `random`, all by
    default). x_type: 'log', 'linear' or 'category' (a knob with a few distinct values, e.g. {0, 2}). series: the
    column that makes the curves (the method by default; any swept knob, e.g. moco_variant).

    Published curves get a panel of their own, with their own axis named after their metric: they are ImageNet
    numbers of other networks, and a shared or twin axis would draw them across the lab's curves and invite a
    comparison of levels that the scales forbid (drop_from_best compares their shapes instead)."""
    random = tuple(m for m in metrics if random is None or m in random)
    summary = summarise(results, list(dict.fromkeys([series, knob])), list(metrics) + [f"random_{m}" for m in random])
    colours = series_colours(summary[series].to_list())
    reference_metrics = list(dict.fromkeys(ref.metric for ref in references))
    titles = [f"lab: {metric_title(m)}, test split" for m in metrics] + [f"published: {m}" for m in reference_metrics]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.08)
    for col, metric in enumerate(metrics, start=1):
        for method in summary[series].unique(maintain_order=True).to_list():
            part = summary.filter(pl.col(series) == method)
            x, runs = _x_values(part[knob].to_list(), x_type), part["runs"].to_list()
            means, std = part[f"{metric}_mean"].to_list(), part[f"{metric}_std"].to_list()
            add_with_spread(fig, go.Scatter(
                x=x, y=means, mode="lines+markers", name=f"{method} (lab, {runs_note(runs)})", legendgroup=method,
                showlegend=col == 1, line=dict(color=colours[method]), text=point_hover(means, std, runs),
                hovertemplate=f"{method}<br>{knob}=%{{x}}<br>{metric}: %{{text}}<extra></extra>"),
                spreads(std, runs), row=1, col=col)
            if metric in random:
                fig.add_trace(go.Scatter(
                    x=x, y=part[f"random_{metric}_mean"].to_list(), mode="lines",
                    name=f"{method}: random encoder (same protocol)", legendgroup=method + "-random",
                    showlegend=metric == random[0], line=dict(color=colours[method], dash="dash", width=1)),
                    row=1, col=col)
        fig.update_xaxes(title_text=knob, type=x_type, row=1, col=col)
        fig.update_yaxes(title_text=f"lab: {metric_title(metric)}", row=1, col=col)
    for col, metric in enumerate(reference_metrics, start=len(metrics) + 1):
        for ref in (r for r in references if r.metric == metric):
            fig.add_trace(go.Scatter(
                x=list(ref.x), y=list(ref.y), mode="lines+markers", name=f"reference: {ref.label}",
                line=dict(color=colours.get(ref.method, _color(ref.method)), dash="dot"), marker=dict(symbol="diamond-open"),
                hovertemplate=f"reference: {ref.label}<br>{knob}=%{{x}}<br>{ref.metric}: %{{y}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text=knob, type="log" if x_type == "log" else "linear", row=1, col=col)
        fig.update_yaxes(title_text=f"reference: {metric}", row=1, col=col)
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(title=title or f"Accuracy vs {knob}", height=500, legend=dict(orientation="h", y=-0.25))
    return fig


def drop_from_best(results: pl.DataFrame, knob: str, references: tuple[ReferenceCurve, ...] = (),
                   metric: str = "knn_top1", series: str = "method", x_type: str = "log") -> go.Figure:
    """Each curve relative to its own best point (points of accuracy), lab and references on one
    axis: the batch-size robustness view of Grill et al. 2020 (Fig. 3a), comparable across scales."""
    summary = summarise(results, list(dict.fromkeys([series, knob])), [metric])
    colours = series_colours(summary[series].to_list())
    fig = go.Figure()
    for method in summary[series].unique(maintain_order=True).to_list():
        part = summary.filter(pl.col(series) == method)
        means, std, runs = part[f"{metric}_mean"].to_list(), part[f"{metric}_std"].to_list(), part["runs"].to_list()
        best = max(means)
        add_with_spread(fig, go.Scatter(
            x=_x_values(part[knob].to_list(), x_type), y=[v - best for v in means], mode="lines+markers",
            legendgroup=method, name=f"{method} (lab, {metric_title(metric)}, {runs_note(runs)})", line=dict(color=colours[method]),
            text=point_hover(means, std, runs),
            hovertemplate=f"{method}<br>{knob}=%{{x}}<br>%{{y:.2f}} from its best<br>{metric}: %{{text}}"
                          "<extra></extra>"), spreads(std, runs))
    for ref in references:
        best = max(ref.y)
        fig.add_trace(go.Scatter(
            x=list(ref.x), y=[v - best for v in ref.y], mode="lines+markers", name=f"reference: {ref.label}",
            line=dict(color=colours.get(ref.method, _color(ref.method)), dash="dot"), marker=dict(symbol="diamond-open")))
    fig.update_xaxes(title_text=knob, type=x_type)
    fig.update_yaxes(title_text="points below the curve's best")
    fig.update_layout(title=f"Robustness to {knob}: drop from each curve's best", height=450,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def training_curves(history: pl.DataFrame, axes: list[str] = ("method",)) -> go.Figure:
    """Per-epoch loss, monitoring kNN (on a fixed monitoring subset) and the collapse signal (std of the
    l2-normalised embedding, 0 = collapse) of every run, coloured by the study's first swept knob."""
    panels = [("loss", "training loss"), ("monitor_knn_top1", "monitor kNN top-1 (%)"),
              ("embedding_std", "embedding std (0: collapse)")]
    panels = [(c, t) for c, t in panels if c in history.columns]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[t for _, t in panels])
    fig.update_annotations(font_size=TITLE_FONT)
    if history.is_empty():
        return fig
    axes = [a for a in axes if a in history.columns] or ["method"]
    colour_by, style_by = axes[0], next((a for a in axes[1:] if a != "seed"), None)
    colours = series_colours(history[colour_by].to_list())
    # the second knob as the line's dash and marker, so that runs of one colour stay apart
    styles = {v: i for i, v in enumerate(dict.fromkeys(history[style_by].to_list()))} if style_by else {}
    for trial in history["trial_id"].unique(maintain_order=True).to_list():
        part = history.filter(pl.col("trial_id") == trial).sort("epoch")
        first = part.row(0, named=True)
        name = run_label(first, axes)
        style = styles.get(first[style_by], 0) if style_by else 0
        for col, (column, _) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=part["epoch"].to_list(), y=part[column].to_list(), mode="lines+markers",
                                     name=name, legendgroup=name, showlegend=col == 1,
                                     marker=dict(symbol=SYMBOLS[style % len(SYMBOLS)], size=7),
                                     line=dict(color=colours[first[colour_by]], width=1,
                                               dash=DASHES[style % len(DASHES)])), row=1, col=col)
    for col in range(1, len(panels) + 1):
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title="Training curves (every run)", height=420, legend=dict(font=dict(size=10)))
    return fig


METHODS_BARS_CAPTION = ("Each panel is sorted by the method's gain over its random encoder on that protocol (trained "
                        "− random, largest first). The y-axis starts a few points below the lowest bar, not at 0: "
                        "read the gaps between bars, not their lengths.")


def methods_bars(results: pl.DataFrame, metrics: tuple[str, ...] = ("knn_top1", "linear_top1")) -> go.Figure:
    """Each method's score (its own colour) beside its random encoder's on the same protocol (grey), mean over
    seeds, methods sorted by the gain (trained - random) and the axis starting near the data: the gaps of a few
    points that separate the methods would vanish on an axis from 0 (see METHODS_BARS_CAPTION)."""
    summary = summarise(results, ["method"], list(metrics) + [f"random_{m}" for m in metrics])
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[
        f"{metric_title(m)}, sorted by gain over random" for m in metrics], horizontal_spacing=0.08)
    for col, metric in enumerate(metrics, start=1):
        part = (summary.with_columns((pl.col(f"{metric}_mean") - pl.col(f"random_{metric}_mean")).alias("gain"))
                .sort("gain", descending=True, nulls_last=True))
        methods, runs = part["method"].to_list(), part["runs"].to_list()
        means, std = part[f"{metric}_mean"].to_list(), part[f"{metric}_std"].to_list()
        random = part[f"random_{metric}_mean"].to_list()
        hover = [f"{text}<br>random encoder {'–' if r is None else f'{r:.2f}'}<br>gain "
                 f"{'–' if g is None else f'{g:+.2f}'}" for text, r, g in
                 zip(point_hover(means, std, runs), random, part["gain"].to_list())]
        add_with_spread(fig, go.Bar(
            x=methods, y=means, name=f"trained encoder (the method's colour; {runs_note(runs)})",
            marker_color=[_color(m) for m in methods], showlegend=col == 1, legendgroup="trained",
            offsetgroup="trained", text=hover, textposition="none", hovertemplate="%{x}: %{text}<extra></extra>"),
            spreads(std, runs), row=1, col=col)
        fig.add_trace(go.Bar(x=methods, y=random, name="random encoder (same protocol)", marker_color=RANDOM_COLOR,
                             showlegend=col == 1, legendgroup="random", offsetgroup="random"), row=1, col=col)
        low, high = data_range(means + random, spreads(std, runs) + [None] * len(random), 3.0, 1.5)
        low = max(0.0, low)
        fig.update_yaxes(range=[low, high], row=1, col=col,
                         title_text=metric_title(metric) + (f", axis from {low:.0f}" if low > 0 else ""))
        fig.update_xaxes(categoryorder="array", categoryarray=methods, row=1, col=col)
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(barmode="group", title="Every method on the same budget", height=480,
                      legend=dict(orientation="h", y=-0.35))
    return fig


def trial_timeline(results: pl.DataFrame, nodes: list[dict], axes: list[str]) -> go.Figure:
    """Where and when each trial ran (one bar per trial on its node's row, from its start to its row) above the
    number of Ray nodes alive over time (studies.runner.NodeRecord): what an autoscaling sweep looked like.
    Time in minutes from the first record."""
    timed = results.filter(pl.col("started_at").is_not_nan() & pl.col("ended_at").is_not_nan())
    starts = timed["started_at"].to_list() + [r["t"] for r in nodes]
    origin = min(starts) if starts else 0.0
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.08,
                        subplot_titles=("trials on nodes", "nodes alive"))
    for status_ok, colour in ((True, SERIES[0]), (False, SERIES[1])):
        part = timed.filter((pl.col("status") == "ok") == status_ok)
        if part.is_empty():
            continue
        rows = part.to_dicts()
        fig.add_trace(go.Bar(
            base=[(r["started_at"] - origin) / 60 for r in rows], x=[(r["ended_at"] - r["started_at"]) / 60 for r in rows],
            y=[r["node"] for r in rows], orientation="h", marker_color=colour, opacity=0.7,
            name="finished" if status_ok else "not ok (stopped, failed, diverged)",
            hovertext=[f"{run_label(r, axes)}<br>{r['status']}<br>{(r['ended_at'] - r['started_at']) / 60:.1f} min"
                       for r in rows], hoverinfo="text"), row=1, col=1)
    if nodes:
        fig.add_trace(go.Scatter(x=[(r["t"] - origin) / 60 for r in nodes], y=[len(r["nodes"]) for r in nodes],
                                 mode="lines", line_shape="hv", name="nodes alive", line_color=DEFAULT_COLOR),
                      row=2, col=1)
    fig.update_layout(barmode="overlay", height=420 + 24 * timed["node"].n_unique(), legend_orientation="h",
                      margin=dict(t=40))
    fig.update_xaxes(title_text="minutes since the study began", row=2, col=1)
    fig.update_yaxes(title_text="nodes", rangemode="tozero", row=2, col=1)
    fig.update_annotations(font_size=TITLE_FONT)
    return fig
