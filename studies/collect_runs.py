"""Collect single runs (`python -m lab.train --out DIR ...` folders) into a study folder in the
results schema, so that the reports and tables read them like a study's trials.

    python studies/collect_runs.py --name methods --out results/methods_single_runs RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from lab.results import history_rows, result_row, results_frame


def collect(run_dirs: list[Path], out: Path, name: str) -> Path:
    rows, histories = [], []
    for folder in run_dirs:
        path = folder / "result.json"
        if not path.exists():
            raise SystemExit(f"{path}: no result.json (is the run finished?)")
        result = json.loads(path.read_text())
        row = result_row(result, trial_id=folder.name)
        rows.append(row)
        histories += history_rows(row, result.get("history") or [])
    out.mkdir(parents=True, exist_ok=True)
    results_frame(rows).write_parquet(out / "results.parquet")
    pl.DataFrame(histories, infer_schema_length=None).write_parquet(out / "history.parquet")
    (out / "study.json").write_text(json.dumps({"name": name, "report": name, "axes": ["method"],
                                                "collected_from": [str(d) for d in run_dirs]}, indent=1))
    return out / "results.parquet"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the study whose report reads them (e.g. methods)")
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    print(collect([Path(r) for r in args.runs], Path(args.out), args.name))


if __name__ == "__main__":
    sys.exit(main())
