"""Any sweep without code: fixed knobs, grid axes and searched axes from the command line or a YAML file,
run by the same runner as every study (Ray Tune + Optuna, the results schema, resume, extension, the
folder lock) and drawn by the sweep report (the score against each knob, parallel coordinates, Optuna's
parameter importances).

    python -m studies.sweep --method moco --grid moco_queue_size=1024,4096,16384 \\
        --search temperature=loguniform:0.03:1 --samples 12 --seeds 2 --scheduler asha --scale cpu \\
        --out results/my_sweep
    python -m studies.sweep --config my_sweep.yaml [--samples 20 ...]   (flags override the file)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, LabError
from studies.runner import SCHEDULERS, Part, Plan, fixed_from, study_arguments, study_main

NAME = "sweep"
SEARCH_KINDS = {  # the --search syntax: kind -> (what it samples, the Tune domain)
    "loguniform": "loguniform:LOW:HIGH  a float, log-uniform in [LOW, HIGH]",
    "uniform": "uniform:LOW:HIGH  a float, uniform in [LOW, HIGH]",
    "int": "int:LOW:HIGH  an integer, uniform in LOW .. HIGH (both included)",
    "logint": "logint:LOW:HIGH  an integer, log-uniform in LOW .. HIGH (both included)",
    "choice": "choice:A,B,C  one of the values",
}
YAML_KEYS = {"method", "name", "scale", "out", "storage", "dataset", "data_root", "seeds", "samples", "scheduler",
             "grace_epochs", "max_concurrent", "workers", "threads", "precision", "set", "grid", "search",
             "search_seed"}
EPILOG = f"""\
--set, --grid and --search take a knob of `python -m lab.train --help` (its name as written there):
  --set KNOB=VALUE          held fixed (repeat for more knobs)
  --grid KNOB=A,B,C         every value run (a tuple knob's values separated by ';': pcl_clusters=25,50;100,200)
  --search KNOB=SPEC        sampled by Optuna's TPE, SPEC one of
{chr(10).join('                              ' + text for text in SEARCH_KINDS.values())}
Seeds are a grid axis (--seeds N: seeds 0 .. N-1) under every searched point; Optuna learns each point's
mean score over its cells. The score is the monitor kNN top-1 after each epoch (what a scheduler compares)
and the test kNN top-1 at the end; with --search or a scheduler the monitor scores validation images held
out of training (validation_images=1000 unless --set says otherwise), so that nothing selects on the test
split.

A YAML file (--config) holds the same: e.g.
  method: moco
  scale: cpu
  set: {{epochs: 20}}
  grid: {{moco_queue_size: [1024, 4096, 16384]}}
  search: {{temperature: "loguniform:0.03:1"}}
  samples: 12
  seeds: 2
  scheduler: asha
Keys: {', '.join(sorted(YAML_KEYS))}; flags on the command line override the file's.

Started again with the same command, the sweep resumes; with more seeds, new grid values or more samples
after it finished, it extends the study in the same folder, running only the trials it lacks.
`optuna-dashboard <out>/optuna.journal` shows the Optuna study live and afterwards."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(seeds=1)
    for action in parser._actions:
        if action.dest == "seeds":
            action.help = "seeds under every point, >= 1 (seeds 0 .. N-1)"
    parser.add_argument("--config", help="a YAML file with the sweep (flags override it)")
    parser.add_argument("--method", help="the method (lab.train's --method); or sweep it with --grid method=a,b")
    parser.add_argument("--name", default=NAME, help="the study's name (the Optuna study's too)")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="a fixed knob")
    parser.add_argument("--grid", action="append", default=[], metavar="KNOB=A,B,...", help="a grid axis")
    parser.add_argument("--search", action="append", default=[], metavar="KNOB=SPEC", help="a searched axis")
    parser.add_argument("--samples", type=int, default=None, help="searched points (None: 10 with --search)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                        help="early stopping on the per-epoch monitor score")
    parser.add_argument("--grace-epochs", type=int, default=None,
                        help="epochs before a scheduler may stop a trial (None: a quarter of the epochs)")
    parser.add_argument("--max-concurrent", type=int, default=4,
                        help="trials at once in a search, or in a study of --set workers=N > 1 trials")
    parser.add_argument("--search-seed", type=int, default=0, help="the TPE sampler's seed")


def _knob(name: str, where: str):
    from lab.config import knob_table

    knobs = knob_table().knobs
    if name not in knobs:
        close = [k for k in knobs if name.replace("-", "_") == k or name in k][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{where}: unknown knob {name!r}{hint}; `python -m lab.train --help` lists the knobs")
    return knobs[name]


def _split(item: str, where: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"{where} {item!r}: write KNOB=VALUE")
    name, value = item.split("=", 1)
    return name.strip(), value.strip()


def parse_value(name: str, text: Any, where: str) -> Any:
    """A knob's value from the command line (text, parsed as the knob declares) or from YAML (already typed)."""
    knob = _knob(name, where)
    if not isinstance(text, str):
        return list(text) if isinstance(text, tuple) else text
    try:
        return knob.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_grid(name: str, text: Any, where: str) -> list:
    knob = _knob(name, where)
    if isinstance(text, list):
        values = text
    else:
        separator = ";" if knob.kind is tuple else ","
        values = [v.strip() for v in str(text).split(separator) if v.strip()]
    if not values:
        raise ConfigError(f"{where} {name}: give at least one value")
    return [parse_value(name, v, where) for v in values]


def parse_search(name: str, spec: str, where: str):
    """KNOB=kind:... (SEARCH_KINDS) as the ray.tune domain it samples."""
    from ray import tune

    knob = _knob(name, where)
    kind, _, rest = str(spec).partition(":")
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"{where} {name}={spec!r}: the kind must be one of {', '.join(SEARCH_KINDS)} "
                          f"(e.g. {name}=loguniform:0.01:1)")
    if kind == "choice":
        values = [v.strip() for v in rest.split(";" if knob.kind is tuple else ",") if v.strip()]
        if not values:
            raise ConfigError(f"{where} {name}={spec!r}: give the values, choice:A,B,C")
        return tune.choice([parse_value(name, v, where) for v in values])
    bounds = rest.split(":")
    try:
        low, high = (float(b) for b in bounds) if len(bounds) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or not low < high:
        raise ConfigError(f"{where} {name}={spec!r}: write {kind}:LOW:HIGH with LOW < HIGH (numbers)")
    if kind in ("int", "logint"):
        if knob.kind is not int or low != int(low) or high != int(high):
            raise ConfigError(f"{where} {name}={spec!r}: {kind} is for integer knobs with integer bounds"
                              + ("" if knob.kind is int else f"; {name} is a {knob.kind.__name__} knob: use "
                                 "uniform or loguniform"))
        sample = tune.lograndint if kind == "logint" else tune.randint
        return sample(int(low), int(high) + 1)  # Tune's upper bound is exclusive; the command line's is not
    if knob.kind is int:
        raise ConfigError(f"{where} {name}={spec!r}: {name} is an integer knob: use int:LOW:HIGH or logint:LOW:HIGH")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where} {name}={spec!r}: loguniform needs LOW > 0")
    return (tune.loguniform if kind == "loguniform" else tune.uniform)(low, high)


