"""The command line of one run: `python -m lab.train --out DIR [--knob value ...]`.

Every option is generated from the knob declarations (lab.knobs, gathered by lab.config): its help
is the knob's meaning, what it accepts and its default (per method where methods differ), grouped
as the declarations are (the run, backbone, head, views, evaluation, knobs shared by several
methods, then each method's own).

Exit status: 0 the run finished; 2 a config or data error (one line on stderr, nothing trained);
3 the run diverged (its result.json holds the row, `status` says where the loss became NaN or
infinite); 1 anything else (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lab.config import RunConfig, grouped_knobs, knob_table, method_defaults_text
from lab.errors import ConfigError, LabError
from lab.jsonio import dumps
from lab.knobs import Knob
from lab.lockfile import FolderLock, check_out_folder

EXIT_DIVERGED = 3

_METAVARS = {int: "N", float: "X", bool: "{true,false}", str: "TEXT", tuple: "N,N,..."}


def _help(knob: Knob) -> str:
    text = f"{knob.help}; {knob.describe()}"
    defaults = method_defaults_text(knob)
    if defaults:
        text += f" (default: {defaults})"
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.train",
        description="Train one run of the lab and score it beside its random encoder. Started again with the "
                    "same --out, it resumes from the last finished epoch.")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt, metrics.jsonl and result.json")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    for group, knobs in grouped_knobs().items():
        title = group if group in ("run", "backbone", "head", "views", "evaluation", "shared by several methods") \
            else f"method {group}"
        section = parser.add_argument_group(title)
        for knob in knobs:
            allowed = knob.allowed()
            metavar = "{" + ",".join(map(str, allowed)) + "}" if allowed and len(allowed) <= 8 else _METAVARS[knob.kind]
            section.add_argument(f"--{knob.name}", metavar=metavar, default=None, help=_help(knob))
    return parser


def config_from_cli(argv: list[str]) -> tuple[RunConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    table = knob_table().knobs
    values: dict[str, Any] = {}
    for name, knob in table.items():
        text = getattr(args, name)
        if text is not None:
            try:
                values[name] = knob.parse(text)
            except ConfigError as exc:
                raise ConfigError(f"command line: {exc}") from None
    return RunConfig.from_dict(values, where="command line"), args


def run(argv: list[str]) -> dict[str, Any]:
    cfg, args = config_from_cli(argv)
    out = check_out_folder(args.out)
    with FolderLock(out, what="run"):
        if cfg.workers > 1:
            from lab.ray_train import train_distributed

            result = train_distributed(cfg, storage=str(out), download=args.download)
        else:
            from lab.checkpoint import LocalStore
            from lab.train import train

            result = train(cfg, LocalStore(out), download=args.download, progress=not args.quiet)
        tmp = out / "result.json.tmp"
        tmp.write_text(dumps(result, indent=1))
        os.replace(tmp, out / "result.json")
    print(dumps({k: v for k, v in result.items() if k in (
        "method", "batch_size", "knn_top1", "linear_top1", "random_knn_top1", "random_linear_top1",
        "wall_s", "status")}))
    return result


def main(argv: list[str] | None = None) -> None:
    try:
        result = run(sys.argv[1:] if argv is None else argv)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if result.get("diverged"):
        print(f"[lab] {result['status']}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
