"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class SwAV(Method):
    name = "swav"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("swav is being written")
