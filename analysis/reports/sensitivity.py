"""The sensitivity studies' reports: one knob's curve per series, beside what the paper reports.

Every study of a figure of METHODS.md section 10 that is a score against one knob (temperature, momentum,
the number of negatives, ...) is drawn the same way, from a `Sensitivity` entry below and its references
(analysis.references.SENSITIVITY_REFERENCES):

- the lab's kNN and linear top-1 against the knob, one curve per series (the method, the variant, the head,
  ...), the paper's ranges shaded and its chosen values marked on the lab's x-axis, its numbers in a panel of
  their own (another dataset, network and schedule: their level says nothing about the lab's);
- each curve as its drop from its own best, the lab's and the paper's on one axis: the shapes compared;
- the direction per series, computed from the stored runs: where the best and the worst points are, the range
  between them, and whether that range exceeds the seeds' spread.

A study of several parts (e.g. end-to-end beside the queue) is drawn from all its parts' folders.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go
import polars as pl

from analysis.figures import accuracy_vs_knob, drop_from_best, metric_title, spread_caption, training_curves
from analysis.html import render_report
from analysis.load import read_history, read_results, summarise
from analysis.references import SENSITIVITY_REFERENCES, References
from analysis.registry import register, study_description

SERIES = "series"  # the column a Sensitivity's series knobs are joined into


@dataclass(frozen=True)
class Sensitivity:
    name: str  # the study (and report) name
    title: str
    x: str  # the knob on the x-axis (a column of the results, or one that `derive` adds)
    series: tuple[str, ...] = ("method",)  # the knobs whose values make the curves
    x_type: str = "log"  # log / linear / category
    derive: Callable[[pl.DataFrame], pl.DataFrame] | None = None  # columns the figures need (e.g. negatives K)
    note: str = ""  # how to read this study's x (e.g. what K is for each variant)


def _negatives(results: pl.DataFrame) -> pl.DataFrame:
    """K, the negatives per query: the queue's or the bank's size; end-to-end, the rest of the batch (N - 1)."""
    return results.with_columns(pl.when(pl.col("moco_variant") == "end_to_end").then(pl.col("batch_size") - 1)
                                .otherwise(pl.col("moco_queue_size")).alias("negatives"))


def _head_output(results: pl.DataFrame) -> pl.DataFrame:
    """The head as a category (none / linear / mlp) and, for the 'none' head, no output width of its own."""
    return results.with_columns(pl.when(pl.col("head") == "none").then(None).otherwise(pl.col("head_out_dim"))
                                .alias("head_out_dim"))


def _lambda_over_mu(results: pl.DataFrame) -> pl.DataFrame:
    return results.with_columns((pl.col("vicreg_sim") / pl.col("vicreg_var")).alias("lambda_over_mu"))


def _warmup(results: pl.DataFrame) -> pl.DataFrame:
    return results.with_columns(pl.when(pl.col("dino_teacher_warmup_epochs") > 0)
                                .then(pl.format("warm-up from {} over {} epochs", "dino_teacher_temperature_start",
                                                "dino_teacher_warmup_epochs"))
                                .otherwise(pl.lit("fixed")).alias("teacher_schedule"))


STUDIES = {s.name: s for s in (
    Sensitivity("temperature", "Temperature: SimCLR, MoCo v2 and SupCon", "temperature"),
    Sensitivity("momentum", "Momentum of the key encoder (MoCo) and the target (BYOL)", "ema_momentum",
                x_type="linear", note="MoCo's m is constant; BYOL's tau_base rises to 1 on a cosine over the run."),
    Sensitivity("negatives", "Negatives: end-to-end vs memory bank vs MoCo's queue", "negatives", ("moco_variant",),
                derive=_negatives, note="K is the queue's keys or the memory bank's sampled features; end-to-end's "
                "negatives are the other N - 1 keys of the batch, so its K is bounded by the batch size."),
    Sensitivity("projection_head", "Projection head: none, linear, non-linear, and its output width",
                "head_out_dim", ("head",), derive=_head_output,
                note="The 'none' head has no width of its own (z is the backbone's output): it is drawn as a dashed "
                "level across the widths, and its width is '–' in the tables."),
    Sensitivity("swav_prototypes", "SwAV: prototypes K, with and without a queue, at two batch sizes",
                "swav_prototypes", ("swav_queue_size", "batch_size")),
    Sensitivity("dino_teacher_temperature", "DINO: the teacher temperature, fixed or warmed up",
                "dino_teacher_temperature", ("teacher_schedule",), x_type="linear", derive=_warmup),
    Sensitivity("barlow_lambda", "Barlow Twins: lambda against the projector's width", "barlow_lambda",
                ("head_hidden_dim",)),
    Sensitivity("vicreg_coefficients", "VICReg: invariance over variance (lambda / mu), covariance nu",
                "lambda_over_mu", ("vicreg_cov",), derive=_lambda_over_mu),
    Sensitivity("batch_robustness", "Batch-size robustness: BYOL vs SimCLR", "batch_size"),
    Sensitivity("batch_epochs", "SimCLR: batch size x epochs", "batch_size", ("epochs",)),
)}


def part_folders(study_dir: Path) -> list[Path]:
    """The study's folder, or its parts' folders (study.json's `parts`) when it has several."""
    if (study_dir / "results.parquet").exists():
        return [study_dir]
    parts = study_description(study_dir).get("parts") or []
    return [study_dir / p for p in parts if (study_dir / p / "results.parquet").exists()]


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if not f.is_empty()]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def sensitivity_frames(study_dir: str | Path) -> tuple[Sensitivity, pl.DataFrame, pl.DataFrame]:
    """The study's Sensitivity and its results and history (all parts), with the derived and series columns."""
    study_dir = Path(study_dir)
    name = study_description(study_dir).get("report") or study_description(study_dir).get("name") or study_dir.name
    spec = STUDIES[name]
    folders = part_folders(study_dir)
    results = _concat([read_results(f) for f in folders]) if folders else read_results(study_dir)
    history = _concat([read_history(f) for f in folders])
    if not history.is_empty():  # a part's history names only its own axes: the run's knobs from its row
        knobs = [c for c in results.columns if c not in history.columns]
        history = history.join(results.select(["trial_id", *knobs]), on="trial_id", how="left")

    def prepared(frame: pl.DataFrame) -> pl.DataFrame:
        if frame.is_empty():
            return frame
        if spec.derive is not None:
            frame = spec.derive(frame)
        labels = [pl.col(k).cast(pl.Utf8) if k in ("method", "moco_variant", "head", "teacher_schedule")
                  else pl.format(f"{k}={{}}", pl.col(k).cast(pl.Utf8)) for k in spec.series]
        return frame.with_columns(pl.concat_str(labels, separator=", ").alias(SERIES))

    return spec, prepared(results), prepared(history)


