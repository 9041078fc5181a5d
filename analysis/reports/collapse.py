"""The collapse study's report: every ablation's kNN beside chance and its collapse signal."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import TITLE_FONT
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


BUDGET = ("dataset", "scale", "backbone", "epochs", "batch_size")  # what a default run must share to be the baseline
NOT_RUN = "no default run"


def default_sources(study_dir: Path) -> tuple[Path, ...]:
    """Where else the un-ablated (default) runs of the ablated methods are, for the methods the study ran no
    <method>_default folder for (studies/collapse.py --no-defaults, or folders written before it ran them): the
    folders the study stored (--baseline), else the methods study beside it (results/methods beside
    results/collapse, the lab's layout)."""
    top = study_dir.parent if (study_dir / "results.parquet").exists() else study_dir
    stored = study_description(top).get("baselines") or study_description(study_dir).get("baselines")
    if stored:
        return tuple(Path(b) for b in stored)
    sibling = top.parent / "methods"
    return (sibling,) if (sibling / "results.parquet").exists() else ()


def read_collapse(study_dir: str | Path, baselines: tuple[str | Path, ...] | None = None) -> pl.DataFrame:
    """The ablation runs and the study's own default runs, plus, for the methods without one, the default rows
    of other studies (`baselines`, by default default_sources) on the ablations' budget; each row with its
    variant ('simsiam: default', 'simsiam: predictor off') and whether it is the default."""
    study_dir = Path(study_dir)
    frames = [read_results(d) for d in part_folders(study_dir)]
    own = pl.concat(frames, how="diagonal_relaxed")
    ablated = set(own["method"].to_list())
    defaults = {r["method"] for r in own.iter_rows(named=True) if variant_label(r).endswith(": default")}
    lacking = sorted(ablated - defaults)
    budget = own.row(0, named=True)
    same_budget = [pl.col(k) == budget[k] for k in BUDGET if k in own.columns and budget[k] is not None]
    folders = {d.resolve() for d in part_folders(study_dir)}
    for folder in (default_sources(study_dir) if baselines is None else baselines) if lacking else ():
        if (Path(folder) / "results.parquet").exists() and Path(folder).resolve() not in folders:
            frames.append(read_results(folder).filter(pl.col("method").is_in(lacking), *same_budget)
                          .with_columns(pl.lit(str(folder)).alias("baseline_folder")))
    results = pl.concat(frames, how="diagonal_relaxed")
    variants = [variant_label(r) for r in results.iter_rows(named=True)]
    return results.with_columns(pl.Series("variant", variants),
                                pl.Series("default", [v.endswith(": default") for v in variants]))


def missing_defaults(results: pl.DataFrame) -> list[str]:
    """The ablated methods with no default run to compare with."""
    have = set(results.filter(pl.col("default"))["method"].to_list())
    return sorted(set(results["method"].to_list()) - have)


def collapse_table(results: pl.DataFrame) -> pl.DataFrame:
    """One row per run, each method's default first (the baseline its ablations are read against)."""
    if "collapse_reason" not in results.columns:  # runs stored before the column existed
        results = results.with_columns(pl.lit(None, dtype=pl.Utf8).alias("collapse_reason"))
    if "default" not in results.columns:
        results = results.with_columns(pl.col("variant").str.ends_with(": default").alias("default"))
    return (results.sort(["method", "default", "variant", "seed"], descending=[False, True, False, False])
            .select(["variant", "seed", "status", "knn_top1", "chance_top1", "random_knn_top1", "linear_top1",
                     "embedding_std_ratio", "collapsed", "collapse_reason", "final_loss", "wall_s"]))


def collapse_figure(results: pl.DataFrame) -> go.Figure:
    """Each run's kNN (beside its random encoder and chance) and its embedding spread, grouped by method with the
    method's default run first: the baseline its ablations are read against (a labelled gap where none was run)."""
    table = collapse_table(results)
    missing = missing_defaults(results)
    labels = [f"{v} (seed {s})" for v, s in zip(table["variant"], table["seed"])]
    # the collapse flag first: a default run that collapsed must not pass for a healthy baseline
    colors = [("#d62728" if c else "#2ca02c" if v.endswith(": default") else "#1f77b4")
              for v, c in zip(table["variant"].to_list(), table["collapsed"].to_list())]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=[
        "kNN top-1 (%), test split", "embedding std x sqrt(d) (1: spread, 0: one point)"])
    fig.add_trace(go.Bar(x=labels, y=table["knn_top1"].to_list(), marker_color=colors, name="kNN top-1",
                         showlegend=False, hovertext=table["status"].to_list()), 1, 1)
    fig.add_trace(go.Scatter(x=labels, y=table["random_knn_top1"].to_list(), mode="markers", name="random encoder",
                             marker=dict(symbol="line-ew-open", size=24, color="#555", line=dict(width=2))), 1, 1)
    fig.add_trace(go.Scatter(x=labels, y=table["chance_top1"].to_list(), mode="markers", name="chance",
                             marker=dict(symbol="line-ew-open", size=24, color="#d62728", line=dict(width=2,
                                                                                                  dash="dot"))), 1, 1)
    fig.add_trace(go.Bar(x=labels, y=table["embedding_std_ratio"].to_list(), marker_color=colors,
                         name="std ratio", showlegend=False), 1, 2)
    for name, colour in (("default run (the baseline)", "#2ca02c"), ("ablation", "#1f77b4"),
                         ("flagged collapsed", "#d62728")):  # legend entries for the bars' colours
        fig.add_trace(go.Bar(x=[None], y=[None], marker_color=colour, name=name), 1, 1)
    if missing:  # a slot per missing default, so that its absence is seen, not inferred
        gaps = [f"{m}: {NOT_RUN}" for m in missing]
        for col in (1, 2):
            fig.add_trace(go.Scatter(x=gaps, y=[0] * len(gaps), mode="text", text=["not run"] * len(gaps),
                                     textposition="top center", showlegend=False, hoverinfo="skip"), 1, col)
        order = sorted(labels + gaps, key=lambda label: (label.split(":")[0], NOT_RUN not in label))
        order = _default_first(order)
        fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_annotations(font_size=TITLE_FONT)
    # the legend above the titles: below, it would sit on the long rotated run labels
    fig.update_layout(height=600, title=dict(text="Each ablation beside its method's default run", y=0.98),
                      margin=dict(t=130), legend=dict(orientation="h", y=1.1, x=0, yanchor="bottom"))
    return fig


