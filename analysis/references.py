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


@dataclass(frozen=True)
class ReferenceBand:
    """A range of the knob where a paper reports that the method works (or is flat), without numbers to draw:
    shaded on the lab's panels as an x-range, never as a level."""

    label: str
    low: float
    high: float


@dataclass(frozen=True)
class ReferenceMark:
    """The value a paper chose or singled out (e.g. Barlow Twins' lambda = 0.0051): a dotted vertical line."""

    label: str
    x: float | str


@dataclass(frozen=True)
class References:
    """What a sensitivity study is compared with: published curves (their own panel), bands and marks (on the
    lab's x-axis), and the paper's claim in words, which the report quotes beside the lab's direction."""

    claim: str
    curves: tuple[ReferenceCurve, ...] = ()
    bands: tuple[ReferenceBand, ...] = ()
    marks: tuple[ReferenceMark, ...] = ()


# Sources: ../shared/METHODS.md section 11 (ImageNet linear top-1, ResNet-50) and the issue that asked for each
# study; only numbers stated there are drawn, the papers' other statements are quoted as claims, bands or marks.
SENSITIVITY_REFERENCES = {
    "temperature": References(
        "SimCLR Table 5 (batch 4096, 100 epochs): tau = 0.1 is best; 0.05 and 0.5 cost about 4 points, 1.0 about 6. "
        "MoCo v2 uses tau = 0.2 and SupCon tau = 0.1.",
        curves=(ReferenceCurve("simclr", "SimCLR, Chen et al. 2020 Table 5 (batch 4096, 100 ep)",
                               (0.05, 0.1, 0.5, 1.0), (59.7, 64.4, 60.7, 58.0)),),
        marks=(ReferenceMark("MoCo v2's tau (0.2)", 0.2), ReferenceMark("SupCon's tau (0.1)", 0.1))),
    "momentum": References(
        "MoCo (K = 4096): m = 0 fails (training loss oscillates), 0.9 gives 55.2, 0.99 57.8, 0.999 59.0 and "
        "0.9999 58.9: a slowly moving key encoder is what makes the queue's keys consistent. BYOL uses "
        "tau_base = 0.996 with a cosine schedule to 1.",
        curves=(ReferenceCurve("moco", "MoCo, He et al. 2020 Sec. 4.1 (K = 4096, 200 ep)",
                               (0.9, 0.99, 0.999, 0.9999), (55.2, 57.8, 59.0, 58.9)),),
        marks=(ReferenceMark("BYOL's tau_base (0.996)", 0.996),)),
    "negatives": References(
        "MoCo Fig. 3: accuracy grows with the number of negatives K for all three mechanisms; end-to-end stops at "
        "the largest batch that fits (K = 1024), the memory bank trails the queue (58.0 vs 60.6 at K = 65536).",
        curves=(ReferenceCurve("queue", "MoCo queue, He et al. 2020 Fig. 3 (K = 65536)", (65536,), (60.6,)),
                ReferenceCurve("memory_bank", "memory bank, He et al. 2020 Fig. 3 (K = 65536)", (65536,), (58.0,)))),
    "projection_head": References(
        "SimCLR Fig. 8: a non-linear head is about 3 points above a linear one and about 10 above none, and the "
        "output dimension matters little.",
        curves=(ReferenceCurve("head", "SimCLR Fig. 8 as drops from non-linear (none, linear, non-linear)",
                               (0, 1, 2), (-10.0, -3.0, 0.0), metric="points from the non-linear head"),)),
    "swav_prototypes": References(
        "SwAV: the number of prototypes has little influence as long as there are enough of them (3000 by "
        "default); at a small batch (256) a queue of stored features is needed for the codes, started after 15 "
        "of 800 epochs.", marks=(ReferenceMark("SwAV's K (3000)", 3000),)),
    "dino_teacher_temperature": References(
        "DINO: a teacher temperature tau_t between 0.04 and 0.07 works; fixed at 0.08 or above it degrades and "
        "needs a warm-up from 0.04 (30 epochs in the paper).",
        bands=(ReferenceBand("DINO: tau_t that works (0.04-0.07)", 0.04, 0.07),)),
    "barlow_lambda": References(
        "Barlow Twins: lambda = 0.0051, and the result is flat from about 0.002 to 0.02.",
        bands=(ReferenceBand("Barlow Twins: flat (0.002-0.02)", 0.002, 0.02),),
        marks=(ReferenceMark("the paper's lambda (0.0051)", 0.0051),)),
    "vicreg_coefficients": References(
        "VICReg: lambda = mu = 25 (ratio 1) with nu = 1 is the paper's choice.",
        marks=(ReferenceMark("VICReg's lambda / mu (1)", 1.0),)),
    "batch_robustness": References(
        "BYOL Fig. 3a (300 epochs): from batch 4096 down to 256 BYOL loses 0.7 points and SimCLR 3.6; at 64 "
        "both are near 59.",
        curves=(ReferenceCurve("byol", "BYOL, Grill et al. 2020 Fig. 3a (300 ep)", (64, 256, 4096), (59.7, 71.8, 72.5)),
                ReferenceCurve("simclr", "SimCLR, as reported by Grill et al. 2020 Fig. 3a (300 ep)",
                               (64, 256, 4096), (59.2, 64.3, 67.9)))),
    "batch_epochs": References(
        "SimCLR Fig. 9: larger batches help most when training is short (batch 256 at 100 epochs: 57.5; "
        "8192 at 800 epochs: 69.0); the gap closes with more epochs.",
        curves=(ReferenceCurve("simclr", "SimCLR, Chen et al. 2020 Fig. 9: batch 256, 100 ep", (256,), (57.5,)),
                ReferenceCurve("simclr", "SimCLR, Chen et al. 2020 Fig. 9: batch 8192, 800 ep", (8192,), (69.0,)))),
}


# SimCLR Fig. 5 (ImageNet linear top-1, ResNet-50, the transform pair on one view): (first, second) -> top-1.
# Only the two cells stated in METHODS.md / the issue; the figure holds the rest.
AUGMENTATION_REFERENCES = {("crop", "colour"): 56.3, ("blur", "rotate"): 2.6}
