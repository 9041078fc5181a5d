"""Standard JSON for everything the lab writes (result.json, metrics.jsonl, a study's final rows): a NaN or
infinite number becomes null (bare NaN is refused by JSON.parse and most tools), tuples become lists."""

from __future__ import annotations

import json
import math
from typing import Any


def json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(json_ready(value), allow_nan=False, default=str, **kwargs)
