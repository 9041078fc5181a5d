"""One function per figure: a polars frame in, a plotly figure out."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.load import summarise
from analysis.references import ReferenceCurve

# One colour per method of the lab (tests/test_report.py checks that every lab method has one).
PALETTE = {
    "simclr": "#1f77b4", "simsiam": "#d62728", "moco": "#2ca02c", "supcon": "#9467bd", "byol": "#ff7f0e",
    "barlow_twins": "#8c564b", "vicreg": "#e377c2", "rotation": "#7f7f7f", "swav": "#bcbd22",
    "contrastive_clustering": "#17becf", "pcl": "#1b9e77", "dino": "#d95f02", "jigsaw": "#7570b3",
    "context_prediction": "#e7298a", "supervised": "#66a61e", "rais": "#e6ab02", "pnda": "#a6761d",
    "metric": "#666666",
}
SERIES = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f")  # for series that are not methods (values of a swept knob)
DEFAULT_COLOR = "#555555"


def _color(method: str) -> str:
    return PALETTE.get(method, DEFAULT_COLOR)


def series_colours(values: list) -> dict:
    """A colour per distinct value: the method's own for methods, else the SERIES cycle in order."""
    distinct = list(dict.fromkeys(values))
    if all(v in PALETTE for v in distinct):
        return {v: PALETTE[v] for v in distinct}
    return {v: SERIES[i % len(SERIES)] for i, v in enumerate(distinct)}


def run_label(row: dict, axes: list[str]) -> str:
    """'simclr batch_size=64 seed 0': the method, the swept knobs that are not the method, the seed."""
    parts = [str(row.get("method", ""))] + [f"{k}={row[k]}" for k in axes if k != "method" and k in row]
    return " ".join(parts) + (f" seed {row['seed']}" if "seed" in row else "")


def accuracy_vs_knob(results: pl.DataFrame, knob: str, references: tuple[ReferenceCurve, ...] = (),
                     metrics: tuple[str, ...] = ("knn_top1", "linear_top1"), log_x: bool = True,
                     title: str | None = None) -> go.Figure:
    """Accuracy vs `knob` per method, mean +- std over seeds (error bars), the random encoder's
    score on the same protocol as a dashed line, published curves (if any) on a second axis."""
    summary = summarise(results, ["method", knob], list(metrics) + [f"random_{m}" for m in metrics])
    titles = [m.replace("_top1", "") + " top-1 (%) on the test split" for m in metrics]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=titles,
                        specs=[[{"secondary_y": bool(references)}] * len(metrics)])
    for col, metric in enumerate(metrics, start=1):
        for method in summary["method"].unique(maintain_order=True).to_list():
            part = summary.filter(pl.col("method") == method)
            fig.add_trace(go.Scatter(
                x=part[knob].to_list(), y=part[f"{metric}_mean"].to_list(), mode="lines+markers",
                name=f"{method} (lab, mean ± std over seeds)", legendgroup=method, showlegend=col == 1,
                line=dict(color=_color(method)),
                error_y=dict(type="data", array=part[f"{metric}_std"].to_list(), visible=True),
                customdata=part["runs"].to_list(),
                hovertemplate=f"{method}<br>{knob}=%{{x}}<br>{metric}=%{{y:.2f}}<br>runs=%{{customdata}}<extra></extra>",
            ), row=1, col=col, secondary_y=False)
            fig.add_trace(go.Scatter(
                x=part[knob].to_list(), y=part[f"random_{metric}_mean"].to_list(), mode="lines",
                name=f"{method}: random encoder (same protocol)", legendgroup=method + "-random",
                showlegend=col == 1, line=dict(color=_color(method), dash="dash", width=1),
            ), row=1, col=col, secondary_y=False)
        for ref in references:
            fig.add_trace(go.Scatter(
                x=list(ref.x), y=list(ref.y), mode="lines+markers", name=f"reference: {ref.label}",
                legendgroup="ref-" + ref.method, showlegend=col == 1,
                line=dict(color=_color(ref.method), dash="dot"), marker=dict(symbol="diamond-open"),
                hovertemplate=f"reference: {ref.label}<br>{knob}=%{{x}}<br>{ref.metric}=%{{y}}<extra></extra>",
            ), row=1, col=col, secondary_y=True)
        fig.update_xaxes(title_text=knob, type="log" if log_x else "linear", row=1, col=col)
        fig.update_yaxes(title_text="lab: top-1 (%)", row=1, col=col, secondary_y=False)
        if references:
            fig.update_yaxes(title_text=f"reference: {references[0].metric}", row=1, col=col, secondary_y=True)
    fig.update_layout(title=title or f"Accuracy vs {knob}", height=480, legend=dict(orientation="h", y=-0.25))
    return fig


