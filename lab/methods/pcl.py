"""PCL: Prototypical Contrastive Learning (Li et al., ICLR 2021).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class PCL(Method):
    name = "pcl"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("pcl is being written")
