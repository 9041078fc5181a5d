"""DINO: self-distillation with no labels (Caron et al., ICCV 2021).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class DINO(Method):
    name = "dino"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("dino is being written")