def direction(results: pl.DataFrame, spec: Sensitivity, metric: str = "knn_top1") -> pl.DataFrame:
    """Per series: the best and the worst value of the knob, their scores, the range between them and the
    seeds' spread, and a verdict that says no more than the runs do."""
    summary = summarise(results, [SERIES, spec.x], [metric])
    rows = []
    for series in summary[SERIES].unique(maintain_order=True).to_list():
        part = summary.filter(pl.col(SERIES) == series).drop_nulls(f"{metric}_mean")
        if part.is_empty():
            continue
        best, worst = part.sort(f"{metric}_mean", descending=True).row(0, named=True), \
            part.sort(f"{metric}_mean").row(0, named=True)
        spread = part[f"{metric}_std"].drop_nulls()
        noise = float(spread.max()) if len(spread) else None
        span = best[f"{metric}_mean"] - worst[f"{metric}_mean"]
        if len(part) < 2:
            verdict = "one value: no direction"
        elif noise is None:
            verdict = (f"best at {_text(best[spec.x])} by {span:.1f} points; one seed per point, so a gap under about "
                       "0.5 points (the lab's seed spread at this budget) is not a direction")
        elif span <= 2 * noise:
            verdict = f"flat: the range ({span:.1f}) is within twice the seeds' spread ({noise:.1f})"
        else:
            verdict = f"best at {_text(best[spec.x])}, {span:.1f} points above the worst (seed spread {noise:.1f})"
        rows.append({"series": series, "points": len(part), f"best {spec.x}": _text(best[spec.x]),
                     f"best {metric}": best[f"{metric}_mean"], f"worst {spec.x}": _text(worst[spec.x]),
                     f"worst {metric}": worst[f"{metric}_mean"], "range": span, "seed spread": noise,
                     "reading": verdict})
    return pl.DataFrame(rows)


def _text(value) -> str:
    return "–" if value is None else str(value)


