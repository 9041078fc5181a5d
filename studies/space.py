"""A study's space in pure terms (no Ray, no Optuna): its grid cells, which axes make a point and which its
cells (studies.search), and the keys that name them from one session to the next."""

from __future__ import annotations

import itertools
import json
from typing import Any

SCORE = "score"  # what Optuna maximises: monitor kNN per epoch, final test kNN at the end


def optuna_value(value: Any) -> Any:
    """What an Optuna categorical may hold (None, bool, int, float, str): a list or tuple as its JSON."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def knob_value(value: Any) -> Any:
    """optuna_value undone: a JSON list back to the list the knob takes."""
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


def grid_cells(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's order ([{}] for no grid)."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def split_axes(grid: dict[str, list], searched: dict[str, Any]) -> tuple[dict[str, list], dict[str, list]]:
    """(point axes, cell axes) of a grid: with searched axes every grid axis is under the point; without,
    only the seed is (a point is a combination of the other axes)."""
    if searched:
        return {}, dict(grid)
    return ({k: v for k, v in grid.items() if k != "seed"}, {k: v for k, v in grid.items() if k == "seed"})


def key_of(values: dict[str, Any]) -> str:
    """A point's or cell's identity: its values as sorted JSON (the same from one session to the next)."""
    return json.dumps({k: optuna_value(v) for k, v in sorted(values.items())}, sort_keys=True, default=str)
