"""Context prediction (Doersch, Gupta & Efros, ICCV 2015).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class ContextPrediction(Method):
    name = "context_prediction"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("context_prediction is being written")
