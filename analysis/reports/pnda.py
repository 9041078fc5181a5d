"""Reports of document 000's studies: the PNDA table and the RAIS lambda / margin sweep."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.load import read_history, read_results, summarise
from analysis.references import PNDA_MODE_LABELS, PNDA_REFERENCES
from analysis.html import render_report
from analysis.registry import register

MODE_ORDER = ["none", "pda", "nda", "pnda"]


def pnda_table(results: pl.DataFrame) -> pl.DataFrame:
    summary = summarise(results, ["pnda_mode"], ["linear_top1", "knn_top1", "random_linear_top1",
                                                 "rai_positive_ratio", "wall_s"])
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    return (summary.with_columns(pl.col("pnda_mode").replace_strict(PNDA_MODE_LABELS, default=None).alias("setting"),
                                 pl.col("pnda_mode").replace_strict(order, default=99).alias("_order"))
            .sort("_order").drop("_order").select(["setting", pl.exclude("setting")]))


def pnda_bars(results: pl.DataFrame) -> go.Figure:
    """Lab: linear top-1 per setting (mean +- std over seeds); reference: the paper's two tables."""
    table = pnda_table(results)
    titles = ["this lab: linear top-1 (%) on the test split"] + [f"reference: {name}" for name in PNDA_REFERENCES]
    fig = make_subplots(rows=1, cols=1 + len(PNDA_REFERENCES), subplot_titles=titles)
    labels = table["setting"].to_list()
    fig.add_trace(go.Bar(x=labels, y=table["linear_top1_mean"].to_list(), name="lab",
                         error_y=dict(type="data", array=table["linear_top1_std"].to_list()),
                         marker_color="#1f77b4",
                         customdata=table["rai_positive_ratio_mean"].to_list(),
                         hovertemplate="%{x}: %{y:.2f}%<br>positive ratio %{customdata:.1f}%<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=labels, y=table["random_linear_top1_mean"].to_list(), mode="markers",
                             name="random encoder (same protocol)", marker=dict(symbol="line-ew-open", size=30,
                                                                                 color="#555")), 1, 1)
    for col, (name, ref) in enumerate(PNDA_REFERENCES.items(), start=2):
        fig.add_trace(go.Bar(x=[PNDA_MODE_LABELS[m] for m in MODE_ORDER], y=[ref[m][0] for m in MODE_ORDER],
                             error_y=dict(type="data", array=[ref[m][1] for m in MODE_ORDER]),
                             name=f"reference: {name} ({ref['positive_ratio']} % positives)",
                             marker_color="#bbbbbb", marker_pattern_shape="/"), 1, col)
        low = min(ref[m][0] for m in MODE_ORDER)
        fig.update_yaxes(range=[low - 3, max(ref[m][0] for m in MODE_ORDER) + 1.5], row=1, col=col)
    lab = table["linear_top1_mean"].drop_nulls().to_list()
    if lab:
        fig.update_yaxes(range=[min(lab + table["random_linear_top1_mean"].drop_nulls().to_list()) - 3,
                                max(lab) + 2], row=1, col=1)
    fig.update_layout(height=420, barmode="group", title="MoCo v2 / +PDA / +NDA / +PNDA")
    return fig


def rai_grid_html(results: pl.DataFrame, by: list[str]) -> str:
    """The RAI / non-RAI image grids stored with the runs (first seed of each setting)."""
    rows = results.filter(pl.col("rai_samples_png").is_not_null() & (pl.col("status") == "ok")).sort(by + ["seed"])
    parts, seen = [], set()
    for row in rows.iter_rows(named=True):
        key = tuple(row[k] for k in by)
        if key in seen:
            continue
        seen.add(key)
        caption = ", ".join(f"{k} = {row[k]}" for k in by)
        parts.append(f"<figure style='display:inline-block;margin:0.5em'><img alt='RAI samples' "
                     f"style='image-rendering:pixelated;width:480px' src='data:image/png;base64,{row['rai_samples_png']}'>"
                     f"<figcaption>{html.escape(caption)}: top 2 rows rotation-agnostic (RAI, rotated key a positive), "
                     f"bottom 2 rows the others; {row['rai_positive_ratio']:.1f} % RAI</figcaption></figure>")
    return "".join(parts) or "<p>No run stored RAI samples (RAIS runs only with pnda_mode = pnda).</p>"


