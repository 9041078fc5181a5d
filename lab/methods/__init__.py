"""The method registry: a study names a method by string; `build_method` makes one from a config."""

from __future__ import annotations

from typing import Any

import torch

from lab.backbones import build_backbone
from lab.errors import ConfigError
from lab.methods.barlow_twins import BarlowTwins
from lab.methods.base import EpochData, Method, StepOutput, embedding_std
from lab.methods.byol import BYOL
from lab.methods.context_prediction import ContextPrediction
from lab.methods.contrastive_clustering import ContrastiveClustering
from lab.methods.dino import DINO
from lab.methods.jigsaw import Jigsaw
from lab.methods.metric_learning import MetricLearning
from lab.methods.moco import MoCo
from lab.methods.pcl import PCL
from lab.methods.pnda import PNDA
from lab.methods.rais import RAIS
from lab.methods.rotation import RotationPrediction
from lab.methods.simclr import SimCLR
from lab.methods.simsiam import SimSiam
from lab.methods.supcon import SupCon
from lab.methods.supervised import Supervised
from lab.methods.swav import SwAV
from lab.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (SimCLR, SimSiam, MoCo, SupCon, BYOL, BarlowTwins, VICReg, RotationPrediction,
                              SwAV, ContrastiveClustering, PCL, DINO, Jigsaw, ContextPrediction, Supervised,
                              RAIS, PNDA, MetricLearning)}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method={name!r} is unknown; choose one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(cfg: Any, in_channels: int, dataset_size: int | None = None,
                 upstream: dict[str, dict[str, torch.Tensor]] | None = None) -> Method:
    """The method with its backbone, initialised from cfg.seed. dataset_size: the training images (methods
    with per-image state: memory bank, cluster assignments, RAI flags); upstream: its stages' outputs."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_channels, cfg.ba2m_blocks, cfg.ba2m_reduction)
    return get_method_class(cfg.method)(cfg, backbone, dataset_size=dataset_size, upstream=upstream)


__all__ = ["METHODS", "EpochData", "Method", "StepOutput", "build_method", "embedding_std", "get_method_class"]
