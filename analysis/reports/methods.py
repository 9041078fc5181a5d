"""The methods study's report: every method on the same budget, beside its random encoder."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from analysis.figures import METHODS_BARS_CAPTION, methods_bars, spread_caption, training_curves
from analysis.html import render_report
from analysis.load import read_history, read_results, summarise
from analysis.registry import register


def methods_summary(*study_dirs: str | Path) -> pl.DataFrame:
    """Per method: kNN / linear beside the random encoder's, the gain, the collapse signal, the cost
    (several folders are read as one, e.g. a study and single runs collected with studies/collect_runs.py)."""
    results = pl.concat([read_results(d) for d in study_dirs], how="diagonal_relaxed")
    summary = summarise(results, ["method"], ["knn_top1", "random_knn_top1", "linear_top1", "random_linear_top1",
                                              "cluster_nmi", "random_cluster_nmi", "cluster_acc",
                                              "embedding_std_ratio", "wall_s"])
    summary = summary.with_columns((pl.col("knn_top1_mean") - pl.col("random_knn_top1_mean")).alias("knn_gain"))
    return summary.select(["method", "runs", "knn_top1_mean", "random_knn_top1_mean", "knn_gain", "linear_top1_mean",
                           "random_linear_top1_mean", "cluster_nmi_mean", "random_cluster_nmi_mean",
                           "cluster_acc_mean", "embedding_std_ratio_mean", "wall_s_mean"]).sort("knn_gain",
                                                                                              descending=True)


def precision_comparison(*study_dirs: str | Path) -> pl.DataFrame:
    """Per method, the same runs in fp32 and in bf16 (folders of the methods study run with each --precision,
    read as one): kNN and linear top-1, mean and std over seeds per precision, bf16 minus fp32, and bf16's
    training time as a fraction of fp32's. The std over seeds is what a difference is to be set against."""
    results = pl.concat([read_results(d) for d in study_dirs], how="diagonal_relaxed")
    summary = summarise(results, ["method", "precision_used"], ["knn_top1", "linear_top1", "wall_s"])

    def at(precision: str) -> pl.DataFrame:
        frame = summary.filter(pl.col("precision_used") == precision).drop("precision_used")
        return frame.rename({c: f"{c}_{precision}" for c in frame.columns if c != "method"})

    both = at("fp32").join(at("bf16"), on="method", how="inner")
    metrics = [pl.col("runs_fp32").alias("seeds")]
    for metric in ("knn_top1", "linear_top1"):
        metrics += [pl.col(f"{metric}_mean_fp32").alias(f"{metric}_fp32"), pl.col(f"{metric}_std_fp32"),
                    pl.col(f"{metric}_mean_bf16").alias(f"{metric}_bf16"), pl.col(f"{metric}_std_bf16"),
                    (pl.col(f"{metric}_mean_bf16") - pl.col(f"{metric}_mean_fp32")).alias(f"{metric}_bf16_minus_fp32")]
    metrics.append((pl.col("wall_s_mean_bf16") / pl.col("wall_s_mean_fp32")).alias("bf16_wall_over_fp32"))
    return both.select("method", *metrics).sort("method")


def write_methods_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    ok = results.filter(pl.col("status") == "ok")
    first = results.row(0, named=True)
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs, batch {first['batch_size']}), "
        f"{len(ok)} finished runs of {len(results)}. Each method has its own colour; grey: the same protocol on "
        "each run's randomly initialised encoder. SupCon uses the labels (supervised contrastive); the others do not.",
    ]
    sections: list[tuple[str, go.Figure | pl.DataFrame, str]] = [
        ("Accuracy per method", methods_bars(ok),
         METHODS_BARS_CAPTION + " " + spread_caption(summarise(ok, ["method"], [])["runs"].to_list())),
        ("Training curves", training_curves(read_history(study_dir), ["method"]),
         "Collapse shows as embedding std near 0."),
        ("Summary over seeds", methods_summary(study_dir), ""),
    ]
    return render_report(study_dir / "report.html", "Every method on the same budget", paragraphs, sections)


register("methods", write_methods_report, lambda folder: methods_summary(folder))
