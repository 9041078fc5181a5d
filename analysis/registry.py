"""The report registry: which report draws which study folder.

Every folder a study writes holds a `study.json` naming its report (studies.runner writes it; a
folder of several studies, `studies.runner.write_parent`, names one for all of them), and every
run folder of `python -m lab.train` holds a `result.json`. Report modules (analysis/reports/)
register themselves here with the studies they draw; `python -m analysis.report DIR` and the
studies use the same lookup. A study without a report of its own gets the generic one: the score
against each of its swept knobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl


class ReportError(RuntimeError):
    """A folder that holds no study or run the lab wrote."""


@dataclass(frozen=True)
class Report:
    name: str
    write: Callable[[Path], Path]  # folder -> report.html
    summary: Callable[[Path], pl.DataFrame] | None = None  # folder -> the README's table
    studies: tuple[str, ...] = field(default_factory=tuple)  # study names it was written for (documentation)


REPORTS: dict[str, Report] = {}
GENERIC, RUN = "generic", "run"


def register(name: str, write: Callable[[Path], Path], summary: Callable[[Path], pl.DataFrame] | None = None,
             studies: tuple[str, ...] = ()) -> Report:
    if name in REPORTS:
        raise ValueError(f"report {name!r} is registered twice")
    REPORTS[name] = Report(name, write, summary, studies or (name,))
    return REPORTS[name]


def study_description(folder: Path) -> dict:
    path = Path(folder) / "study.json"
    return json.loads(path.read_text()) if path.exists() else {}


def report_for(folder: str | Path) -> Report:
    """The report of a study folder (its study.json's report, else its name, else the generic one), or of a
    single run's folder (result.json)."""
    folder = Path(folder)
    description = study_description(folder)
    if description:
        for name in (description.get("report"), description.get("name")):
            if name in REPORTS:
                return REPORTS[name]
        return REPORTS[GENERIC]
    if (folder / "result.json").exists():
        return REPORTS[RUN]
    if (folder / "results.parquet").exists():
        return REPORTS[GENERIC]
    raise ReportError(f"{folder}: neither a study (study.json) nor a run (result.json) of the lab. Fix: point at "
                      "the --out folder of a study or of `python -m lab.train`")
