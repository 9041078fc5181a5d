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


# Document 000, Tables 1-2: linear evaluation top-1 (%), mean +- std, and the positive ratio (%).
PNDA_REFERENCES = {
    "CIFAR-100, ResNet-50": {"none": (67.51, 0.08), "pda": (63.36, 0.12), "nda": (67.28, 0.32), "pnda": (68.20, 0.23),
                             "positive_ratio": 12},
    "Tiny ImageNet, ResNet-18": {"none": (45.06, 0.28), "pda": (41.42, 0.21), "nda": (45.29, 0.28),
                                 "pnda": (46.35, 0.10), "positive_ratio": 30},
}
PNDA_MODE_LABELS = {"none": "MoCo v2", "pda": "+PDA", "nda": "+NDA", "pnda": "+PNDA"}


# Document 003: Recall@1 (%) without -> with VAT positives (VGG16-BN pool5).
VAT_REFERENCES = {"CUB-200-2011": (67.2, 68.8), "Cars196": (87.9, 88.17)}


# Document 002 (FractalDB, Kataoka et al.): DeiT-Ti fine-tuning accuracy (%) averaged over six datasets.
FORMULA_REFERENCES = {"FractalDB-10k": 88.8, "SimCLRv2": 88.5, "MoCo v2": 87.1}
