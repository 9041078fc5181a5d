"""Knobs: the one declaration of every setting of a run.

A knob is declared once, beside what it controls: a method's own knobs in its file
(lab/methods/*.py), the views' in lab/views.py, the backbone's in lab/backbones.py, the run's in
lab/config.py. A declaration holds the type, the default, the allowed values and one line of
meaning; `lab.config.RunConfig` gathers them under one flat name each, which is what a study
sweeps, what the command line takes (`python -m lab.train --help` is generated from them) and a
column of the results row.

A default is a value or a `Rule` over the rest of the configuration: `per_scale(smoke=..., cpu=...,
gpu=...)`, `per_optimizer(...)`, or `derived(function, text)`. A method's defaults for knobs it
shares (a temperature, an EMA momentum, the learning rate of its paper's SGD recipe) sit in its
`defaults`; they come before the knob's own. A rule that has nothing to say returns `UNSET` and
the next source answers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from lab.errors import ConfigError

SCALES = ("smoke", "cpu", "gpu")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "no value from this source": the next one answers


class Rule:
    """A default computed from the rest of the config (`config.<knob>` reads another knob's value)."""

    def __init__(self, function: Callable[[Any], Any], text: str):
        self.function, self.text = function, text

    def __call__(self, config: Any) -> Any:
        return self.function(config)

    def __str__(self) -> str:
        return self.text


def per_scale(**values: Any) -> Rule:
    """A value per scale; a scale left out passes to the next source."""
    unknown = sorted(set(values) - set(SCALES))
    if unknown:
        raise ValueError(f"per_scale: {unknown} are not scales; scales are {SCALES}")
    return Rule(lambda c: values.get(c.scale, UNSET), ", ".join(f"{s} {values[s]}" for s in SCALES if s in values))


def per_optimizer(**values: Any) -> Rule:
    """A value per optimiser (the papers' SGD recipes, the lab's AdamW values)."""
    return Rule(lambda c: values.get(c.optimizer, UNSET), ", ".join(f"{k} {v}" for k, v in values.items()))


def derived(function: Callable[[Any], Any], text: str) -> Rule:
    return Rule(function, text)


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list"}


@dataclass(frozen=True, eq=False)
class Knob:
    """One setting: its name, type, default, allowed values and meaning.

    kind: int, float, bool, str, or tuple (a list of `item` values, e.g. PCL's granularities).
    low / high: inclusive bounds, or exclusive with low_open / high_open (numbers; the items of a
    tuple). choices: the allowed values, or a function returning them (registries: methods,
    datasets, backbones). nullable: None is a value (e.g. "the whole split"). affects_result: False
    for how a run is executed (workers, threads, device): left out of its fingerprint.
    """

    name: str
    kind: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | Callable[[], Iterable[Any]] | None = None
    nullable: bool = False
    item: type = int
    affects_result: bool = True
    why: str = ""  # why the range is what it is, added to a refusal

    def allowed(self) -> tuple | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    # --- what is allowed, in words ---------------------------------------------------------------
    def range_text(self) -> str:
        lo = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        if lo and hi:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        return lo or hi or ""

    def describe(self) -> str:
        allowed = self.allowed()
        if allowed is not None:
            text = f"one of {list(allowed)}"
        elif self.kind is tuple:
            text = f"a comma-separated list of {'integers' if self.item is int else 'numbers'}"
            if self.range_text():
                text += f", each {self.range_text()}"
        else:
            text = _KIND_NAMES[self.kind]
            if self.range_text():
                text += f" {self.range_text()}"
        return text + (" or None" if self.nullable else "")

    def default_text(self) -> str:
        return str(self.default) if isinstance(self.default, Rule) else repr(self.default)

    # --- checking a value ------------------------------------------------------------------------
    def refuse(self, value: Any, problem: str | None = None) -> ConfigError:
        problem = problem or "needs " + self.describe()
        text = f"{self.name}={value!r}{' ' if problem.startswith('is ') else ': '}{problem}"
        if self.why:
            text += f" ({self.why})"
        return ConfigError(text)

    def _scalar(self, value: Any, kind: type) -> Any:
        if kind is bool:
            if isinstance(value, bool) or type(value).__name__ == "bool_":
                return bool(value)
        elif kind is int:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return int(value)
        elif kind is float:
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
                return float(value)
        elif kind is str:
            if isinstance(value, str):
                return value
        raise self.refuse(value)

    def _in_range(self, number: float) -> bool:
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        if self.high is not None and (number >= self.high if self.high_open else number > self.high):
            return False
        return True

    def check(self, value: Any) -> Any:
        """The value in the knob's type, or ConfigError naming the knob, the value and what is allowed."""
        if value is None:
            if self.nullable:
                return None
            raise self.refuse(value, f"needs {self.describe()}; leave it out for the default ({self.default_text()})")
        if self.kind is tuple:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise self.refuse(value)
            items = tuple(self._scalar(v, self.item) for v in value)
            if not items or not all(self._in_range(v) for v in items):
                raise self.refuse(value)
            return items
        value = self._scalar(value, self.kind)
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise self.refuse(value, f"is unknown; choose one of {sorted(allowed, key=str)}")
        if self.kind in (int, float) and not self._in_range(value):
            raise self.refuse(value)
        return value

    def parse(self, text: str) -> Any:
        """A value written on the command line (or in a grid axis): 'none', numbers, true/false, a,b,c."""
        text = text.strip()
        if text.lower() in ("none", "null") and self.nullable:
            return None
        try:
            if self.kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = text.lower() in ("true", "1", "yes")
            elif self.kind is int:
                value = int(text)
            elif self.kind is float:
                value = float(text)
            elif self.kind is tuple:
                value = tuple((int if self.item is int else float)(part) for part in text.split(",") if part.strip())
            else:
                value = text
        except ValueError:
            raise self.refuse(text) from None
        return self.check(value)

    def with_default(self, default: Any, **changes: Any) -> "Knob":
        return replace(self, default=default, **changes)


@dataclass
class KnobTable:
    """Every knob by name, with the groups that declare it (a method's name, or a vocabulary of the run)."""

    knobs: dict[str, Knob] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # knob name -> declaring groups

    def add(self, group: str, knobs: Iterable[Knob]) -> None:
        for knob in knobs:
            known = self.knobs.get(knob.name)
            if known is not None and known is not knob:
                raise ValueError(f"knob {knob.name!r} is declared twice ({', '.join(self.groups[knob.name])} and "
                                 f"{group}): declare it once and list the same Knob where it is shared")
            self.knobs[knob.name] = knob
            self.groups.setdefault(knob.name, []).append(group)
