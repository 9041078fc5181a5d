"""(Re)draw the report of any folder a study or a run wrote, or print its README table.

    python -m analysis.report results/batch_size              # writes results/batch_size/report.html
    python -m analysis.report results/batch_size --markdown   # the summary table, as in README.md

The report is chosen by analysis.registry from the folder's study.json (or result.json for a single
run); a study the lab has no report for gets the generic one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

import analysis.reports  # noqa: F401  (registers every report)
from analysis.html import markdown_table
from analysis.load import ResultsError
from analysis.registry import ReportError, report_for


def write_report(folder: str | Path) -> Path:
    """The folder's report.html, drawn by its registered report."""
    return report_for(folder).write(Path(folder))


def summary(folder: str | Path) -> pl.DataFrame:
    report = report_for(folder)
    if report.summary is None:
        raise ReportError(f"{folder}: its report ({report.name}) has no summary table")
    return report.summary(Path(folder))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] != "--markdown"):
        print("usage: python -m analysis.report FOLDER [--markdown]", file=sys.stderr)
        sys.exit(2)
    try:
        print(markdown_table(summary(argv[0])) if argv[1:] == ["--markdown"] else write_report(argv[0]))
    except (ReportError, ResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
