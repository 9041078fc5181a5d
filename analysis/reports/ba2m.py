"""Report of the BA^2M study: supervised classification with and without batch-aware attention."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import TITLE_FONT, accuracy_vs_knob, spread_caption
from analysis.load import read_history, read_results, summarise
from analysis.html import render_report
from analysis.registry import register

METRICS = ["classifier_top1", "knn_top1", "random_knn_top1", "linear_top1", "random_linear_top1", "final_loss",
           "wall_s"]
# The README concludes from the classifier's own test top-1 (what BA^2M's paper reports, as error); kNN and the
# linear probe on its frozen features come beside it. The classifier's random-encoder score is chance (an
# untrained head), so it gets no dashed line: it would stretch the axis over the few points that matter.
FIGURE_METRICS = ("classifier_top1", "knn_top1", "linear_top1")
RANDOM_LINES = ("knn_top1", "linear_top1")


def ba2m_summary(study_dir: str | Path) -> pl.DataFrame:
    """Per ba2m_blocks: the classifier's test top-1 (the README's score), kNN and linear probe beside the random
    encoder's, the final loss and the training time, over seeds."""
    return summarise(read_results(study_dir), ["method", "ba2m_blocks"], METRICS)


def ba2m_training_signals(history, results):
    """Per-epoch training top-1 of the classifier and the spread of BA^2M's batch weights (std of
    w_n over the batch, mean over the modules; 0 without BA^2M), one line per run."""

    panels = [(c, t) for c, t in (("loss", "training cross-entropy"), ("train_top1", "training batch top-1 (%)"),
                                  ("ba2m_weight_std", "std of BA^2M weights w_n"))
              if c in history.columns]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[t for _, t in panels])
    fig.update_annotations(font_size=TITLE_FONT)
    if history.is_empty():
        return fig
    history = history.join(results.select(["trial_id", "ba2m_blocks"]), on="trial_id", how="left")
    colours = {0: "#555555"}
    for trial in history["trial_id"].unique(maintain_order=True).to_list():
        part = history.filter(pl.col("trial_id") == trial).sort("epoch")
        first = part.row(0, named=True)
        blocks = first["ba2m_blocks"]
        name = f"ba2m_blocks={blocks} seed {first['seed']}"
        for col, (column, _) in enumerate(panels, start=1):
            values = part[column].fill_null(0.0).to_list()
            fig.add_trace(go.Scatter(x=part["epoch"].to_list(), y=values, mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1,
                                     line=dict(color=colours.get(blocks, "#d62728"), width=1)), row=1, col=col)
    for col in range(1, len(panels) + 1):
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title="Training signals (every run)", height=420, legend=dict(font=dict(size=9)))
    return fig


def write_ba2m_report(study_dir: str | Path) -> Path:
    """Accuracy with and without BA^2M (the classifier's top-1 first), the training signals, the summary."""
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    ok = results.filter(pl.col("status") == "ok")
    failed = results.filter(pl.col("status") != "ok")
    first = results.row(0, named=True)
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs, batch {first['batch_size']}, "
        f"{html.escape(str(first['optimizer']))} base_lr {first['base_lr']}), method supervised (cross-entropy), "
        f"{len(ok)} finished runs of {len(results)}. ba2m_blocks = N puts BA^2M after the last N blocks of the "
        "backbone; 0 is the plain network with the same initial weights (same seed).",
        "The score to read is the trained classifier's own top-1 on the held-out test split (first panel; the "
        "README concludes from it). Beside it, top-1 of its frozen features: weighted kNN (k = "
        f"{first['knn_k']}, T = {first['knn_temperature']}) and a freshly trained linear probe, with each run's "
        "randomly initialised encoder on the same protocol (dashed). BA^2M is the identity at evaluation, so "
        "the difference is what training with batch-aware weights did to the network. The paper reports "
        "CIFAR-100 / ImageNet classifier error of ResNets, not these protocols: no reference curve is drawn.",
    ]
    runs = summarise(ok, ["method", "ba2m_blocks"], [])["runs"].to_list()
    sections = [
        ("Accuracy vs number of BA^2M blocks",
         accuracy_vs_knob(ok, "ba2m_blocks", metrics=FIGURE_METRICS, random=RANDOM_LINES, x_type="category",
                          title="Supervised: accuracy with and without BA^2M"),
         "ba2m_blocks takes only the values the study ran (0: the plain network). " + spread_caption(runs)),
        ("Training signals", ba2m_training_signals(read_history(study_dir), results),
         "A BA^2M weight std near 0 means the module weighs every sample alike (it then does nothing)."),
        ("Summary over seeds", ba2m_summary(study_dir), "wall_s: training time per run (evaluation excluded)."),
    ]
    if len(failed):
        sections.append(("Runs that did not finish", failed.select(["ba2m_blocks", "seed", "status"]), ""))
    return render_report(study_dir / "report.html", "BA^2M study: supervised with and without batch-aware "
                         "attention", paragraphs, sections)


register("ba2m", write_ba2m_report, ba2m_summary)
