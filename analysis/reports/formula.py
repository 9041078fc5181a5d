"""Report of document 002's study: fine-tuning accuracy vs label fraction per initialisation."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import TITLE_FONT, add_with_spread, runs_note, spread_caption, spreads
from analysis.load import read_results, summarise
from analysis.references import FORMULA_REFERENCES
from analysis.html import render_report
from analysis.registry import register


def init_name(path: str | None) -> str:
    return "scratch" if path is None else Path(path).name


def read_finetune(study_dir: str | Path) -> pl.DataFrame:
    """The fine-tuning runs: of the folder itself (one label fraction) or of its finetune_* folders."""
    study_dir = Path(study_dir)
    folders = [study_dir] if (study_dir / "results.parquet").exists() else sorted(study_dir.glob("finetune_*"))
    frames = [read_results(d) for d in folders if (d / "results.parquet").exists()]
    results = pl.concat(frames, how="diagonal_relaxed")
    return results.with_columns(pl.col("init_from").map_elements(init_name, return_dtype=pl.Utf8,
                                                                 skip_nulls=False).alias("init"))


def finetune_summary(results: pl.DataFrame) -> pl.DataFrame:
    return summarise(results, ["init", "label_fraction"], ["classifier_top1", "knn_top1", "linear_top1", "wall_s"])


def finetune_figure(results: pl.DataFrame) -> go.Figure:
    """The fine-tuned classifier's test top-1 vs the fraction of labels, one line per initialisation (mean over
    seeds, error bars where n >= 2); the document's numbers in their own panel (another network and data)."""
    summary = finetune_summary(results)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.08, subplot_titles=[
        "this lab: fine-tuned test top-1 (%), Fashion-MNIST", "reference: document 002 (DeiT-Ti, 6 datasets)"])
    colors = {"scratch": "#555555", "fractaldb": "#2ca02c", "perlin": "#9467bd", "simclr": "#1f77b4"}
    for init in summary["init"].unique().sort().to_list():
        part = summary.filter(pl.col("init") == init).sort("label_fraction")
        runs, std = part["runs"].to_list(), part["classifier_top1_std"].to_list()
        add_with_spread(fig, go.Scatter(x=(part["label_fraction"] * 100).to_list(),
                                        y=part["classifier_top1_mean"].to_list(), mode="lines+markers",
                                        name=f"{init} ({runs_note(runs)})", legendgroup=init,
                                        line=dict(color=colors.get(init, "#d62728"))), spreads(std, runs), 1, 1)
    fig.add_trace(go.Bar(x=list(FORMULA_REFERENCES), y=list(FORMULA_REFERENCES.values()), marker_color="#bbbbbb",
                         marker_pattern_shape="/", name="reference: document 002"), 1, 2)
    fig.update_yaxes(range=[85, 90], title_text="reference: top-1 (%), axis from 85", row=1, col=2)
    fig.update_yaxes(title_text="lab: classifier top-1 (%)", row=1, col=1)
    fig.update_xaxes(type="log", title="labelled training images (%)", row=1, col=1)
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(height=440, title="Pretraining without natural images vs from scratch vs SSL")
    return fig


def _image(path: Path, caption: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure style='display:inline-block;margin:0.5em'><img alt='{html.escape(caption)}' "
            f"style='image-rendering:pixelated;width:360px' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_formula_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_finetune(study_dir)
    first = results.row(0, named=True)
    paragraphs = [
        f"Fine-tuning on <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, batch {first['batch_size']}): the whole network trained "
        "with cross-entropy on a class-stratified fraction of the training labels, from a random initialisation "
        "(scratch) or from the backbone of a pretraining run. Score: the fine-tuned classifier's top-1 on the test "
        "split.", "Reference bars: the document's numbers, labelled as reference (another architecture and data)."]
    samples = (_image(study_dir / "samples_fractaldb.png", "FractalDB: 10 categories (rows) x 8 variants")
               + _image(study_dir / "samples_perlin.png", "Perlin noise: 10 categories (rows) x 8 variants"))
    sections = [("Fine-tuning accuracy vs labels", finetune_figure(results),
                 spread_caption(finetune_summary(results)["runs"].to_list())),
                ("The generated categories", samples or "<p>No sample grids stored.</p>", ""),
                ("Summary", finetune_summary(results), "")]
    return render_report(study_dir / "report.html", "Formula-driven pretraining", paragraphs, sections)


register("formula_pretraining", write_formula_report, lambda folder: finetune_summary(read_finetune(folder)),
         studies=("formula_pretraining", "formula_finetune_0.01", "formula_finetune_0.1", "formula_finetune_1.0"))
