"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class Jigsaw(Method):
    name = "jigsaw"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("jigsaw is being written")
