"""Reports of document 000's studies: the PNDA table and the RAIS lambda / margin sweep."""

from __future__ import annotations

import base64
import html
import struct
import zlib
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from analysis.figures import (RANDOM_COLOR, TITLE_FONT, add_with_spread, data_range, point_hover, runs_note,
                              series_colours, spread_caption, spreads)
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
    """Lab: linear top-1 per setting (mean over seeds, error bars where n >= 2) with each setting's random
    encoder (a bar beside it, so that a random encoder above the trained one shows as the taller bar);
    reference: the paper's two tables, each in its own panel on its own axis."""
    table = pnda_table(results)
    titles = ["this lab: linear top-1 (%), test split"] + [f"reference: {name}" for name in PNDA_REFERENCES]
    fig = make_subplots(rows=1, cols=1 + len(PNDA_REFERENCES), subplot_titles=titles, horizontal_spacing=0.07)
    labels, runs = table["setting"].to_list(), table["runs"].to_list()
    means, std = table["linear_top1_mean"].to_list(), table["linear_top1_std"].to_list()
    random = table["random_linear_top1_mean"].to_list()
    ratios = [("–" if r is None else f"{r:.1f} %") for r in table["rai_positive_ratio_mean"].to_list()]
    spread = spreads(std, runs)
    hover = [f"{h}<br>positive ratio {r}" for h, r in zip(point_hover(means, std, runs), ratios)]
    add_with_spread(fig, go.Bar(x=labels, y=means, name=f"lab, trained encoder ({runs_note(runs)})",
                                marker_color="#1f77b4", legendgroup="trained", offsetgroup="trained", text=hover,
                                textposition="none", hovertemplate="%{x}: %{text}<extra></extra>"), spread, 1, 1)
    fig.add_trace(go.Bar(x=labels, y=random, name="lab, random encoder (same protocol)", marker_color=RANDOM_COLOR,
                         offsetgroup="random", hovertemplate="%{x}: random encoder %{y:.2f}<extra></extra>"), 1, 1)
    # every bar top and error bar inside the axis, the random encoder's included: the case where it beats the
    # trained encoder is the one a reader must not miss
    fig.update_yaxes(range=data_range(means + random, spread + [None] * len(random)), row=1, col=1,
                     title_text="lab: linear top-1 (%)")
    for col, (name, ref) in enumerate(PNDA_REFERENCES.items(), start=2):
        values, errors = [ref[m][0] for m in MODE_ORDER], [ref[m][1] for m in MODE_ORDER]
        fig.add_trace(go.Bar(x=[PNDA_MODE_LABELS[m] for m in MODE_ORDER], y=values,
                             error_y=dict(type="data", array=errors),
                             name=f"reference: {name} ({ref['positive_ratio']} % positives)",
                             marker_color=RANDOM_COLOR, marker_pattern_shape="/"), 1, col)
        fig.update_yaxes(range=data_range(values, errors, 3.0, 1.5), row=1, col=col,
                         title_text="reference: linear top-1 (%)" if col == 2 else None)
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(height=460, barmode="group", title="MoCo v2 / +PDA / +NDA / +PNDA",
                      legend=dict(orientation="h", y=-0.15))
    return fig


def random_beats_trained(results: pl.DataFrame) -> list[str]:
    """The settings whose random encoder scores at least the trained one's linear top-1 (mean over seeds)."""
    table = pnda_table(results).filter(pl.col("random_linear_top1_mean") >= pl.col("linear_top1_mean"))
    return table["setting"].to_list()


SELECTION = {"pda": "+PDA makes every image's rotation a positive", "nda": "+NDA makes every image's rotation a "
             "negative"}  # why a mode's share is 100 % / 0 % by construction (no RAIS selection)


GRID_ROWS, PER_ROW, PADDING = 4, 16, 2  # lab.methods.pnda.sample_grid_png: 2 rows of RAI over 2 rows of the others


