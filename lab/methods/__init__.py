"""The method registry: a study names a method by string."""

from __future__ import annotations

from lab.methods.base import Method, StepOutput, embedding_std
from lab.methods.simclr import SimCLR
from lab.methods.simsiam import SimSiam

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, SimSiam)}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        from lab.config import ConfigError

        raise ConfigError(f"method={name!r} is unknown; choose one of {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "StepOutput", "embedding_std", "get_method_class"]