def _with_references(fig: go.Figure, references: References, panels: int) -> go.Figure:
    """The paper's bands (shaded) and chosen values (dotted) on each of the lab's panels' x-axes."""
    for col in range(1, panels + 1):
        axis = "x" if col == 1 else f"x{col}"
        for band in references.bands:
            label = dict(annotation_text=f"reference: {band.label}", annotation_position="top left",
                         annotation_font_size=10) if col == 1 else {}
            fig.add_vrect(x0=band.low, x1=band.high, fillcolor="#999999", opacity=0.15, line_width=0, row=1, col=col,
                          **label)
        for i, mark in enumerate(references.marks):
            fig.add_shape(type="line", x0=mark.x, x1=mark.x, y0=0, y1=1, xref=axis, yref="paper",
                          line=dict(color="#555555", dash="dot", width=1))
            if col == 1:  # labels at the foot of the first panel, one above the other, clear of its title
                fig.add_annotation(x=mark.x, y=0.02 + 0.07 * i, xref=axis, yref="paper", showarrow=False,
                                   text=f"reference: {mark.label}", font=dict(size=10, color="#555555"),
                                   xanchor="left", yanchor="bottom", bgcolor="rgba(255,255,255,0.7)")
    return fig


def _log_x(fig: go.Figure, spec: Sensitivity) -> None:
    """plotly.js places shapes on a log axis in data units but annotations at log10 positions."""
    if spec.x_type != "log":
        return
    import math

    for note in fig.layout.annotations:
        if note.xref not in (None, "paper") and not str(note.xref).endswith("domain") and note.x is not None:
            note.x = math.log10(note.x)


def write_sensitivity_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    spec, results, history = sensitivity_frames(study_dir)
    references = SENSITIVITY_REFERENCES[spec.name]
    ok = results.filter(pl.col("status") == "ok")
    others = results.filter(pl.col("status") != "ok")
    first = results.row(0, named=True)
    runs = summarise(ok, [SERIES, spec.x], [])["runs"].to_list()
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {html.escape(_values(results, 'epochs'))} epochs, batch "
        f"{html.escape(_values(results, 'batch_size'))}), {len(ok)} finished runs"
        + (f", {len(others)} not finished" if len(others) else "") + ". Scores are top-1 on the held-out test split "
        "of frozen features (weighted kNN and a linear probe); dashed lines are the same protocol on each run's "
        "randomly initialised encoder. " + html.escape(spec.note),
        "<b>What the paper reports</b> (reference, ImageNet linear top-1 unless said; another dataset, network "
        f"and schedule): {html.escape(references.claim)}",
    ]
    x_type = "category" if spec.x_type == "category" else spec.x_type
    curves = accuracy_vs_knob(ok, spec.x, references.curves, x_type=x_type, title=spec.title, series=SERIES) \
        if spec.name != "projection_head" else _head_figure(ok, spec, references)
    if spec.name != "projection_head":
        _with_references(curves, references, 2)
        _log_x(curves, spec)
    sections = [
        (spec.title, curves, spread_caption(runs)
         + (" Shaded: the range the paper reports as working or flat." if references.bands else "")
         + (" Dotted verticals: the values the papers chose." if references.marks else "")),
        ("Shape: drop from each curve's best", _drop_figure(ok, spec, references),
         "Points below each curve's own best, lab (kNN top-1) and references on one axis: the shapes compared where "
         "the levels cannot be."),
        ("Direction, from the stored runs (kNN top-1)", direction(ok, spec), "Computed from the runs above; the "
         "README's sentence on this study is written from this table."),
        ("Direction, from the stored runs (linear top-1)", direction(ok, spec, "linear_top1"), ""),
        ("Training curves", training_curves(history, [*spec.series, spec.x]), "Collapse shows as embedding std near "
         "0."),
        ("Summary over seeds", sensitivity_summary(study_dir), ""),
    ]
    description = study_description(study_dir)
    if description.get("not_run"):
        sections.append(("Cells not run", pl.DataFrame(description["not_run"]),
                         html.escape(description.get("not_run_reason", ""))))
    if len(others):
        sections.append(("Runs that did not finish", others.select(
            [c for c in (*spec.series, spec.x, "seed", "status") if c in others.columns]), ""))
    return render_report(study_dir / "report.html", spec.title, paragraphs, sections)


def _values(results: pl.DataFrame, column: str) -> str:
    return ", ".join(str(v) for v in sorted(results[column].drop_nulls().unique().to_list()))


