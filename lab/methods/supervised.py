"""Supervised classification with cross-entropy (the BA^2M study's run, Cheng et al. 2021).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class Supervised(Method):
    name = "supervised"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("supervised is being written")
