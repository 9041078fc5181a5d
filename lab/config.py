"""The one config type of the lab.

A `RunConfig` describes one training run completely: method, data, backbone, head,
optimiser, schedule, scale, evaluation. It is validated when it is built (before any
compute), it resolves the scale's defaults into concrete values, and it flattens into the
columns of a results row, so that every figure can be grouped by any knob.

Every method's knobs are fields here (not nested per-method dicts), so a study sweeps
any of them by name without new code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

SCALES = ("smoke", "cpu", "gpu")
HEADS = ("none", "linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")


class ConfigError(ValueError):
    """A bad configuration value, reported before any compute."""


# What each scale means. `None` fields of a RunConfig take these values.
# smoke: the whole tooling in a few minutes on 2 cores (tests, trials of the pipeline).
# cpu:   numbers that mean something in ~20 minutes of a study on 2 cores.
# gpu:   the papers' settings (ResNet-18 CIFAR variant, hundreds of epochs).
SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": dict(backbone="convnet_tiny", epochs=1, train_subset=2048, eval_subset=2048,
                  test_subset=1000, linear_epochs=10, head_hidden_dim=64, head_out_dim=32,
                  predictor_hidden_dim=16, optimizer="adamw", lr_scaling="sqrt", dino_out_dim=256,
                pcl_clusters="10,20", pcl_warmup_epochs=0,
                rais_rotation_epochs=1, rais_separation_epochs=1),
    "cpu": dict(backbone="convnet_small", epochs=3, train_subset=None, eval_subset=10000,
                test_subset=None, linear_epochs=30, head_hidden_dim=512, head_out_dim=128,
                predictor_hidden_dim=64, optimizer="adamw", lr_scaling="sqrt", dino_out_dim=4096,
                pcl_clusters="10,25,50", pcl_warmup_epochs=1,
                rais_rotation_epochs=2, rais_separation_epochs=1),
    "gpu": dict(backbone="resnet18_cifar", epochs=200, train_subset=None, eval_subset=None,
                test_subset=None, linear_epochs=100, head_hidden_dim=2048, head_out_dim=2048,
                predictor_hidden_dim=512, optimizer="sgd", lr_scaling="linear", dino_out_dim=65536,
                pcl_clusters="250,500,1000", pcl_warmup_epochs=20,
                rais_rotation_epochs=10, rais_separation_epochs=10),
}

# AdamW at small scale: a few hundred steps are all a CPU study affords, and SGD (the papers'
# optimiser, kept at gpu scale with each method's published lr) moves too little in that budget.
# These values are the lab's, not a paper's; the square-root rule scales them with the batch.
ADAMW_DEFAULTS = {"base_lr": 2e-3, "weight_decay": 1e-6}


@dataclass(frozen=True)
class RunConfig:
    # what is trained, on what
    method: str = "simclr"
    dataset: str = "fashion_mnist"
    data_root: str | None = None  # None: the dataset's default location
    scale: str = "cpu"
    seed: int = 0

    # optimisation; batch_size is the GLOBAL batch (split over Ray Train workers)
    batch_size: int = 256
    epochs: int | None = None
    optimizer: str | None = None  # sgd / adamw; None: the scale's
    base_lr: float | None = None  # lr at batch 256; None: the method's (sgd) or ADAMW_DEFAULTS
    lr_scaling: str | None = None  # linear: base_lr * B / 256 (Goyal et al.); sqrt: base_lr * sqrt(B / 256) (SimCLR B.1)
    weight_decay: float | None = None  # None: the method's default
    momentum: float = 0.9
    warmup_epochs: float = 0.0

    # backbone and projection head
    backbone: str | None = None
    head: str = "mlp"  # none / linear / mlp
    head_layers: int = 2  # for mlp: number of linear layers
    head_hidden_dim: int | None = None
    head_out_dim: int | None = None

    # two-view augmentation strengths (lab.views; SimCLR Appendix A)
    crop_min_scale: float | None = None  # global crops' lower scale; None: the method's (SwAV 0.14, DINO 0.4) or the dataset's
    jitter_strength: float | None = None  # s of SimCLR: brightness/contrast/saturation 0.8 s, hue 0.2 s
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float | None = None  # None (here and for jitter_strength): the dataset's recipe, lab.views.AUGMENTATION
    # multi-crop (SwAV Sec. 3.2, DINO Sec. 3.1): small crops beside the 2 global views
    local_crops: int | None = None  # None: the method's (SwAV 6, DINO 8, others 0)
    local_crop_size: int | None = None  # side in pixels; None: 96/224 of the image side (12 px at 28)
    local_crop_min_scale: float = 0.05
    local_crop_max_scale: float | None = None  # None: the method's (SwAV 0.14, DINO 0.4)

    # method knobs (each method reads the ones it needs)
    temperature: float | None = None  # NT-Xent / InfoNCE / SupCon tau; None: the method's paper value
    predictor: bool = True  # SimSiam: use the predictor h
    stop_gradient: bool = True  # SimSiam: sg() on the target branch
    predictor_hidden_dim: int | None = None
    ema_momentum: float | None = None  # BYOL / DINO tau_base, cosine-scheduled to 1; None: the method's (0.996)
    moco_momentum: float = 0.99  # MoCo key-encoder momentum m (the paper's 0.999 suits 10^5+ steps)
    queue_size: int = 4096  # MoCo K; also the memory bank's sampled negatives
    moco_variant: str = "queue"  # queue / end_to_end / memory_bank (MoCo Sec. 3.2)
    moco_symmetric: bool = False  # average the swapped InfoNCE term (MoCo v3, solo-learn's v2+)
    memory_bank_size: int | None = None  # None: the training set's size
    barlow_lambda: float = 0.0051  # Barlow Twins off-diagonal weight
    vicreg_sim: float = 25.0  # VICReg invariance coefficient lambda
    vicreg_var: float = 25.0  # VICReg variance coefficient mu
    vicreg_cov: float = 1.0  # VICReg covariance coefficient nu
    vicreg_gamma: float = 1.0  # VICReg target std gamma
    # SwAV (Caron et al. 2020)
    prototypes: int | None = None  # number of prototypes K; None: the method's (SwAV 3000)
    sinkhorn_epsilon: float | None = None  # entropic regularisation of the codes; None: the method's (0.05; 0.02 at 28 px)
    sinkhorn_iterations: int = 3
    swav_queue_size: int | None = None  # stored features for the codes when the batch is small (0: none); None: the method's
    swav_queue_start_epoch: int = 0  # epoch from which the queue is used (the paper: 15 of 800)
    freeze_prototypes_steps: int = 313  # prototypes get no update for the first steps (the paper: 1 epoch)
    # DINO (Caron et al. 2021)
    dino_out_dim: int | None = None  # K of the DINO head's last layer; None: the scale's
    teacher_temperature: float = 0.04  # final teacher temperature tau_t
    teacher_temperature_start: float = 0.04  # tau_t at step 0, linearly warmed up to teacher_temperature
    teacher_temperature_warmup_epochs: float = 0.0
    center_momentum: float = 0.9
    centering: bool = True  # DINO ablation switch: False drops the centre
    sharpening: bool = True  # DINO ablation switch: False gives the teacher the student's temperature
    # Contrastive Clustering (Li et al. 2021)
    clusters: int | None = None  # cluster-head width M; None: the dataset's number of classes
    cluster_temperature: float = 1.0  # tau_C of the cluster-level contrast
    # PCL (Li et al. 2021)
    pcl_clusters: str | None = None  # comma-separated k-means granularities; None: the scale's
    pcl_warmup_epochs: int | None = None  # InfoNCE only before this epoch; None: the scale's
    # pretext tasks
    jigsaw_grid: int = 3  # tiles per side (Noroozi & Favaro: 3 x 3)
    jigsaw_permutations: int = 100  # size of the maximal-Hamming permutation set
    # metric learning with VAT positives (document 003)
    metric_loss: str = "triplet"  # triplet / npair
    npair_form: str = "distance"  # distance (the document's) / inner_product (Sohn 2016)
    margin: float = 1.0  # triplet margin
    vat_epsilon: float = 0.0  # radius of the virtual adversarial positive (0: no VAT)
    vat_lambda: float = 1.0  # weight of L(a, x_adv, n)
    vat_xi: float = 1e-6  # power iteration's finite-difference step (Miyato et al.)
    vat_iterations: int = 1
    classes_per_batch: int | None = None  # N-pair: distinct classes per batch (2 images each); None: batch_size / 2
    class_split: str = "all"  # all / half: train on the first half of the classes, Recall@K on the unseen half
    # RAIS and PNDA (document 000)
    pnda_mode: str = "pnda"  # for method pnda: none (MoCo v2) / pda / nda / pnda
    rais_rotation_epochs: int | None = None  # step 1: rotation classifier epochs; None: the scale's
    rais_separation_epochs: int | None = None  # step 2: entropy-separation epochs; None: the scale's
    rais_lambda: float = 1.0  # weight of L_es in eq. (4)
    rais_margin: float = 0.2  # m of eq. (2)-(3); the RAI threshold is rho + m, rho = log(4) / 2
    # fine-tuning from another run (formula-driven pretraining, document 002)
    init_from: str | None = None  # checkpoint (or run folder) whose backbone initialises this run
    label_fraction: float = 1.0  # fraction of the training labels kept (class-stratified), for supervised runs
    # BA^2M (Cheng et al. 2021): batch-aware attention in the last ba2m_blocks blocks (0: none)
    ba2m_blocks: int = 0
    ba2m_reduction: int = 16

    # data sizes (None: the whole split)
    train_subset: int | None = None
    eval_subset: int | None = None  # train-split images used as kNN bank / linear-probe train set
    test_subset: int | None = None

    # evaluation on frozen features
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_epochs: int | None = None

    # execution
    workers: int = 1  # Ray Train workers; 1 runs the loop in-process
    threads: int | None = None  # torch intra-op threads per worker; None: leave torch's default
    device: str = "auto"  # auto / cpu / cuda

    def __post_init__(self) -> None:
        validate(self)

    # --- derived ---------------------------------------------------------------------
    def resolved(self) -> "RunConfig":
        """This config with every `None` field filled: from its scale, its method's paper
        (knobs; optimiser values under SGD, ADAMW_DEFAULTS under AdamW) and its dataset's views."""
        from lab.data import DATASETS
        from lab.methods import get_method_class
        from lab.views import AUGMENTATION, global_view_side

        values = dataclasses.asdict(self)

        def fill(defaults: Mapping[str, Any]) -> None:
            for key, value in defaults.items():
                if values[key] is None:
                    values[key] = value

        method = get_method_class(self.method)
        for defaults in method.knob_defaults_in_order(self.scale):
            fill(defaults)
        fill(method.optim_defaults if values["optimizer"] == "sgd" else ADAMW_DEFAULTS)
        fill(AUGMENTATION[self.dataset])
        spec = DATASETS[self.dataset]
        fill(dict(local_crops=0, local_crop_max_scale=0.14, clusters=spec.num_classes,
                  local_crop_size=local_crop_side(global_view_side(self.dataset, self.scale, spec.image_size))))
        return RunConfig(**values)

    @property
    def lr(self) -> float:
        """The peak learning rate: base_lr scaled from batch 256 to this batch size."""
        cfg = self.resolved()
        ratio = cfg.batch_size / 256
        return cfg.base_lr * (ratio if cfg.lr_scaling == "linear" else ratio ** 0.5)

    def to_row(self) -> dict[str, Any]:
        """Flat columns for the results schema."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of everything that determines the run's result (not how it is executed)."""
        row = self.to_row()
        for key in ("workers", "threads", "device", "data_root"):
            row.pop(key)
        return hashlib.sha1(json.dumps(row, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> "RunConfig":
        unknown = sorted(set(values) - field_names())
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(field_names())}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_dict({**dataclasses.asdict(self), **changes}, where="replace()")


def local_crop_side(image_side: int) -> int:
    """The default small-crop side: 96/224 of the image's, as multi-crop's 96-px crops of 224-px images."""
    return max(1, round(image_side * 96 / 224))


def field_names() -> set[str]:
    return {f.name for f in fields(RunConfig)}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    from lab.methods import METHODS, get_method_class
    from lab.data import DATASETS

    _check(cfg.method in METHODS, f"method={cfg.method!r} is unknown; choose one of {sorted(METHODS)}")
    _check(cfg.dataset in DATASETS, f"dataset={cfg.dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    _check(cfg.scale in SCALES, f"scale={cfg.scale!r} is unknown; choose one of {SCALES}")
    _check(isinstance(cfg.batch_size, int) and cfg.batch_size >= 2,
           f"batch_size={cfg.batch_size!r}: needs an integer >= 2 (a contrastive batch needs other samples)")
    _check(cfg.workers >= 1, f"workers={cfg.workers}: needs >= 1")
    _check(cfg.batch_size % cfg.workers == 0,
           f"batch_size={cfg.batch_size} is the global batch and must divide evenly over workers={cfg.workers}")
    _check(cfg.batch_size // cfg.workers >= 2,
           f"batch_size={cfg.batch_size} over workers={cfg.workers} leaves < 2 samples per worker (BatchNorm needs 2)")
    _check(cfg.temperature is None or cfg.temperature > 0, f"temperature={cfg.temperature}: the temperature tau must be > 0")
    _check(cfg.epochs is None or cfg.epochs >= 1, f"epochs={cfg.epochs}: needs >= 1")
    _check(cfg.head in HEADS, f"head={cfg.head!r}: choose one of {HEADS}")
    _check(cfg.head_layers >= 1, f"head_layers={cfg.head_layers}: needs >= 1")
    _check(cfg.optimizer is None or cfg.optimizer in OPTIMIZERS, f"optimizer={cfg.optimizer!r}: choose one of {OPTIMIZERS}")
    _check(cfg.lr_scaling in (None, "linear", "sqrt"), f"lr_scaling={cfg.lr_scaling!r}: choose linear or sqrt")
    _check(cfg.base_lr is None or cfg.base_lr > 0, f"base_lr={cfg.base_lr}: needs > 0")
    _check(cfg.weight_decay is None or cfg.weight_decay >= 0, f"weight_decay={cfg.weight_decay}: needs >= 0")
    _check(cfg.warmup_epochs >= 0, f"warmup_epochs={cfg.warmup_epochs}: needs >= 0")
    _check(cfg.crop_min_scale is None or 0 < cfg.crop_min_scale <= 1,
           f"crop_min_scale={cfg.crop_min_scale}: needs 0 < value <= 1")
    _check(cfg.local_crops is None or cfg.local_crops >= 0, f"local_crops={cfg.local_crops}: needs >= 0")
    _check(0 < cfg.local_crop_min_scale <= 1, f"local_crop_min_scale={cfg.local_crop_min_scale}: needs 0 < value <= 1")
    _check(cfg.local_crop_max_scale is None or cfg.local_crop_min_scale <= cfg.local_crop_max_scale <= 1,
           f"local_crop_max_scale={cfg.local_crop_max_scale}: needs local_crop_min_scale <= value <= 1")
    if cfg.dataset in DATASETS and cfg.local_crop_size is not None:
        side = DATASETS[cfg.dataset].image_size
        _check(1 <= cfg.local_crop_size <= side,
               f"local_crop_size={cfg.local_crop_size} is larger than {cfg.dataset}'s {side}-px images: multi-crop's "
               f"small crops must fit the image; use local_crop_size <= {side} (None: {local_crop_side(side)})")
    _check(cfg.jitter_strength is None or cfg.jitter_strength >= 0, f"jitter_strength={cfg.jitter_strength}: needs >= 0")
    for name in ("jitter_p", "grayscale_p", "blur_p"):
        _check(getattr(cfg, name) is None or 0 <= getattr(cfg, name) <= 1, f"{name}={getattr(cfg, name)}: a probability in [0, 1]")
    _check(cfg.knn_k >= 1, f"knn_k={cfg.knn_k}: needs >= 1")
    _check(cfg.knn_temperature > 0, f"knn_temperature={cfg.knn_temperature}: needs > 0")
    _check(cfg.device in ("auto", "cpu", "cuda"), f"device={cfg.device!r}: choose auto, cpu or cuda")
    for name in ("train_subset", "eval_subset", "test_subset", "head_hidden_dim", "head_out_dim",
                 "predictor_hidden_dim", "linear_epochs", "threads", "prototypes", "dino_out_dim", "clusters"):
        value = getattr(cfg, name)
        _check(value is None or value >= 1, f"{name}={value}: needs >= 1 (or None for the default)")
    if cfg.backbone is not None:
        from lab.backbones import BACKBONES

        _check(cfg.backbone in BACKBONES, f"backbone={cfg.backbone!r} is unknown; choose one of {sorted(BACKBONES)}")
    _check(cfg.metric_loss in ("triplet", "npair"), f"metric_loss={cfg.metric_loss!r}: choose triplet or npair")
    _check(cfg.npair_form in ("distance", "inner_product"),
           f"npair_form={cfg.npair_form!r}: choose distance or inner_product")
    _check(cfg.margin >= 0, f"margin={cfg.margin}: the triplet margin needs >= 0")
    _check(cfg.vat_epsilon >= 0, f"vat_epsilon={cfg.vat_epsilon}: the VAT radius epsilon needs >= 0 (0 turns VAT off)")
    _check(cfg.vat_lambda >= 0, f"vat_lambda={cfg.vat_lambda}: needs >= 0")
    _check(cfg.vat_xi > 0, f"vat_xi={cfg.vat_xi}: the power iteration's step needs > 0 (VAT: 1e-6)")
    _check(cfg.vat_iterations >= 1, f"vat_iterations={cfg.vat_iterations}: needs >= 1")
    _check(cfg.classes_per_batch is None or cfg.classes_per_batch >= 2,
           f"classes_per_batch={cfg.classes_per_batch}: N-pair needs >= 2 classes per batch")
    _check(cfg.class_split in ("all", "half"), f"class_split={cfg.class_split!r}: choose all or half")
    if cfg.class_split == "half" and cfg.dataset in DATASETS:
        _check(DATASETS[cfg.dataset].num_classes >= 4,
               f"class_split='half' on {cfg.dataset} ({DATASETS[cfg.dataset].num_classes} classes) leaves fewer "
               "than 2 classes a side: zero-shot retrieval needs >= 4 classes")
    _check(cfg.pnda_mode in ("none", "pda", "nda", "pnda"), f"pnda_mode={cfg.pnda_mode!r}: choose none, pda, nda or pnda")
    _check(cfg.rais_margin >= 0, f"rais_margin={cfg.rais_margin}: the margin m needs >= 0")
    rho = math.log(4) / 2
    _check(cfg.rais_margin < rho, f"rais_margin={cfg.rais_margin}: m must be < rho = log(4)/2 = {rho:.4f}, otherwise "
                                  "no entropy can lie beyond rho + m or below rho - m (the paper: m = 0.2)")
    _check(cfg.rais_lambda >= 0, f"rais_lambda={cfg.rais_lambda}: needs >= 0")
    for name in ("rais_rotation_epochs", "rais_separation_epochs"):
        _check(getattr(cfg, name) is None or getattr(cfg, name) >= 0, f"{name}={getattr(cfg, name)}: needs >= 0")
    _check(0 < cfg.label_fraction <= 1, f"label_fraction={cfg.label_fraction}: a fraction in (0, 1]")
    _check(cfg.init_from is None or os.path.exists(cfg.init_from),
           f"init_from={cfg.init_from!r} does not exist: give a run folder holding checkpoint.pt, or the checkpoint file")
    _check(cfg.ba2m_blocks >= 0, f"ba2m_blocks={cfg.ba2m_blocks}: needs >= 0 (0: no BA^2M)")
    _check(cfg.ba2m_reduction >= 1, f"ba2m_reduction={cfg.ba2m_reduction}: needs >= 1")
    if cfg.ba2m_blocks and cfg.scale in SCALES:
        from lab.backbones import check_ba2m_blocks

        check_ba2m_blocks(cfg.backbone or SCALE_DEFAULTS[cfg.scale]["backbone"], cfg.ba2m_blocks)
    get_method_class(cfg.method).validate(cfg)
