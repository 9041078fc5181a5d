"""What every method provides to the one training loop.

A method is an `nn.Module` holding its networks and its state (queue, EMA teacher,
prototypes, centre ... as buffers / submodules, so they are saved in checkpoints).
`forward(views, labels, indexes)` is one training step's loss: the loop calls it on each worker
under Ray Train and averages the gradients over workers after backward. `after_step` is the optional hook
for EMA / queue / prototype updates once the optimiser has stepped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
import torch.nn.functional as F

from lab.heads import projection_head

if TYPE_CHECKING:
    from lab.config import RunConfig


@dataclass
class EpochData:
    """What a method may read of the training set at an epoch's start."""

    images: torch.Tensor  # uint8 N x C x H x W, this run's training images (every worker holds all)
    labels: torch.Tensor
    eval_view: "object"  # lab.views.EvalView: uint8 -> normalised float, deterministic
    device: torch.device


@dataclass
class StepOutput:
    loss: torch.Tensor
    embedding: torch.Tensor  # one view's (local) embedding, for the collapse signal
    logs: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    name: ClassVar[str]
    n_views: ClassVar[int] = 2
    # Optimiser defaults from the method's paper (base lr for batch 256 under the linear scaling rule).
    optim_defaults: ClassVar[dict[str, float]] = {"base_lr": 0.05, "weight_decay": 1e-4}
    # Values of RunConfig knobs left at None that the method's paper fixes (e.g. its temperature).
    knob_defaults: ClassVar[dict[str, float]] = {}
    # Per-scale values of such knobs where the paper's recipe does not carry over to a scale's budget
    # (each one measured, and said where it is set); they come before the scale's and the paper's.
    scale_knob_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, cfg: "RunConfig", backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone

    @classmethod
    def epoch_batches(cls, cfg: "RunConfig", labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One epoch's global batches as dataset positions, (steps, batch_size): by default a random
        permutation cut into full batches (methods with their own sampler, e.g. N-pair's class pairs,
        override this; the loop slices each row over the workers)."""
        steps = len(labels) // cfg.batch_size
        return torch.randperm(len(labels), generator=generator)[: steps * cfg.batch_size].view(steps, cfg.batch_size)

    @classmethod
    def knob_defaults_in_order(cls, scale: str) -> tuple[dict[str, Any], ...]:
        """Where a knob left at None takes its value, first match wins: this method's for the scale,
        the scale's, this method's paper default (RunConfig.resolved and `knob` both follow it)."""
        from lab.config import SCALE_DEFAULTS

        return cls.scale_knob_defaults.get(scale, {}), SCALE_DEFAULTS.get(scale, {}), cls.knob_defaults

    @classmethod
    def knob(cls, cfg: "RunConfig", name: str) -> Any:
        """The value `name` will take once `cfg` is resolved (for validate, which sees the raw config)."""
        value = getattr(cfg, name)
        if value is not None:
            return value
        for defaults in cls.knob_defaults_in_order(cfg.scale):
            if defaults.get(name) is not None:
                return defaults[name]
        return None

    def collapse_reason(self, last_epoch_logs: dict[str, float]) -> str | None:
        """A collapse this method's own signals show (its per-epoch log means of the last epoch), or
        None; the loop adds it to the shared embedding-std and kNN tests (lab.train.collapse_reason)."""
        return None

    @classmethod
    def validate(cls, cfg: "RunConfig") -> None:
        """Raise ConfigError for knob values this method cannot run with."""

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None,
                indexes: torch.Tensor | None = None) -> StepOutput:
        """One step's loss. labels: for supervised objectives (SupCon); indexes: each sample's
        position in the training set (memory banks)."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (EMA updates, queues)."""

    def before_epoch(self, epoch: int, steps_per_epoch: int, data: "EpochData") -> None:
        """Called at the start of every epoch, resumed ones included (PCL's k-means over the
        dataset's features, schedules counted in epochs). Must depend only on the method's state
        and `epoch`, so that a resumed run recomputes exactly what the uninterrupted run had."""

    def make_projector(self, last_bn: bool = False) -> tuple[nn.Module, int]:
        """The configured projection head g on top of the backbone, and its output width."""
        cfg = self.cfg
        return projection_head(cfg.head, self.backbone.out_dim, cfg.head_hidden_dim, cfg.head_out_dim,
                               cfg.head_layers, last_bn)

    def result_columns(self, train_images: torch.Tensor) -> dict:
        """Extra columns of the run's results row (lab.results.METRIC_COLUMNS lists them), e.g.
        PNDA's positive ratio and its RAI sample grid."""
        return {}

    def classify(self, x: torch.Tensor) -> torch.Tensor | None:
        """Class logits of a normalised batch for methods trained with the dataset's labels
        (supervised fine-tuning: its test top-1 is the run's classifier_top1); None for the others."""
        return None

    def assign_clusters(self, x: torch.Tensor) -> torch.Tensor | None:
        """Cluster index per image of a normalised batch, for methods that cluster (Contrastive
        Clustering's argmax of the cluster head); None for the others."""
        return None

    @property
    def encoder(self) -> nn.Module:
        """The network whose output is evaluated (kNN, linear probe)."""
        return self.backbone


def checked_indexes(indexes: torch.Tensor | None, size: int, device: torch.device, needs: str,
                    holds: str) -> torch.Tensor:
    """The batch's dataset positions (the loop's `indexes`) as int64 on `device`, refused when missing
    or outside the `size` per-image rows a method keeps (memory bank, cluster assignments, RAI flags).
    `needs` says who needs them, `holds` what the rows are (both go into the error)."""
    if indexes is None:
        raise ValueError(f"{needs} needs each sample's dataset index: call forward(views, labels, indexes=...) "
                         f"with indexes in [0, {size})")
    indexes = indexes.to(device, torch.long)
    if indexes.numel() and (int(indexes.min()) < 0 or int(indexes.max()) >= size):
        raise ValueError(f"indexes span [{int(indexes.min())}, {int(indexes.max())}] but {holds}")
    return indexes


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that no optimiser trains: the EMA teacher / key encoder of BYOL, MoCo, DINO."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter
    (MoCo eq. 2, BYOL Sec. 3.1); buffers (BN statistics) are the target's own."""
    for o, t in zip(online.parameters(), target.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of the l2-normalised embedding (SimSiam, Chen & He 2021, Fig. 2).

    Collapse to a constant gives 0; an embedding spread over the sphere gives about 1/sqrt(d).
    """
    if z.shape[0] < 2:
        return float("nan")
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()
