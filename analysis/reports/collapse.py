"""The collapse study's report: every ablation's kNN beside chance and its collapse signal."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.load import read_history, read_results
from analysis.html import render_report
from analysis.registry import register, study_description

# each ablated method's switches and their default values
SWITCHES = {"simsiam": {"simsiam_stop_gradient": True, "predictor": True}, "byol": {"predictor": True},
            "moco": {"ema_momentum": 0.99}, "dino": {"dino_centering": True, "dino_sharpening": True}}


def variant_label(row: dict) -> str:
    """'simsiam: stop_gradient off' / 'dino: default' ..., from the switches that differ from the default."""
    changed = [f"{k} off" if isinstance(default, bool) else f"{k} = {row[k]}"
               for k, default in SWITCHES.get(row["method"], {}).items()
               if row.get(k) is not None and row[k] != default]
    return f"{row['method']}: " + (", ".join(changed) if changed else "default")


def part_folders(study_dir: Path) -> list[Path]:
    """The ablations' folders: the folder itself when it is one ablation, else its ablation subfolders."""
    if (study_dir / "results.parquet").exists():
        return [study_dir]
    return [d for d in sorted(study_dir.iterdir()) if (d / "results.parquet").exists()]


def read_collapse(study_dir: str | Path, baselines: tuple[str | Path, ...] = ()) -> pl.DataFrame:
    """The ablation runs, plus the same methods' default rows from other studies (e.g. results/methods)."""
    frames = [read_results(d) for d in part_folders(Path(study_dir))]
    ablated = {m for f in frames for m in f["method"].unique().to_list()}
    frames += [read_results(b).filter(pl.col("method").is_in(sorted(ablated))) for b in baselines
               if (Path(b) / "results.parquet").exists()]
    results = pl.concat(frames, how="diagonal_relaxed")
    return results.with_columns(pl.Series("variant", [variant_label(r) for r in results.iter_rows(named=True)]))


def collapse_table(results: pl.DataFrame) -> pl.DataFrame:
    if "collapse_reason" not in results.columns:  # runs stored before the column existed
        results = results.with_columns(pl.lit(None, dtype=pl.Utf8).alias("collapse_reason"))
    return results.select(["variant", "seed", "status", "knn_top1", "chance_top1", "random_knn_top1", "linear_top1",
                           "embedding_std_ratio", "collapsed", "collapse_reason", "final_loss", "wall_s"]
                          ).sort(["variant", "seed"])


def collapse_figure(results: pl.DataFrame) -> go.Figure:
    table = collapse_table(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        "kNN top-1 (%) on the test split; dashes: random encoder, dots: chance",
        "embedding std x sqrt(d) (1: spread over the sphere, 0: one point)"])
    colors = ["#d62728" if c else "#1f77b4" for c in table["collapsed"].to_list()]
    labels = [f"{v} (seed {s})" for v, s in zip(table["variant"], table["seed"])]
    fig.add_trace(go.Bar(x=labels, y=table["knn_top1"].to_list(), marker_color=colors, name="kNN top-1",
                         hovertext=table["status"].to_list()), 1, 1)
    fig.add_trace(go.Scatter(x=labels, y=table["random_knn_top1"].to_list(), mode="markers", name="random encoder",
                             marker=dict(symbol="line-ew-open", size=24, color="#555")), 1, 1)
    fig.add_trace(go.Scatter(x=labels, y=table["chance_top1"].to_list(), mode="markers", name="chance",
                             marker=dict(symbol="line-ew-open", size=24, color="#d62728")), 1, 1)
    fig.add_trace(go.Bar(x=labels, y=table["embedding_std_ratio"].to_list(), marker_color=colors,
                         name="std ratio", showlegend=False), 1, 2)
    fig.update_layout(height=520, title="Red: runs the lab flags as collapsed")
    return fig


def write_collapse_report(study_dir: str | Path, baselines: tuple[str | Path, ...] | None = None) -> Path:
    study_dir = Path(study_dir)
    if baselines is None:  # as the study stored them (studies/collapse.py --baseline)
        baselines = tuple(study_description(study_dir).get("baselines", ()))
    results = read_collapse(study_dir, baselines)
    first = results.row(0, named=True)
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs). A run is flagged collapsed "
        "when its embedding's per-dimension std is below a tenth of 1/sqrt(d) or its kNN lies within 5 points of "
        "chance (lab.collapse.collapse_reason). The papers report collapse for: SimSiam without stop-gradient or without "
        "predictor, BYOL without predictor, DINO without centring or without sharpening; MoCo with m = 0 fails to "
        "train."]
    sections: list = [("kNN and collapse signal per ablation", collapse_figure(results), ""),
                      ("Runs", collapse_table(results), "")]
    histories = [read_history(d) for d in part_folders(study_dir)]
    history = pl.concat([h for h in histories if len(h)], how="diagonal_relaxed") if any(len(h) for h in histories) \
        else pl.DataFrame()
    if "teacher_entropy_ratio" in history.columns:
        dino = (history.join(results.select(["trial_id", "variant"]), on="trial_id")
                .filter(pl.col("variant").str.starts_with("dino"))
                .select(["variant", "seed", "epoch", "teacher_entropy_ratio",
                         *(["teacher_mean_entropy_ratio"] if "teacher_mean_entropy_ratio" in history.columns else []),
                         "teacher_student_kl"]).sort(["variant", "seed", "epoch"]))
        sections.append(("DINO: teacher output entropy per epoch", dino,
                         "teacher_entropy_ratio = h(P_t) / log K, each output's entropy; teacher_mean_entropy_ratio = "
                         "h(batch-mean P_t) / log K. Both near 1: the uniform collapse (no sharpening); both near 0: "
                         "every image on one dimension (no centring); a healthy sharp teacher has the first low and "
                         "the second high (DINO Fig. 7; lab.methods.dino.DINO.collapse_reason)."))
    return render_report(study_dir / "report.html", "Collapse ablations", paragraphs, sections)


register("collapse", write_collapse_report, lambda folder: collapse_table(read_collapse(folder)),
         studies=("collapse", *(f"collapse_{name}" for name in ("simsiam_no_stop_gradient", "simsiam_no_predictor",
                                                                 "byol_no_predictor", "moco_momentum_0",
                                                                 "dino_no_centering", "dino_no_sharpening"))))
