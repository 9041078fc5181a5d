"""The augmentation-pair study's report: SimCLR Fig. 5's grid of transforms (row: the first applied, column:
the second; the diagonal: the transform alone), the lab's beside the paper's cells, and what composing gains."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import TITLE_FONT, metric_title, spread_caption, training_curves
from analysis.html import render_report
from analysis.load import read_history, read_results, summarise
from analysis.references import AUGMENTATION_REFERENCES
from analysis.registry import register

METRICS = ("knn_top1", "linear_top1")


def _pair(value: str) -> tuple[str, str]:
    first, _, second = value.partition(",")
    return first, second or first


def pair_table(results: pl.DataFrame) -> pl.DataFrame:
    """One row per cell: first and second transform (the same on the diagonal), mean scores over seeds."""
    summary = summarise(results, ["view_transforms"], [*METRICS, "random_knn_top1"])
    pairs = [_pair(v) for v in summary["view_transforms"].to_list()]
    return summary.with_columns(pl.Series("first", [a for a, _ in pairs]), pl.Series("second", [b for _, b in pairs]))


def transforms_in(table: pl.DataFrame) -> list[str]:
    from_lab = list(dict.fromkeys(table["first"].to_list() + table["second"].to_list()))
    order = ["crop", "cutout", "colour", "sobel", "noise", "blur", "rotate"]  # SimCLR Fig. 5's order
    return [t for t in order if t in from_lab] + [t for t in from_lab if t not in order]


def grid_figure(table: pl.DataFrame) -> go.Figure:
    """The lab's grid per metric, and the paper's cells (its other cells are not transcribed here: blank)."""
    names = transforms_in(table)
    titles = [f"lab: {metric_title(m)}" for m in METRICS] + ["reference: SimCLR Fig. 5 (ImageNet linear top-1)"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.1)
    for col, metric in enumerate(METRICS, start=1):
        values = {(r["first"], r["second"]): r[f"{metric}_mean"] for r in table.iter_rows(named=True)}
        z = [[values.get((first, second)) for second in names] for first in names]
        text = [["–" if v is None else f"{v:.1f}" for v in row] for row in z]
        fig.add_trace(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Viridis",
                                 showscale=False, hovertemplate="first %{y}, then %{x}: %{text}<extra></extra>"),
                      row=1, col=col)
    reference = AUGMENTATION_REFERENCES
    z = [[reference.get((first, second)) for second in names] for first in names]
    text = [["" if v is None else f"{v:.1f}" for v in row] for row in z]
    fig.add_trace(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Greys",
                             showscale=False, hovertemplate="reference: first %{y}, then %{x}: %{text}<extra></extra>"),
                  row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="second transform", row=1, col=col)
        fig.update_yaxes(title_text="first transform", autorange="reversed", row=1, col=col)
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(title="Transform pairs: first (row), then second (column); the diagonal alone", height=480)
    return fig


def composition(table: pl.DataFrame, metric: str = "knn_top1") -> pl.DataFrame:
    """Each pair against its better single transform: what composing the two adds (points of `metric`)."""
    singles = {r["first"]: r[f"{metric}_mean"] for r in table.iter_rows(named=True) if r["first"] == r["second"]}
    rows = []
    for r in table.iter_rows(named=True):
        if r["first"] == r["second"]:
            continue
        alone = [singles.get(r["first"]), singles.get(r["second"])]
        best_single = max((a for a in alone if a is not None), default=None)
        rows.append({"pair": f"{r['first']} then {r['second']}", metric: r[f"{metric}_mean"],
                     "better single": best_single,
                     "gain over the better single": None if best_single is None else r[f"{metric}_mean"] - best_single,
                     "reference": AUGMENTATION_REFERENCES.get((r["first"], r["second"]))})
    return pl.DataFrame(rows).sort(metric, descending=True) if rows else pl.DataFrame()


def write_augmentations_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    ok = results.filter(pl.col("status") == "ok")
    others = results.filter(pl.col("status") != "ok")
    first = results.row(0, named=True)
    table = pair_table(ok)
    runs = table["runs"].to_list()
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(SimCLR, backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs, batch "
        f"{first['batch_size']}), {len(ok)} finished runs" + (f", {len(others)} not finished" if len(others) else "")
        + ". One view is the image as it is, the other gets the cell's transforms in order (SimCLR Sec. 3.1's "
        "protocol for Fig. 5); scores are top-1 on the held-out test split of frozen features. The random "
        f"encoder scores {table['random_knn_top1_mean'].mean():.1f} kNN top-1 on the same protocol.",
        "<b>What the paper reports</b> (reference, ImageNet linear top-1, ResNet-50): crop then colour is the best "
        "cell (56.3) and blur then rotate the worst (2.6); no single transform is enough, and composing two "
        "helps. Only these two cells are drawn here; the figure holds the others.",
    ]
    sections = [
        ("The grid", grid_figure(table), spread_caption(runs) + " Blank reference cells: not transcribed."),
        ("What composing adds (kNN top-1)", composition(table), "Each ordered pair against the better of its two "
         "transforms alone; the paper's point is that the best pairs beat either of their transforms by far."),
        ("What composing adds (linear top-1)", composition(table, "linear_top1"), ""),
        ("Training curves", training_curves(read_history(study_dir), ["view_transforms"]), ""),
        ("Summary over seeds", augmentations_summary(study_dir), ""),
    ]
    if len(others):
        sections.append(("Runs that did not finish", others.select(["view_transforms", "seed", "status"]), ""))
    return render_report(study_dir / "report.html", "Augmentation pairs: SimCLR Fig. 5", paragraphs, sections)


def augmentations_summary(study_dir: str | Path) -> pl.DataFrame:
    return summarise(read_results(study_dir), ["view_transforms"],
                     ["knn_top1", "random_knn_top1", "linear_top1", "random_linear_top1", "wall_s"])


register("augmentations", write_augmentations_report, augmentations_summary)
