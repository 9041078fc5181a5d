"""Published numbers overlaid on the lab's figures, always labelled as reference.

Sources: ../shared/METHODS.md section 11 and the papers it cites. ImageNet linear top-1 (%)
with ResNet-50 unless said; they are not on the scale of a small CNN on Fashion-MNIST, so
figures show them on their own axis or as drops from each curve's best point.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceCurve:
    method: str
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    metric: str = "ImageNet linear top-1 (%)"


BATCH_SIZE_REFERENCES = (
    ReferenceCurve(
        "simsiam", "SimSiam, Chen & He 2021 Table 2 (100 ep)",
        (64, 128, 256, 512, 1024, 2048, 4096), (66.1, 67.3, 68.1, 68.1, 68.0, 67.9, 64.0)),
    ReferenceCurve(
        "simclr", "SimCLR, as reported by Grill et al. 2020 Fig. 3a (300 ep)",
        (64, 256, 4096), (59.2, 64.3, 67.9)),
)
