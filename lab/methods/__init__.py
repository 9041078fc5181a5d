"""The method registry: a study names a method by string."""

from __future__ import annotations

from lab.methods.base import Method, StepOutput, embedding_std
from lab.methods.barlow_twins import BarlowTwins
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
        from lab.config import ConfigError

        raise ConfigError(f"method={name!r} is unknown; choose one of {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "StepOutput", "embedding_std", "get_method_class"]
