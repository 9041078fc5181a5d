"""Interactive HTML reports that work offline: plotly.js is inlined once, no CDN.

A report is a title, a few paragraphs, figures and tables. Uncaught JavaScript errors are
written into the page (#js-errors) so that a headless browser test can see them.

    python -m analysis.report results/batch_size      # (re)draw a study's report
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl

from analysis.figures import accuracy_vs_knob, drop_from_best, methods_bars, training_curves
from analysis.load import read_history, read_results, summarise
from analysis.references import BATCH_SIZE_REFERENCES

_ERROR_TRAP = """<script>
window.addEventListener('error', function (e) {
  var box = document.getElementById('js-errors');
  if (box) { box.textContent += 'JS error: ' + e.message + '\\n'; box.style.display = 'block'; }
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
.note { color: #555; font-size: 0.9em; }
#js-errors { display: none; color: #b00; white-space: pre; border: 1px solid #b00; padding: 0.5em; }
</style>"""


def table_html(frame: pl.DataFrame, float_digits: int = 2) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.iter_rows():
        cells = []
        for value in row:
            text = f"{value:.{float_digits}f}" if isinstance(value, float) else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
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
        "Reference curves (dotted, right axis) are the papers' ImageNet ResNet-50 linear top-1, "
        "labelled as reference: they show the published shape, not a target for these numbers.",
    ]
    sections: list[tuple[str, go.Figure | pl.DataFrame, str]] = [
        ("Accuracy vs batch size", accuracy_vs_knob(ok, "batch_size", BATCH_SIZE_REFERENCES,
                                                    title="SimCLR vs SimSiam: accuracy vs batch size"),
         "Error bars: standard deviation over seeds. Learning rate: "
         + ("lr = base_lr x B / 256 (linear scaling rule)" if first["lr_scaling"] == "linear"
            else "lr = base_lr x sqrt(B / 256) (square-root scaling, SimCLR Appendix B.1)")
         + f", {first['optimizer']}, base_lr {first['base_lr']}."),
        ("Robustness: drop from each curve's best batch size",
         drop_from_best(ok, "batch_size", BATCH_SIZE_REFERENCES), ""),
        ("Training curves", training_curves(history), "Collapse shows as embedding std near 0."),
        ("Summary over seeds", table, ""),
    ]
    if len(failed):
        sections.append(("Runs that did not finish", failed.select(
            ["method", "batch_size", "seed", "status"]), ""))
    return render_report(study_dir / "report.html", "Batch-size study: SimCLR vs SimSiam", paragraphs, sections)


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


def write_methods_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    results = read_results(study_dir)
    ok = results.filter(pl.col("status") == "ok")
    first = results.row(0, named=True)
    paragraphs = [
        f"Dataset <b>{html.escape(str(first['dataset']))}</b>, scale <b>{html.escape(str(first['scale']))}</b> "
        f"(backbone {html.escape(str(first['backbone']))}, {first['epochs']} epochs, batch {first['batch_size']}), "
        f"{len(ok)} finished runs of {len(results)}. Grey: the same protocol on each run's randomly initialised "
        "encoder. SupCon uses the labels (supervised contrastive); the others do not.",
    ]
    sections: list[tuple[str, go.Figure | pl.DataFrame, str]] = [
        ("Accuracy per method", methods_bars(ok), ""),
        ("Training curves", training_curves(read_history(study_dir), group="method"),
         "Collapse shows as embedding std near 0."),
        ("Summary over seeds", methods_summary(study_dir), ""),
    ]
    return render_report(study_dir / "report.html", "Every method on the same budget", paragraphs, sections)


def markdown_table(frame: pl.DataFrame, float_digits: int = 1) -> str:
    """A frame as a GitHub markdown table (for READMEs and notes written from stored results)."""
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"  # a score the row's method does not have (e.g. clustering NMI of a non-clustering method)
        return f"{value:.{float_digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def batch_size_summary(study_dir: str | Path) -> pl.DataFrame:
    return summarise(read_results(study_dir), ["method", "batch_size"],
                     ["knn_top1", "random_knn_top1", "linear_top1", "random_linear_top1", "wall_s"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] != "--markdown"):
        raise SystemExit("usage: python -m analysis.report STUDY_DIR [--markdown]")
    study = json.loads((Path(argv[0]) / "study.json").read_text()).get("name", "batch_size")
    summary, write = _reports()[study]
    print(markdown_table(summary(argv[0])) if argv[1:] == ["--markdown"] else write(argv[0]))


def _reports() -> dict:
    """study name -> (summary table function, report writer)."""
    from analysis import ba2m_report, metric_report, pnda_report

    return {
        "batch_size": (batch_size_summary, write_batch_size_report),
        "methods": (methods_summary, write_methods_report),
        "pnda_table": (lambda d: pnda_report.pnda_table(read_results(d)), pnda_report.write_pnda_table_report),
        "rais_lambda_margin": (lambda d: pnda_report.rais_summary(read_results(d)), pnda_report.write_rais_report),
        "vat_epsilon": (lambda d: metric_report.vat_summary(read_results(d)), metric_report.write_vat_report),
        "ba2m": (ba2m_report.ba2m_summary, ba2m_report.write_ba2m_report),
    }


if __name__ == "__main__":
    main()
