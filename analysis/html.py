"""Offline HTML reports: plotly.js inlined once, no CDN; tables as HTML or GitHub markdown.

A report is a title, a few paragraphs, figures and tables. Uncaught JavaScript errors are written
into the page (#js-errors) so that a headless browser test can see them.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl

_ERROR_TRAP = """<script>
window.addEventListener('error', function (e) {
  var box = document.getElementById('js-errors');
  if (box) { box.textContent += 'JS error: ' + e.message + '\\n'; box.style.display = 'block'; }
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
.note { color: #555; font-size: 0.9em; }
#js-errors { display: none; color: #b00; white-space: pre; border: 1px solid #b00; padding: 0.5em; }
</style>"""


MISSING = "–"  # a value a row does not have (a score its method lacks, the spread of a single seed)


# Columns of measured values (scores, their means and spreads, times): printed to the table's digits. Any other
# float column is a knob's value and is printed as given (a temperature of 0.05 must not read 0.1).
MEASURED = ("_mean", "_std", "top1", "recall", "nmi", "acc", "ari", "loss", "wall", "ratio", "std", "range",
            "spread", "gain", "score", "share", "_s", "trained", "random", "reference", "kNN", "single")


def is_measured(column: str) -> bool:
    return any(word in column for word in MEASURED)


def cell_text(value, float_digits: int, measured: bool = True) -> str:
    """A table cell: a measured float to `float_digits`, a knob's float as given (6 significant digits), a
    missing value (None or NaN) as MISSING, never 'nan' / 'None'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{float_digits}f}" if measured else f"{value:.6g}"
    return str(value)


def table_html(frame: pl.DataFrame, float_digits: int = 2) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    measured = [is_measured(c) for c in frame.columns]
    for row in frame.iter_rows():
        cells = "".join(f"<td>{html.escape(cell_text(value, float_digits, m))}</td>"
                        for value, m in zip(row, measured))
        rows.append("<tr>" + cells + "</tr>")
    return (f"<div style='overflow-x:auto'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def render_report(path: str | Path, title: str, paragraphs: list[str],
                  sections: list[tuple[str, go.Figure | pl.DataFrame | str, str]]) -> Path:
    """Write an offline HTML report: each section is (heading, figure or table or HTML, caption)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             _STYLE, _ERROR_TRAP, "</head><body>", f"<h1>{html.escape(title)}</h1>",
             "<div id='js-errors'></div>"]
    parts += [f"<p>{p}</p>" for p in paragraphs]
    plotly_included = False
    sections = [*sections, *_placement_section(Path(path).parent)]
    for heading, content, caption in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, go.Figure):
            parts.append(pio.to_html(content, full_html=False, include_plotlyjs=not plotly_included,
                                     config={"displaylogo": False}))
            plotly_included = True
        elif isinstance(content, str):
            parts.append(content)  # HTML the caller built (image grids)
        else:
            parts.append(table_html(content))
        if caption:
            parts.append(f"<p class='note'>{caption}</p>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _placement_section(study_dir: Path) -> list[tuple[str, go.Figure, str]]:
    """Every study report's last section, for a study that ran on more than one node: when each trial ran on
    which node, and the node count over time (the trials' rows and studies.runner's nodes.jsonl)."""
    import json

    from analysis.figures import trial_timeline

    results_path = study_dir / "results.parquet"
    if not results_path.exists():
        return []
    results = pl.read_parquet(results_path)
    if "node" not in results.columns or results["node"].drop_nulls().n_unique() < 2:
        return []
    nodes_path = study_dir / "nodes.jsonl"
    nodes = [json.loads(line) for line in nodes_path.read_text().splitlines() if line] if nodes_path.exists() else []
    axes = json.loads((study_dir / "study.json").read_text()).get("axes", []) if (study_dir / "study.json").exists() \
        else []
    return [("Where the trials ran", trial_timeline(results.filter(pl.col("node").is_not_null()), nodes, axes),
             "Each bar is a trial, from its start to its row, on the node it ran on; below, the Ray nodes alive "
             "(the head included), sampled every 5 s by the study's driver.")]


def markdown_table(frame: pl.DataFrame, float_digits: int = 1) -> str:
    """A frame as a GitHub markdown table (for READMEs and notes written from stored results)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    measured = [is_measured(c) for c in frame.columns]
    lines += ["| " + " | ".join(cell_text(v, float_digits, m) for v, m in zip(row, measured)) + " |"
              for row in frame.iter_rows()]
    return "\n".join(lines)