def read_config(path: str) -> dict[str, Any]:
    """The YAML file of a sweep: a mapping of YAML_KEYS."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        content = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"--config {path}: expected a mapping of {', '.join(sorted(YAML_KEYS))}")
    unknown = sorted(set(content) - YAML_KEYS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s) {unknown}; the keys are {', '.join(sorted(YAML_KEYS))}")
    for key in ("set", "grid", "search"):
        if not isinstance(content.get(key, {}), dict):
            raise ConfigError(f"--config {path}: {key} must be a mapping of knob: value")
    return content


def sweep_space(args: argparse.Namespace, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed knobs, space) of a sweep: the YAML file's, then the command line's on top."""
    where_file = f"--config {args.config}"
    fixed = {k: parse_value(k, v, f"{where_file} set") for k, v in (config.get("set") or {}).items()}
    grid = {k: parse_grid(k, v, f"{where_file} grid") for k, v in (config.get("grid") or {}).items()}
    searched = {k: parse_search(k, v, f"{where_file} search") for k, v in (config.get("search") or {}).items()}
    for item in args.set:
        name, text = _split(item, "--set")
        fixed[name] = parse_value(name, text, "--set")
    for item in args.grid:
        name, text = _split(item, "--grid")
        grid[name] = parse_grid(name, text, "--grid")
        searched.pop(name, None)
    for item in args.search:
        name, text = _split(item, "--search")
        searched[name] = parse_search(name, text, "--search")
        grid.pop(name, None)
    if "seed" in searched or "seed" in fixed:
        raise ConfigError("seeds: give --seeds N (seeds 0 .. N-1 under every point), not a searched or fixed seed")
    if "seed" in grid:
        raise ConfigError("seeds: give --seeds N, not --grid seed=...")
    method = args.method
    if method is not None:
        fixed["method"] = method
    elif "method" not in grid and "method" not in fixed:
        raise ConfigError("no method: give --method M (or sweep methods with --grid method=a,b)")
    if not grid and not searched:
        raise ConfigError("nothing to sweep: give a --grid or a --search axis")
    if (searched or args.scheduler != "none") and "validation_images" not in fixed:
        fixed["validation_images"] = 1000  # the monitor that selects must not score the test split
    return fixed, {**grid, **searched}


def plan(args: argparse.Namespace) -> Plan:
    config = getattr(args, "config_content", None) or {}
    fixed, space = sweep_space(args, config)
    seeds = args.seeds
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give the number of seeds per point, >= 1")
    space["seed"] = list(range(seeds))
    both = sorted(set(fixed) & set(space))
    if both:
        raise ConfigError(f"{both} both fixed (--set) and swept: give each knob once")
    searched = any(not isinstance(v, list) for v in space.values())
    if args.samples is not None and not searched:
        raise ConfigError("--samples counts searched points: give a --search axis, or leave --samples out")
    part = Part(args.name, {**fixed_from(args), **fixed}, space, report=NAME,
                num_samples=args.samples if searched else None, scheduler=args.scheduler,
                grace_epochs=args.grace_epochs, max_concurrent=args.max_concurrent, search_seed=args.search_seed)
    return Plan(args.name, [part])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    known, _ = first.parse_known_args(argv)
    config: dict[str, Any] = {}
    if known.config:
        try:
            config = read_config(known.config)
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    defaults = {k.replace("-", "_"): v for k, v in config.items() if k not in ("set", "grid", "search")}

    def arguments(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)
        parser.set_defaults(**defaults, config_content=config)

    study_main(__doc__, "results/sweep", plan, arguments, argv, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
