"""What every method provides to the one training loop.

A method is an `nn.Module` holding its networks and its state (queue, EMA teacher,
prototypes, centre ... as buffers / submodules, so they are saved in checkpoints), and it
declares its knobs beside them:

- `knobs`: the Knob declarations it reads (its own, and shared ones such as TEMPERATURE);
- `defaults`: its paper's values for shared and run-level knobs (a temperature, the lr of its SGD
  recipe), as values or rules (lab.knobs.per_scale, ...);
- `check(cfg)`: rules between knobs, on the resolved config; `check_data(cfg, train_size)`: rules
  that need the training set's size.

`forward(views, labels, indexes)` is one training step's loss: the loop calls it on each worker
under Ray Train and averages the gradients over workers after backward. `after_step` is the
optional hook for EMA / queue / prototype updates once the optimiser has stepped.

A method that needs another run first (PNDA needs RAIS's rotation-agnostic images) declares it in
`stages(cfg)`; the loop runs that stage through itself, and hands what the stage's `outputs` gave
to the method as `upstream`. A method never runs the loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
import torch.nn.functional as F

from lab.errors import ConfigError
from lab.heads import projection_head
from lab.knobs import UNSET, Knob, per_optimizer

if TYPE_CHECKING:
    from lab.config import RunConfig

# --- knobs that several methods read, one name each ------------------------------------------------
TEMPERATURE = Knob("temperature", float, UNSET, "softmax temperature tau of the method's contrastive / "
                   "distillation loss (each method's paper value by default)", low=0, low_open=True)


def sgd_recipe(base_lr: float, weight_decay: float) -> dict[str, Any]:
    """A paper's SGD values (base lr at batch 256, weight decay): defaults of base_lr / weight_decay under
    optimizer='sgd' (under AdamW the lab's own values apply, lab.config)."""
    return {"base_lr": per_optimizer(sgd=base_lr), "weight_decay": per_optimizer(sgd=weight_decay)}


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
    # the method's signals of this step: floats, or 0-d tensors left on the device (the loop reads them at the
    # epoch's end, not per step)
    logs: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    name: ClassVar[str]
    n_views: ClassVar[int] = 2
    knobs: ClassVar[tuple[Knob, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = sgd_recipe(base_lr=0.05, weight_decay=1e-4)
    result_schema: ClassVar[dict[str, str]] = {}  # columns `result_columns` adds: name -> float / int / str / bool

    def __init__(self, cfg: "RunConfig", backbone: nn.Module, dataset_size: int | None = None,
                 upstream: dict[str, dict[str, torch.Tensor]] | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone

    # --- declarations, merged along the class hierarchy (PCL and PNDA extend MoCo) ------------------
    @classmethod
    def all_knobs(cls) -> tuple[Knob, ...]:
        seen: dict[str, Knob] = {}
        for klass in reversed(cls.__mro__):
            for knob in klass.__dict__.get("knobs", ()):
                seen.setdefault(knob.name, knob)
        return tuple(seen.values())

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("defaults", {}))
        return merged

    @classmethod
    def check(cls, cfg: "RunConfig") -> None:
        """Raise ConfigError for combinations of (resolved) knob values this method cannot run with."""

    @classmethod
    def check_data(cls, cfg: "RunConfig", train_size: int) -> None:
        """Raise ConfigError for knob values the training set's size rules out (a memory bank's K)."""

    @classmethod
    def stages(cls, cfg: "RunConfig") -> dict[str, dict[str, Any]]:
        """Runs that must come before this one: name -> knob changes of the stage's config against this
        run's (UNSET drops a knob back to the stage method's default). Their `outputs` reach
        `__init__` as upstream[name]."""
        return {}

    @classmethod
    def epoch_batches(cls, cfg: "RunConfig", labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One epoch's global batches as dataset positions, (steps, batch_size): by default a random
        permutation cut into full batches (methods with their own sampler, e.g. N-pair's class pairs,
        override this; the loop slices each row over the workers)."""
        steps = len(labels) // cfg.batch_size
        return torch.randperm(len(labels), generator=generator)[: steps * cfg.batch_size].view(steps, cfg.batch_size)

    # --- the step ------------------------------------------------------------------------------------
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

    # --- what the loop reads of a method ----------------------------------------------------------
    def collapse_reason(self, last_epoch_logs: dict[str, float]) -> str | None:
        """A collapse this method's own signals show (its per-epoch log means of the last epoch), or
        None; the loop adds it to the shared embedding-std and kNN tests (lab.collapse)."""
        return None

    def outputs(self, data: "EpochData") -> dict[str, torch.Tensor]:
        """What this run hands to the runs that need it as a stage (RAIS: its RAI mask), computed once
        training is done and stored with the run's final checkpoint."""
        return {}

    def result_columns(self, train_images: torch.Tensor) -> dict:
        """Extra columns of the run's results row (lab.results declares them), e.g. PNDA's positive
        ratio and its RAI sample grid."""
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

    def evaluated_networks(self) -> dict[str, nn.Module]:
        """The networks whose features zero-shot retrieval scores, by column prefix: the encoder ('');
        metric learning adds its embedding layer ('fc_')."""
        return {"": self.encoder}

    def make_projector(self, last_bn: bool = False) -> tuple[nn.Module, int]:
        """The configured projection head g on top of the backbone, and its output width."""
        cfg = self.cfg
        return projection_head(cfg.head, self.backbone.out_dim, cfg.head_hidden_dim, cfg.head_out_dim,
                               cfg.head_layers, last_bn)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when it is half / bfloat16 (autocast), float64 kept: the precision every loss, normalisation
    and statistic of the lab is computed in."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def require_dataset_size(dataset_size: int | None, method: str, holds: str) -> int:
    """The number of training images a method keeps one row of state per (memory bank, RAI flags)."""
    if dataset_size is None or dataset_size < 1:
        raise ValueError(f"{method} keeps {holds} per training image: build it with dataset_size = the number of "
                         "training images (lab.methods.build_method(cfg, channels, dataset_size))")
    return dataset_size


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
    """A copy that no optimiser trains (the momentum networks of lab.methods.momentum)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def refuse_local_crops(cfg: "RunConfig", method: str, why: str) -> None:
    """Methods built on one or two global views only (local_crops > 0 would be silently unused)."""
    if cfg.local_crops:
        raise ConfigError(f"local_crops={cfg.local_crops}: {method} {why}; use local_crops=0")


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of the l2-normalised embedding (SimSiam, Chen & He 2021, Fig. 2).

    Collapse to a constant gives 0; an embedding spread over the sphere gives about 1/sqrt(d).
    """
    return float(embedding_spread(z))


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """embedding_std as a float64 tensor on z's device (the loop sums it per step without a host sync)."""
    if z.shape[0] < 2:
        return torch.full((), float("nan"), dtype=torch.float64, device=z.device)
    return F.normalize(z.float(), dim=1).std(dim=0).mean().double()