def _default_first(labels: list[str]) -> list[str]:
    """Per method, its default (or the slot of the missing one) first, then its ablations in their order."""
    methods = list(dict.fromkeys(label.split(":")[0] for label in labels))
    first = lambda label: ": default" in label or NOT_RUN in label  # noqa: E731
    return [label for m in methods for group in (True, False) for label in labels
            if label.split(":")[0] == m and first(label) == group]


def dino_entropy(folders: list[Path]) -> pl.DataFrame | None:
    """DINO's teacher entropies per epoch, per variant and seed, or None when no DINO run logged them. Each
    folder's history is joined with its own runs: trial ids are only unique within a study."""
    frames = []
    for folder in folders:
        history = read_history(folder)
        if "teacher_entropy_ratio" not in history.columns:
            continue
        runs = read_results(folder)
        runs = runs.with_columns(pl.Series("variant", [variant_label(r) for r in runs.iter_rows(named=True)]))
        frames.append(history.join(runs.select(["trial_id", "variant"]), on="trial_id")
                      .filter(pl.col("variant").str.starts_with("dino")))
    history = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    if history.is_empty():
        return None
    return history.select(["variant", "seed", "epoch", "teacher_entropy_ratio",
                           *(["teacher_mean_entropy_ratio"] if "teacher_mean_entropy_ratio" in history.columns else []),
                           "teacher_student_kl"]).sort(["variant", "seed", "epoch"])


def write_collapse_report(study_dir: str | Path, baselines: tuple[str | Path, ...] | None = None) -> Path:
    """Every ablation beside its method's default run (or a visible gap where none exists), the runs, and DINO's
    teacher entropies."""
    study_dir = Path(study_dir)
    if baselines is None:  # as the study stored them (studies/collapse.py --baseline), else the methods study beside it
        baselines = default_sources(study_dir)
    results = read_collapse(study_dir, baselines)
    first = results.row(0, named=True)
    missing = missing_defaults(results)
    used = results["baseline_folder"].drop_nulls().unique().sort().to_list() if "baseline_folder" in results.columns \
        else []
    sources = ", ".join(html.escape(folder) for folder in used)
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs). A run is flagged collapsed "
        "when its embedding's per-dimension std is below a tenth of 1/sqrt(d) or its kNN lies within 5 points of "
        "chance (lab.collapse.collapse_reason). The papers report collapse for: SimSiam without stop-gradient or without "
        "predictor, BYOL without predictor, DINO without centring or without sharpening; MoCo with m = 0 fails to "
        "train.",
        "Each ablation is read against its method's default (un-ablated) run on the same budget (dataset, scale, "
        "backbone, epochs, batch size), drawn first in green"
        + (f"; default rows from {sources}" if sources else "") + "."
        + (f" <b>No default run of {html.escape(', '.join(missing))}</b> on this budget: rerun "
           "<code>studies/collapse.py</code> without <code>--no-defaults</code>, or with <code>--baseline "
           "results/methods</code> (a methods study on the same budget), to see what the ablation changed."
           if missing else "")]
    sections: list = [("kNN and collapse signal per ablation", collapse_figure(results),
                       "Green: the method's default run (the baseline); blue: an ablation; red: a run the lab flags "
                       "as collapsed. Dashes: the run's random encoder; dotted: chance."
                       + (" 'not run': the default run is missing." if missing else "")),
                      ("Runs", collapse_table(results), "")]
    dino = dino_entropy([*part_folders(study_dir), *baselines])
    if dino is not None:
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
