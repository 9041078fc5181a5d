"""Contrastive Clustering (Li et al., AAAI 2021).

Work in progress: being written.
"""

from __future__ import annotations

from lab.methods.base import Method, StepOutput


class ContrastiveClustering(Method):
    name = "contrastive_clustering"

    def forward(self, views, labels=None, indexes=None) -> StepOutput:
        raise NotImplementedError("contrastive_clustering is being written")
