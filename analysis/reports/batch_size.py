"""The batch-size study's report: SimCLR (negatives from the batch) vs SimSiam (none) as the batch grows."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from analysis.figures import accuracy_vs_knob, drop_from_best, spread_caption, training_curves
from analysis.html import render_report
from analysis.load import read_history, read_results, summarise
from analysis.references import BATCH_SIZE_REFERENCES
from analysis.registry import register


def write_batch_size_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    history = read_history(study_dir)
    ok = results.filter(pl.col("status") == "ok")
    failed = results.filter(pl.col("status") != "ok")
    first = results.row(0, named=True)
    table = batch_size_summary(study_dir)
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs), {len(ok)} finished runs"
        + (f", {len(failed)} not finished" if len(failed) else "") + ". "
        "Scores are top-1 on the held-out test split of frozen features: weighted kNN (k = "
        f"{first['knn_k']}, T = {first['knn_temperature']}) and a linear probe; dashed lines are the same "
        "protocol on each run's randomly initialised encoder.",
        "Reference curves (dotted) are the papers' ImageNet ResNet-50 linear top-1, labelled as reference, in a "
        "panel of their own: another dataset, network and schedule, so their level says nothing about these "
        "numbers; the second figure compares shapes, each curve as its drop from its own best batch size.",
    ]
    runs = summarise(ok, ["method", "batch_size"], [])["runs"].to_list()
    sections: list[tuple[str, go.Figure | pl.DataFrame, str]] = [
        ("Accuracy vs batch size", accuracy_vs_knob(ok, "batch_size", BATCH_SIZE_REFERENCES,
                                                    title="SimCLR vs SimSiam: accuracy vs batch size"),
         spread_caption(runs) + " Learning rate: "
         + ("lr = base_lr x B / 256 (linear scaling rule)" if first["lr_scaling"] == "linear"
            else "lr = base_lr x sqrt(B / 256) (square-root scaling, SimCLR Appendix B.1)")
         + f", {first['optimizer']}, base_lr {first['base_lr']}."),
        ("Robustness: drop from each curve's best batch size",
         drop_from_best(ok, "batch_size", BATCH_SIZE_REFERENCES),
         "Points of accuracy below each curve's own best, lab (kNN top-1) and references on one axis: the shape "
         "of each curve, comparable across scales where the levels are not. " + spread_caption(runs)),
        ("Training curves", training_curves(history, ["method", "batch_size"]), "Collapse shows as embedding std near 0."),
        ("Summary over seeds", table, ""),
    ]
    if len(failed):
        sections.append(("Runs that did not finish", failed.select(
            ["method", "batch_size", "seed", "status"]), ""))
    return render_report(study_dir / "report.html", "Batch-size study: SimCLR vs SimSiam", paragraphs, sections)


def batch_size_summary(study_dir: str | Path) -> pl.DataFrame:
    return summarise(read_results(study_dir), ["method", "batch_size"],
                     ["knn_top1", "random_knn_top1", "linear_top1", "random_linear_top1", "wall_s"])


register("batch_size", write_batch_size_report, batch_size_summary)