def drop_from_best(results: pl.DataFrame, knob: str, references: tuple[ReferenceCurve, ...] = (),
                   metric: str = "knn_top1") -> go.Figure:
    """Each curve relative to its own best point (points of accuracy), lab and references on one
    axis: the batch-size robustness view of Grill et al. 2020 (Fig. 3a), comparable across scales."""
    summary = summarise(results, ["method", knob], [metric])
    fig = go.Figure()
    for method in summary["method"].unique(maintain_order=True).to_list():
        part = summary.filter(pl.col("method") == method)
        best = max(part[f"{metric}_mean"].to_list())
        fig.add_trace(go.Scatter(
            x=part[knob].to_list(), y=[v - best for v in part[f"{metric}_mean"].to_list()],
            mode="lines+markers", name=f"{method} (lab, {metric})", line=dict(color=_color(method)),
            error_y=dict(type="data", array=part[f"{metric}_std"].to_list(), visible=True)))
    for ref in references:
        best = max(ref.y)
        fig.add_trace(go.Scatter(
            x=list(ref.x), y=[v - best for v in ref.y], mode="lines+markers", name=f"reference: {ref.label}",
            line=dict(color=_color(ref.method), dash="dot"), marker=dict(symbol="diamond-open")))
    fig.update_xaxes(title_text=knob, type="log")
    fig.update_yaxes(title_text="points below the curve's best")
    fig.update_layout(title=f"Robustness to {knob}: drop from each curve's best", height=450,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def training_curves(history: pl.DataFrame, axes: list[str] = ("method",)) -> go.Figure:
    """Per-epoch loss, monitoring kNN and the collapse signal (embedding std) of every run, coloured by the
    study's first swept knob."""
    panels = [("loss", "training loss"), ("monitor_knn_top1", "kNN top-1 (%) on a monitoring subset"),
              ("embedding_std", "std of the l2-normalised embedding (0 = collapse)")]
    panels = [(c, t) for c, t in panels if c in history.columns]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[t for _, t in panels])
    if history.is_empty():
        return fig
    axes = [a for a in axes if a in history.columns] or ["method"]
    colour_by = axes[0]
    colours = series_colours(history[colour_by].to_list())
    for trial in history["trial_id"].unique(maintain_order=True).to_list():
        part = history.filter(pl.col("trial_id") == trial).sort("epoch")
        first = part.row(0, named=True)
        name = run_label(first, axes)
        for col, (column, _) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=part["epoch"].to_list(), y=part[column].to_list(), mode="lines+markers",
                                     name=name, legendgroup=name, showlegend=col == 1,
                                     line=dict(color=colours[first[colour_by]], width=1)), row=1, col=col)
    for col in range(1, len(panels) + 1):
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title="Training curves (every run)", height=420, legend=dict(font=dict(size=9)))
    return fig


def methods_bars(results: pl.DataFrame, metrics: tuple[str, ...] = ("knn_top1", "linear_top1")) -> go.Figure:
    """Each method's score beside its random encoder's on the same protocol (mean +- std over seeds)."""
    summary = summarise(results, ["method"], list(metrics) + [f"random_{m}" for m in metrics])
    methods = summary["method"].to_list()
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m.replace("_top1", "") + " top-1 (%)" for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        fig.add_trace(go.Bar(x=methods, y=summary[f"{metric}_mean"].to_list(), name="trained encoder",
                             marker_color="#1f77b4", showlegend=col == 1, legendgroup="trained",
                             error_y=dict(type="data", array=summary[f"{metric}_std"].to_list())), row=1, col=col)
        fig.add_trace(go.Bar(x=methods, y=summary[f"random_{metric}_mean"].to_list(), name="random encoder",
                             marker_color="#bbbbbb", showlegend=col == 1, legendgroup="random"), row=1, col=col)
        low = min(summary[f"random_{metric}_mean"].min(), summary[f"{metric}_mean"].min())
        fig.update_yaxes(range=[max(0.0, low - 10), None], row=1, col=col)
    fig.update_layout(barmode="group", title="Every method on the same budget", height=450)
    return fig