def _png_pixels(data: str) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the unfiltered scanlines of a base64 8-bit non-interlaced PNG (what PIL
    writes for the lab's grids), with the standard library only: analysis does not depend on an image library."""
    raw = base64.b64decode(data)
    pos, idat, width, height, channels = 8, b"", 0, 0, 1
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, _, colour = struct.unpack(">IIBB", body[:10])
            channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    stream, stride, bpp = zlib.decompress(idat), width * channels, channels
    lines, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = stream[y * (stride + 1)], bytearray(stream[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            a, b = (line[i - bpp] if i >= bpp else 0), prev[i]
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            else:  # Paeth
                c = prev[i - bpp] if i >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        lines.append(bytes(line))
        prev = line
    return width, height, channels, lines


def grid_rows_with_images(data: str) -> list[bool]:
    """Which of the grid's 4 rows hold at least one image: sample_grid_png pads a half with black cells when
    fewer than 32 images exist, and only its cells' interiors (not the white padding) are looked at."""
    width, height, channels, lines = _png_pixels(data)
    cell = (height - PADDING) // GRID_ROWS - PADDING
    columns = [x * channels + k for c in range(PER_ROW) for x in range(PADDING + c * (cell + PADDING),
                                                                       PADDING + c * (cell + PADDING) + cell)
               for k in range(channels)]
    rows = []
    for r in range(GRID_ROWS):
        top = PADDING + r * (cell + PADDING)
        rows.append(any(lines[y][i] for y in range(top, top + cell) for i in columns))
    return rows


def _grid_crop(data: str, first: int, count: int) -> str:
    """Rows first .. first + count - 1 of the grid, cropped in CSS (the stored PNG is shown unchanged)."""
    width, height = struct.unpack(">II", base64.b64decode(data[:32])[16:24])  # IHDR, right after the signature
    step = (height - PADDING) // GRID_ROWS
    return (f"<div style='width:{width}px;height:{count * step + PADDING}px;overflow:hidden'><img alt='samples' "
            f"style='display:block;margin-top:-{first * step}px' src='data:image/png;base64,{data}'></div>")


def _grid_figure(row: dict, caption: str) -> str:
    """One setting's samples: only the grid rows that hold images, each half captioned, and in words when a half
    is empty (0 % RAI: nothing selected; 100 %: nothing left over) instead of rows of black cells."""
    ratio, mode, data = row.get("rai_positive_ratio"), row.get("pnda_mode"), row["rai_samples_png"]
    filled = grid_rows_with_images(data)
    rai, others = sum(filled[:2]), sum(filled[2:])
    share = "" if ratio is None or ratio != ratio else f", {ratio:.1f} %"
    why = f" ({SELECTION[mode]})" if mode in SELECTION else ""
    if rai:
        body = (f"<figcaption>rotation-agnostic (RAI: the rotated key a positive){share}:</figcaption>"
                + _grid_crop(data, 0, rai))
    else:
        body = f"<figcaption><b>No image selected as rotation-agnostic (0 % RAI){why}.</b></figcaption>"
    if others:
        body += (f"<figcaption>the others{'' if not share else f', {100 - ratio:.1f} %'}:</figcaption>"
                 + _grid_crop(data, 2, others))
    else:
        body += f"<figcaption><b>Every image selected as rotation-agnostic (100 % RAI){why}: none left over.</b>" \
                "</figcaption>"
    return (f"<figure style='display:inline-block;vertical-align:top;margin:0.5em 1.5em 0.5em 0'>"
            f"<figcaption><b>{html.escape(caption)}</b></figcaption>{body}</figure>")


def rai_grid_html(results: pl.DataFrame, by: list[str]) -> str:
    """The RAI / non-RAI image grids stored with the runs (first seed of each setting, settings in MODE_ORDER)."""
    rank = {m: i for i, m in enumerate(MODE_ORDER)}
    rows = (results.filter(pl.col("rai_samples_png").is_not_null() & (pl.col("status") == "ok"))
            .with_columns(pl.col("pnda_mode").replace_strict(rank, default=99).alias("_rank"))
            .sort(["_rank", *by, "seed"]))
    parts, seen = [], set()
    for row in rows.iter_rows(named=True):
        key = tuple(row[k] for k in by)
        if key in seen:
            continue
        seen.add(key)
        parts.append(_grid_figure(row, ", ".join(f"{k} = {row[k]}" for k in by)))
    return "".join(parts) or "<p>No run stored RAI samples (RAIS runs only with pnda_mode = pnda).</p>"


def positive_share(history: pl.DataFrame, results: pl.DataFrame) -> pl.DataFrame:
    """Per mode, seed and epoch: the share of the batch whose rotated key is a positive (%). The mode comes from
    the history (the study's axes) or, for folders written before it held them, from the run's row."""
    if "pnda_mode" not in history.columns:
        history = history.join(results.select(["trial_id", "pnda_mode"]), on="trial_id", how="left")
    rank = {m: i for i, m in enumerate(MODE_ORDER)}
    return (history.with_columns((100 * pl.col("rotation_positive_in_batch")).alias("rotation positives in batch (%)"),
                                 pl.col("pnda_mode").replace_strict(PNDA_MODE_LABELS, default=None).alias("setting"),
                                 pl.col("pnda_mode").replace_strict(rank, default=99).alias("_rank"))
            .filter(pl.col("rotation_positive_in_batch").is_not_null())  # MoCo v2 alone has no rotated positives
            .sort(["_rank", "seed", "epoch"])
            .select(["setting", "pnda_mode", "seed", "epoch", "rotation positives in batch (%)"]))


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
    beaten = random_beats_trained(results)
    sections = [
        ("Linear accuracy per setting", pnda_bars(results),
         spread_caption(pnda_table(results)["runs"].to_list()) + " The lab's axis spans every bar, the random "
         "encoder's included; it does not start at 0."
         + (f" <b>The random encoder scores at least the trained one for: {html.escape(', '.join(beaten))}.</b>"
            if beaten else "")),
        ("Rotation-agnostic images found by RAIS", rai_grid_html(results, ["pnda_mode"]), ""),
        ("Summary over seeds", pnda_table(results), ""),
    ]
    history = read_history(study_dir)
    if len(history) and "rotation_positive_in_batch" in history.columns:
        sections.append(("Positive share per batch during training", positive_share(history, results),
                         "The share of each batch whose rotated key counts as a positive, mean over the epoch."))
    return render_report(study_dir / "report.html", "PNDA: MoCo v2 / +PDA / +NDA / +PNDA", paragraphs, sections)


def rais_summary(results: pl.DataFrame) -> pl.DataFrame:
    return summarise(results, ["rais_margin", "rais_lambda"], ["rai_positive_ratio", "linear_top1", "knn_top1",
                                                               "wall_s"])


def rais_figure(results: pl.DataFrame) -> go.Figure:
    """Per margin m, against lambda: the share of training images RAIS marks rotation-agnostic (beside the
    document's shares) and the PNDA encoder's linear top-1; one colour per margin in both panels."""
    summary = rais_summary(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["share of training images marked RAI (%)",
                                                        "PNDA linear top-1 (%), test split"])
    margins = summary["rais_margin"].unique().sort().to_list()
    colours = series_colours(margins)  # one colour per margin in both panels
    for margin in margins:
        part = summary.filter(pl.col("rais_margin") == margin).sort("rais_lambda")
        for col, metric in ((1, "rai_positive_ratio"), (2, "linear_top1")):
            runs, std = part["runs"].to_list(), part[f"{metric}_std"].to_list()
            add_with_spread(fig, go.Scatter(x=part["rais_lambda"].to_list(), y=part[f"{metric}_mean"].to_list(),
                                            mode="lines+markers", name=f"m = {margin} ({runs_note(runs)})",
                                            legendgroup=str(margin), line=dict(color=colours[margin]),
                                            showlegend=col == 1), spreads(std, runs), 1, col)
    for ref_name, ref in PNDA_REFERENCES.items():
        fig.add_hline(y=ref["positive_ratio"], line_dash="dot", line_color="#999", row=1, col=1,
                      annotation_text=f"reference: {ref_name} ({ref['positive_ratio']} %)")
    fig.update_xaxes(type="log", title="lambda")
    fig.update_annotations(font_size=TITLE_FONT)
    fig.update_layout(height=420, title="RAIS: lambda and margin m")
    return fig


def write_rais_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    paragraphs = [_intro(results),
                  "RAIS marks an image rotation-agnostic when the mean entropy of its four rotations' predictions "
                  "exceeds rho + m (rho = log(4) / 2). Dotted lines: the document's positive ratios (reference)."]
    sections = [("Positive ratio and accuracy vs lambda, per margin", rais_figure(results),
                 spread_caption(rais_summary(results)["runs"].to_list())),
                ("RAI samples per setting", rai_grid_html(results, ["rais_margin", "rais_lambda"]), ""),
                ("Summary", rais_summary(results), "")]
    return render_report(study_dir / "report.html", "RAIS: lambda and margin", paragraphs, sections)


register("pnda_table", write_pnda_table_report, lambda folder: pnda_table(read_results(folder)))
register("rais_lambda_margin", write_rais_report, lambda folder: rais_summary(read_results(folder)))
