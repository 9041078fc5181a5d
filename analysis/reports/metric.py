"""Report of document 003's study: Recall@K on unseen classes vs the VAT radius epsilon and weight lambda."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import TITLE_FONT, add_with_spread, runs_note, series_colours, spread_caption, spreads
from analysis.load import read_results, summarise
from analysis.references import VAT_REFERENCES
from analysis.html import render_report
from analysis.registry import register

RECALLS = ["recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8"]
LAYERS = {"": ("encoder features", "solid"), "fc_": ("embedding layer (fc)", "dash")}  # prefix -> name, line


def vat_summary(results: pl.DataFrame) -> pl.DataFrame:
    columns = RECALLS + ["fc_recall_at_1", "random_recall_at_1", "random_fc_recall_at_1", "wall_s"]
    return summarise(results, ["vat_lambda", "vat_epsilon"], [c for c in columns if c in results.columns])


def vat_figure(results: pl.DataFrame) -> go.Figure:
    """Recall@1 on the unseen classes vs epsilon: one colour per lambda, solid for the encoder's features and
    dashed for the embedding layer; without VAT (epsilon = 0) and the random encoder as dark and grey levels.
    The document's table in its own panel (another dataset, network and epsilon scale)."""
    summary = vat_summary(results)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.08, subplot_titles=[
        "this lab: Recall@1 (%) on the unseen classes", "reference: document 003, Recall@1 (%)"])
    without = summary.filter(pl.col("vat_epsilon") == 0)
    lambdas = summary["vat_lambda"].unique().sort().to_list()
    colours = series_colours(lambdas)
    for layer, (layer_name, dash) in LAYERS.items():
        column = f"{layer}recall_at_1_mean"
        if column not in summary.columns or summary[column].is_null().all():
            continue
        for lam in lambdas:
            part = summary.filter((pl.col("vat_lambda") == lam) & (pl.col("vat_epsilon") > 0)).sort("vat_epsilon")
            runs, std = part["runs"].to_list(), part[f"{layer}recall_at_1_std"].to_list()
            note = f" ({runs_note(runs)})" if runs else ""
            name = f"{layer_name}, with VAT, lambda = {lam}{note}"
            add_with_spread(fig, go.Scatter(x=part["vat_epsilon"].to_list(), y=part[column].to_list(),
                                            mode="lines+markers", line=dict(dash=dash, color=colours[lam]), name=name,
                                            legendgroup=name), spreads(std, runs), 1, 1)
        if len(without):
            level = without[column].mean()
            fig.add_hline(y=level, line_dash=dash, line_color="#444", row=1, col=1,
                          annotation_text=f"{layer_name} without VAT (epsilon = 0): {level:.2f}")
    if len(without):
        fig.add_hline(y=without["random_recall_at_1_mean"].mean(), line_dash="dot", line_color="#999", row=1, col=1,
                      annotation_text="random encoder (encoder features)")
    for name, (before, after) in VAT_REFERENCES.items():
        fig.add_trace(go.Bar(x=[f"{name}: without", f"{name}: with VAT"], y=[before, after], marker_color="#bbbbbb",
                             marker_pattern_shape="/", name=f"reference: {name}"), 1, 2)
    fig.update_yaxes(range=[60, 92], title_text="reference: Recall@1 (%), axis from 60", row=1, col=2)
    fig.update_yaxes(title_text="lab: Recall@1 (%)", row=1, col=1)
    fig.update_xaxes(type="log", title="epsilon (l2 radius in normalised pixel space)", row=1, col=1)
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(height=460, title="VAT positives: Recall@1 vs epsilon", legend=dict(orientation="h", y=-0.3))
    return fig


def write_vat_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    first = results.row(0, named=True)
    ok = results.filter(pl.col("status") == "ok")
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b>, "
        f"{html.escape(str(first['metric_loss']))} loss ({html.escape(str(first['npair_form']))} form for N-pair), "
        f"backbone {html.escape(str(first['backbone']))}, batch {first['batch_size']} (one pair per class), "
        f"{first['epochs']} epoch(s); {len(ok)} finished runs of {len(results)}. Training sees the first half of the "
        "classes; Recall@K ranks the test images of the unseen half among themselves by Euclidean distance, on the "
        "encoder's features (solid) and on the trained embedding layer on top of them (dashed, fc_ columns).",
        "Reference bars: the document's table (CUB-200-2011, Cars196, VGG16-BN), labelled as reference; its epsilon "
        "lives on 224 x 224 x 3 images and is not on this figure's axis."]
    runs = vat_summary(ok)["runs"].to_list()
    sections = [("Recall@1 vs epsilon", vat_figure(results), spread_caption(runs)),
                ("Recall@K summary", vat_summary(results), "")]
    return render_report(study_dir / "report.html", "Metric learning with VAT positives", paragraphs, sections)


register("vat_epsilon", write_vat_report, lambda folder: vat_summary(read_results(folder)))