def _drop_figure(ok: pl.DataFrame, spec: Sensitivity, references: References) -> go.Figure:
    if spec.name == "projection_head":
        return _head_drop_figure(ok, references)
    return drop_from_best(ok, spec.x, references.curves, series=SERIES, x_type=spec.x_type)


def _head_figure(ok: pl.DataFrame, spec: Sensitivity, references: References) -> go.Figure:
    """Accuracy vs the head's output width per head, the 'none' head (no width) as a level across the axis."""
    from plotly.subplots import make_subplots

    from analysis.figures import add_with_spread, point_hover, runs_note, series_colours, spreads

    metrics = ("knn_top1", "linear_top1")
    summary = summarise(ok, [SERIES, spec.x], list(metrics))
    widths = sorted(w for w in summary[spec.x].drop_nulls().unique().to_list())
    colours = series_colours(summary[SERIES].to_list())
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"lab: {metric_title(m)}, test split" for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        for head in summary[SERIES].unique(maintain_order=True).to_list():
            part = summary.filter(pl.col(SERIES) == head)
            means, std, runs = part[f"{metric}_mean"].to_list(), part[f"{metric}_std"].to_list(), \
                part["runs"].to_list()
            x = part[spec.x].to_list()
            if all(v is None for v in x):  # no head: one level across every width
                x, means, std = widths, means * len(widths), std * len(widths)
                runs = runs * len(widths)
            add_with_spread(fig, go.Scatter(
                x=x, y=means, mode="lines+markers", name=f"{head} (lab, {runs_note(runs)})", legendgroup=head,
                showlegend=col == 1, line=dict(color=colours[head], dash="dash" if head == "none" else "solid"),
                text=point_hover(means, std, runs),
                hovertemplate=f"{head}<br>width=%{{x}}<br>{metric}: %{{text}}<extra></extra>"),
                spreads(std, runs), row=1, col=col)
        random = ok[f"random_{metric}"].drop_nulls().mean() if f"random_{metric}" in ok.columns else None
        if random is not None and widths:
            fig.add_trace(go.Scatter(x=[widths[0], widths[-1]], y=[random, random], mode="lines",
                                     line=dict(color="#999999", dash="dot", width=1), legendgroup="random",
                                     name="random encoder (same protocol)", showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="head output width (none: the backbone's output)", type="log", row=1, col=col)
        fig.update_yaxes(title_text=f"lab: {metric_title(metric)}", row=1, col=col)
    fig.update_layout(title=spec.title, height=480, legend=dict(orientation="h", y=-0.25))
    return fig


def _head_drop_figure(ok: pl.DataFrame, references: References) -> go.Figure:
    """Each head's best over widths, as points below the best head: the lab's and SimCLR Fig. 8's."""
    order = ["none", "linear", "mlp"]
    fig = go.Figure()
    for metric in ("knn_top1", "linear_top1"):
        per_head = summarise(ok, [SERIES, "head_out_dim"], [metric]).group_by(SERIES).agg(
            pl.col(f"{metric}_mean").max())
        best = per_head[f"{metric}_mean"].max()  # the best head at its best width: 0 on this axis
        values = {r[SERIES]: r[f"{metric}_mean"] - best for r in per_head.iter_rows(named=True)}
        heads = [h for h in order if h in values]
        fig.add_trace(go.Bar(x=heads, y=[values[h] for h in heads], name=f"lab, {metric_title(metric)} "
                             "(each head at its best width)"))
    for ref in references.curves:
        fig.add_trace(go.Bar(x=["none", "linear", "mlp"], y=list(ref.y), name=f"reference: {ref.label}",
                             marker_pattern_shape="/", marker_color="#bbbbbb"))
    fig.update_layout(barmode="group", title="Each head below the best head (points)", height=420,
                      yaxis_title="points below the best head", legend=dict(orientation="h", y=-0.25))
    return fig


def sensitivity_summary(study_dir: str | Path) -> pl.DataFrame:
    spec, results, _ = sensitivity_frames(study_dir)
    by = list(dict.fromkeys([*spec.series, spec.x]))
    table = summarise(results, by, ["knn_top1", "random_knn_top1", "linear_top1", "random_linear_top1", "wall_s"])
    if table.is_empty() or table["runs"].max() <= 1:  # one seed per point: spread columns would be all '–'
        table = table.drop([c for c in table.columns if c.endswith("_std")])
    return table


for _name in STUDIES:
    register(_name, write_sensitivity_report, sensitivity_summary)