def _intro(results: pl.DataFrame) -> str:
    first = results.row(0, named=True)
    ok = results.filter(pl.col("status") == "ok")
    return (f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
            f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} MoCo v2 epochs after "
            f"{first['rais_rotation_epochs']} + {first['rais_separation_epochs']} RAIS epochs, batch "
            f"{first['batch_size']}, queue {first['moco_queue_size']}), {len(ok)} finished runs of {len(results)}. "
            "Linear top-1: a linear classifier on the frozen encoder's features, scored on the test split.")


def write_pnda_table_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    paragraphs = [_intro(results),
                  "Reference panels: the document's Tables 1-2 (CIFAR-100 / ResNet-50 and Tiny ImageNet / ResNet-18), "
                  "labelled as reference; they show the published ordering, not a target for these numbers."]
    sections = [
        ("Linear accuracy per setting", pnda_bars(results), "Error bars: std over seeds."),
        ("Rotation-agnostic images found by RAIS", rai_grid_html(results, ["pnda_mode"]), ""),
        ("Summary over seeds", pnda_table(results), ""),
    ]
    history = read_history(study_dir)
    if len(history) and "rotation_positive_in_batch" in history.columns:
        sections.append(("Positive share per batch during training", history.select(
            ["pnda_mode" if "pnda_mode" in history.columns else "method", "seed", "epoch",
             "rotation_positive_in_batch"]) if "pnda_mode" in history.columns else history.select(
            ["method", "seed", "epoch", "rotation_positive_in_batch"]), ""))
    return render_report(study_dir / "report.html", "PNDA: MoCo v2 / +PDA / +NDA / +PNDA", paragraphs, sections)


def rais_summary(results: pl.DataFrame) -> pl.DataFrame:
    return summarise(results, ["rais_margin", "rais_lambda"], ["rai_positive_ratio", "linear_top1", "knn_top1",
                                                               "wall_s"])


def rais_figure(results: pl.DataFrame) -> go.Figure:
    summary = rais_summary(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["positive ratio (% of training images marked RAI)",
                                                        "PNDA linear top-1 (%) on the test split"])
    for margin in summary["rais_margin"].unique().sort().to_list():
        part = summary.filter(pl.col("rais_margin") == margin).sort("rais_lambda")
        for col, metric in ((1, "rai_positive_ratio"), (2, "linear_top1")):
            fig.add_trace(go.Scatter(x=part["rais_lambda"].to_list(), y=part[f"{metric}_mean"].to_list(),
                                     error_y=dict(type="data", array=part[f"{metric}_std"].to_list()),
                                     mode="lines+markers", name=f"m = {margin}", legendgroup=str(margin),
                                     showlegend=col == 1), 1, col)
    for ref_name, ref in PNDA_REFERENCES.items():
        fig.add_hline(y=ref["positive_ratio"], line_dash="dot", line_color="#999", row=1, col=1,
                      annotation_text=f"reference: {ref_name} ({ref['positive_ratio']} %)")
    fig.update_xaxes(type="log", title="lambda")
    fig.update_layout(height=420, title="RAIS: lambda and margin m")
    return fig


def write_rais_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    paragraphs = [_intro(results),
                  "RAIS marks an image rotation-agnostic when the mean entropy of its four rotations' predictions "
                  "exceeds rho + m (rho = log(4) / 2). Dotted lines: the document's positive ratios (reference)."]
    sections = [("Positive ratio and accuracy vs lambda, per margin", rais_figure(results), ""),
                ("RAI samples per setting", rai_grid_html(results, ["rais_margin", "rais_lambda"]), ""),
                ("Summary", rais_summary(results), "")]
    return render_report(study_dir / "report.html", "RAIS: lambda and margin", paragraphs, sections)


register("pnda_table", write_pnda_table_report, lambda folder: pnda_table(read_results(folder)))
register("rais_lambda_margin", write_rais_report, lambda folder: rais_summary(read_results(folder)))
