"""The one config type of the lab.

A `RunConfig` describes one training run completely: method, data, backbone, head, optimiser,
schedule, scale, evaluation. Its knobs are declared where they belong (lab.knobs): the run's below,
the backbone's, head's, views' and evaluation's in their modules, each method's in its file. They
are set by one flat name each (from a study, the command line, a YAML sweep) and each is a column
of the results row, so that every figure can be grouped by any knob.

Typed at birth: a config refuses a value of the wrong type, out of range, or a knob the method
does not have, with one ConfigError naming the knob, before anything else happens. Defaults are
resolved once, in one order (the value given; the method's default; the knob's own), and the
rules between knobs are checked on the resolved values (`validate`, then the method's `check`).

Identity: `fingerprint()` hashes the method and the knobs whose value differs from its default
(execution knobs aside), so a knob added later with a default changes no fingerprint. A checkpoint
keeps the whole resolved config and a resume compares it knob by knob (`differences`).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from typing import Any, Iterable, Mapping

from lab import backbones, evaluate, heads, views
from lab.data import DATASETS
from lab.device import PRECISIONS
from lab.errors import ConfigError
from lab.knobs import SCALES, UNSET, Knob, KnobTable, Rule, per_optimizer, per_scale
from lab.methods import METHODS, get_method_class
from lab.methods.base import Method

OPTIMIZERS = ("sgd", "adamw")

# AdamW at small scale: a few hundred steps are all a CPU study affords, and SGD (the papers' optimiser,
# kept at gpu scale with each method's published lr: its `sgd_recipe`) moves too little in that budget.
# The AdamW values are the lab's, not a paper's; the square-root rule scales them with the batch.
RUN_KNOBS = (
    Knob("method", str, "simclr", "the method trained (lab.methods)", choices=lambda: sorted(METHODS)),
    Knob("dataset", str, "fashion_mnist", "the training and evaluation data (lab.data)",
         choices=lambda: sorted(DATASETS)),
    Knob("data_root", str, None, "folder the dataset is read from (None: its default location)", nullable=True,
         affects_result=False),
    Knob("scale", str, "cpu", "smoke: the tooling in minutes; cpu: meaningful on 2 cores; gpu: the papers' settings",
         choices=SCALES),
    Knob("seed", int, 0, "seed of the initialisation, data order and augmentations", low=0),
    Knob("batch_size", int, 256, "the GLOBAL batch (split over Ray Train workers)", low=2,
         why="a contrastive batch needs other samples"),
    Knob("epochs", int, per_scale(smoke=1, cpu=3, gpu=200), "training epochs", low=1),
    Knob("optimizer", str, per_scale(smoke="adamw", cpu="adamw", gpu="sgd"), "sgd (the papers') or adamw",
         choices=OPTIMIZERS),
    Knob("base_lr", float, per_optimizer(adamw=2e-3), "learning rate at batch 256 (under SGD: the method's paper)",
         low=0, low_open=True),
    Knob("lr_scaling", str, per_scale(smoke="sqrt", cpu="sqrt", gpu="linear"), "linear: base_lr x B / 256 (Goyal "
         "et al.); sqrt: base_lr x sqrt(B / 256) (SimCLR B.1)", choices=("linear", "sqrt")),
    Knob("weight_decay", float, per_optimizer(adamw=1e-6), "weight decay (under SGD: the method's paper)", low=0),
    Knob("sgd_momentum", float, 0.9, "SGD's momentum", low=0, high=1, high_open=True),
    Knob("warmup_epochs", float, 0.0, "linear lr warm-up before the cosine decay", low=0),
    Knob("train_subset", int, per_scale(smoke=2048, cpu=None, gpu=None), "training images (None: the whole split)",
         low=1, nullable=True),
    Knob("eval_subset", int, per_scale(smoke=2048, cpu=10000, gpu=None), "train-split images of the kNN bank / "
         "linear-probe train set (None: all)", low=1, nullable=True),
    Knob("test_subset", int, per_scale(smoke=1000, cpu=None, gpu=None), "test images scored (None: all)", low=1,
         nullable=True),
    Knob("validation_images", int, 0, "training-split images held out from training as the per-epoch monitor's "
         "queries: what a study's search and early stopping select on (0: the monitor scores a fixed subset of the "
         "test split, as the papers' curves do)", low=0),
    Knob("class_split", str, "all", "half: train on the first half of the classes, score retrieval on the unseen "
         "half (zero-shot, document 003)", choices=("all", "half")),
    Knob("label_fraction", float, 1.0, "class-stratified fraction of the training labels kept", low=0, high=1,
         low_open=True),
    Knob("init_from", str, None, "a run folder or checkpoint whose backbone initialises this run", nullable=True),
    Knob("workers", int, 1, "Ray Train workers (1: the loop in-process)", low=1, affects_result=False),
    Knob("grad_bucket_mb", float, 0.0, "workers > 1: average the gradients in buckets of this many MB launched "
         "during backward, as DDP does (0: one all_reduce after backward; lab.distributed.GradientBuckets)", low=0,
         affects_result=False),
    Knob("threads", int, None, "torch intra-op threads per worker (None: torch's default)", low=1, nullable=True,
         affects_result=False),
    Knob("device", str, "auto", "auto / cpu / cuda", choices=("auto", "cpu", "cuda"), affects_result=False),
    Knob("precision", str, "auto", "matrix products in fp32, or bf16 under autocast (auto: bf16 where the device "
         "has fast bf16 units, fp32 elsewhere; lab.device)", choices=PRECISIONS),
    Knob("channels_last", bool, True, "convolution weights and views in NHWC, the layout the fastest kernels read",
         affects_result=False),
    Knob("compile", bool, False, "torch.compile the encoder (inductor): bench/throughput.py measures when it pays",
         affects_result=False),
)
GENERAL_GROUPS: dict[str, tuple[Knob, ...]] = {
    "run": RUN_KNOBS, "backbone": backbones.KNOBS, "head": heads.KNOBS, "views": views.KNOBS,
    "evaluation": evaluate.KNOBS,
}


@functools.lru_cache(maxsize=1)
def knob_table() -> KnobTable:
    """Every knob: the run's vocabularies, then each method's (cached; `knob_table.cache_clear()` after a
    declaration changes at run time, as a test does)."""
    table = KnobTable()
    for group, knobs in GENERAL_GROUPS.items():
        table.add(group, knobs)
    for name, cls in METHODS.items():
        table.add(name, cls.all_knobs())
        unknown = sorted(set(cls.all_defaults()) - set(general_names()) - {k.name for k in cls.all_knobs()})
        if unknown:
            raise ValueError(f"method {name}: defaults for {unknown}, which are not among its knobs")
    return table


def general_names() -> list[str]:
    return [k.name for knobs in GENERAL_GROUPS.values() for k in knobs]


def knob_names() -> list[str]:
    """Every knob's name: the results schema's configuration columns, in declaration order."""
    return list(knob_table().knobs)


def applicable_names(method: type[Method]) -> list[str]:
    return general_names() + [k.name for k in method.all_knobs()]


class _Resolution:
    """Every value of one config: the explicit one, else the method's default, else the knob's own.
    Rules read other knobs through `self.reader` (resolved on demand, cycles refused)."""

    def __init__(self, explicit: Mapping[str, Any], method: type[Method]):
        self.explicit, self.method = explicit, method
        self.table = knob_table().knobs
        self.names = applicable_names(method)
        self.method_defaults = method.all_defaults()
        self.values: dict[str, Any] = {}
        self.active: list[str] = []
        resolution = self

        class Reader:
            def __getattr__(self, name: str) -> Any:
                return resolution.get(name)

        self.reader = Reader()

    def default(self, name: str) -> Any:
        for source in (self.method_defaults.get(name, UNSET), self.table[name].default):
            value = source(self.reader) if isinstance(source, Rule) else source
            if value is not UNSET:
                return value
        raise ConfigError(f"{name} has no default for method {self.method.name} at this scale: give it a value")

    def get(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name not in self.names:
            raise AttributeError(f"{name} is not a knob of method {self.method.name}")
        if name in self.active:
            raise RuntimeError(f"the defaults of {' -> '.join(self.active + [name])} depend on each other")
        self.active.append(name)
        try:
            value = self.explicit[name] if name in self.explicit else self.table[name].check(self.default(name))
        finally:
            self.active.pop()
        self.values[name] = value
        return value

    def resolve(self) -> dict[str, Any]:
        return {name: self.get(name) for name in self.names}


class RunConfig:
    """One run's knobs: those given (`explicit`) and every applicable knob's resolved value (attributes)."""

    __slots__ = ("_explicit", "_values", "_method_class")

    def __init__(self, **values: Any):
        table = knob_table()
        unknown = sorted(set(values) - set(table.knobs))
        if unknown:
            hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, table.knobs, 1))
                     else name for name in unknown]
            raise ConfigError(f"unknown knob(s) {', '.join(hints)}; `python -m lab.train --help` lists them")
        method_name = table.knobs["method"].check(values.get("method", table.knobs["method"].default))
        method = get_method_class(method_name)
        applicable = set(applicable_names(method))
        explicit: dict[str, Any] = {}
        for name, value in values.items():
            if name not in applicable:
                owners = ", ".join(table.groups[name])
                raise ConfigError(f"{name} is a knob of {owners}, not of method {method_name}: leave it out or "
                                  f"choose one of those methods")
            explicit[name] = table.knobs[name].check(value)
        object.__setattr__(self, "_explicit", explicit)
        object.__setattr__(self, "_method_class", method)
        object.__setattr__(self, "_values", _Resolution(explicit, method).resolve())
        validate(self)

    # --- reading ----------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            if name in knob_table().knobs:
                raise AttributeError(f"{name} is not a knob of method {self._values['method']} (it belongs to "
                                     f"{', '.join(knob_table().groups[name])})") from None
            raise AttributeError(f"RunConfig has no knob {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RunConfig is immutable: use replace(**changes)")

    def __reduce__(self):
        return (_from_explicit, (self._explicit,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self._values == other._values

    def __hash__(self) -> int:
        return hash(json.dumps(self._values, sort_keys=True, default=list))

    def __repr__(self) -> str:
        return "RunConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._explicit.items()) + ")"

    @property
    def explicit(self) -> dict[str, Any]:
        """The knobs given, as given (a config's identity: `replace` starts from these)."""
        return dict(self._explicit)

    @property
    def method_class(self) -> type[Method]:
        return self._method_class

    @property
    def lr(self) -> float:
        """The peak learning rate: base_lr scaled from batch 256 to this batch size."""
        ratio = self.batch_size / 256
        return self.base_lr * (ratio if self.lr_scaling == "linear" else ratio ** 0.5)

    def to_row(self) -> dict[str, Any]:
        """Every knob as a column: the resolved value, None where the method has no such knob."""
        return {name: self._values.get(name) for name in knob_table().knobs}

    # --- deriving ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> "RunConfig":
        try:
            return cls(**dict(values))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def replace(self, **changes: Any) -> "RunConfig":
        """Another config: these knobs changed (UNSET: back to the default), the others as given here."""
        values = {**self._explicit, **changes}
        return RunConfig(**{k: v for k, v in values.items() if v is not UNSET})

    def for_method(self, changes: Mapping[str, Any]) -> "RunConfig":
        """A stage's config: `changes` (a method among them) over this config's given knobs that the stage's
        method also has (UNSET drops one back to its default)."""
        method = get_method_class(changes.get("method", self.method))
        keep = set(applicable_names(method))
        values = {k: v for k, v in self._explicit.items() if k in keep}
        values.update(changes)
        return RunConfig(**{k: v for k, v in values.items() if v is not UNSET})

    # --- identity ---------------------------------------------------------------------------------
    def default_of(self, name: str) -> Any:
        """The value `name` takes when it is not given (the other knobs as given)."""
        return _Resolution({k: v for k, v in self._explicit.items() if k != name}, self._method_class).get(name)

    def result_knobs(self) -> dict[str, Any]:
        """The resolved knobs that decide the result (not how the run is executed)."""
        table = knob_table().knobs
        return {k: v for k, v in self._values.items() if table[k].affects_result}

    def fingerprint(self) -> str:
        """A hash of the method and of every result-deciding knob that differs from its default."""
        changed = {k: v for k, v in self.result_knobs().items() if k in self._explicit and v != self.default_of(k)}
        changed["method"] = self.method
        return hashlib.sha1(json.dumps(changed, sort_keys=True, default=list).encode()).hexdigest()[:12]

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """How this config differs from a stored one (a checkpoint's `config`), knob by knob: a knob the
        stored config lacks (declared since) counts only if it is not at its default here."""
        out = []
        for name, value in self.result_knobs().items():
            if name not in stored:
                if value != self.default_of(name):
                    out.append(f"{name}={value!r} (the stored run predates this knob: it ran at the default)")
            elif _comparable(stored[name]) != _comparable(value):
                out.append(f"{name}: stored {stored[name]!r}, now {value!r}")
        return out


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _from_explicit(values: dict[str, Any]) -> RunConfig:
    return RunConfig(**values)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    """The rules between run-level knobs, on resolved values; then the method's own (`check`)."""
    _check(cfg.batch_size % cfg.workers == 0,
           f"batch_size={cfg.batch_size} is the global batch and must divide evenly over workers={cfg.workers}")
    _check(cfg.batch_size // cfg.workers >= 2,
           f"batch_size={cfg.batch_size} over workers={cfg.workers} leaves < 2 samples per worker (BatchNorm needs 2)")
    side = DATASETS[cfg.dataset].image_size
    _check(cfg.local_crop_size <= side,
           f"local_crop_size={cfg.local_crop_size} is larger than {cfg.dataset}'s {side}-px images: multi-crop's "
           f"small crops must fit the image; use local_crop_size <= {side}")
    _check(cfg.local_crop_min_scale <= cfg.local_crop_max_scale,
           f"local_crop_max_scale={cfg.local_crop_max_scale} is below local_crop_min_scale={cfg.local_crop_min_scale}")
    if cfg.view_transforms:
        _check(cfg.method_class.n_views == 2 and cfg.local_crops == 0,
               f"view_transforms={cfg.view_transforms!r} is SimCLR Fig. 5's two-view ablation (one view as it is, "
               f"the other transformed): method {cfg.method} has {cfg.method_class.n_views} view(s) and local_crops="
               f"{cfg.local_crops}; use a two-view method without small crops, or leave view_transforms ''")
    if cfg.class_split == "half":
        classes = DATASETS[cfg.dataset].num_classes
        _check(classes >= 4, f"class_split='half' on {cfg.dataset} ({classes} classes) leaves fewer than 2 classes a "
                             "side: zero-shot retrieval needs >= 4 classes")
    _check(cfg.init_from is None or os.path.exists(cfg.init_from),
           f"init_from={cfg.init_from!r} does not exist: give a run folder holding checkpoint.pt, or the checkpoint file")
    backbones.check_ba2m_blocks(cfg.backbone, cfg.ba2m_blocks)
    cfg.method_class.check(cfg)


def grouped_knobs() -> dict[str, list[Knob]]:
    """The knobs by where they are declared: the run's vocabularies, knobs shared by several methods, then
    each method's own (what `--help` shows)."""
    table = knob_table()
    groups: dict[str, list[Knob]] = {group: list(knobs) for group, knobs in GENERAL_GROUPS.items()}
    groups["shared by several methods"] = []
    for name, knob in table.knobs.items():
        owners = table.groups[name]
        if owners[0] in GENERAL_GROUPS:
            continue
        key = "shared by several methods" if len(owners) > 1 else owners[0]
        groups.setdefault(key, []).append(knob)
    return {k: v for k, v in groups.items() if v}


def method_defaults_text(knob: Knob, methods: Iterable[str] | None = None) -> str:
    """The knob's default, with each method's own where it has one ('simclr 0.5, moco 0.2')."""
    owners = list(methods) if methods is not None else [m for m, cls in METHODS.items()
                                                         if knob.name in cls.all_defaults()]
    per_method = []
    for name in owners:
        value = METHODS[name].all_defaults().get(knob.name, UNSET)
        if value is not UNSET:
            per_method.append(f"{name} {value}")
    own = "" if knob.default is UNSET else knob.default_text()
    return ", ".join(per_method + ([f"otherwise {own}" if per_method else own] if own else []))
