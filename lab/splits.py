"""The images of a run: its training set, the evaluation bank and the test set.

- class_split='half' (zero-shot retrieval, document 003): training sees only the first half of the
  classes; the bank and the test images are those of the unseen second half (relabelled from 0).
  CUB-200 and Cars196 use every image of the unseen classes (Song et al. 2016's protocol).
- label_fraction < 1 keeps a class-stratified fraction of the training images (few-label fine-tuning).
- validation_images > 0 holds that many training-split images out of training (out of the unseen classes'
  bank under class_split='half'): the per-epoch monitor's queries, so that a study's search and early
  stopping never select on the test split. With 0, the monitor scores a fixed subset of the test split.
- Subsets are fixed by dataset (seed 0), not by the run's seed: every run of a study sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.data import DATASETS, ImageSet, load_split
from lab.errors import ConfigError


# The per-epoch monitor: kNN of these many queries against these many bank images, cheap on 2 cores.
MONITOR_BANK, MONITOR_QUERIES = 5000, 1000
VALIDATION_SEED = 1  # the held-out images are drawn apart from the subsets' (seed 0)


@dataclass
class RunData:
    train: ImageSet
    bank: ImageSet  # train-split images whose features the kNN / linear probe fit on
    test: ImageSet
    validation: ImageSet | None = None  # held out of training (validation_images), the monitor's queries

    @property
    def monitor_bank(self) -> ImageSet:
        return self.bank.subset(MONITOR_BANK)

    @property
    def monitor_queries(self) -> ImageSet:
        """The monitor's queries: the validation images if the run holds some out, else a test subset."""
        return self.validation if self.validation is not None else self.test.subset(MONITOR_QUERIES)

    @property
    def sources(self) -> dict[str, str]:
        """The folder (or file) each split was read from: a run's results row and checkpoints record them."""
        return {"train_data_source": self.train.source, "test_data_source": self.test.source}


def load_run_data(cfg, download: bool = False) -> RunData:
    """The run's training images, its evaluation bank and its test images."""
    train_split = load_split(cfg.dataset, "train", cfg.data_root, download)
    test_split = load_split(cfg.dataset, "test", cfg.data_root, download)
    bank_split = train_split
    if cfg.class_split == "half":
        seen = train_split.num_classes // 2
        unseen_test = test_split.classes(seen, test_split.num_classes)
        if DATASETS[cfg.dataset].zero_shot_all_images:
            unseen_test = unseen_test.concat(train_split.classes(seen, train_split.num_classes))
        train_split, bank_split = train_split.classes(0, seen), train_split.classes(seen, train_split.num_classes)
        test_split = unseen_test
    validation = None
    if cfg.validation_images:
        # out of the images the monitor's kNN labels come from: the bank's split (the training split, or
        # the unseen classes' training images under class_split='half')
        if cfg.validation_images >= len(bank_split):
            raise ConfigError(f"validation_images={cfg.validation_images} holds out every one of the {len(bank_split)} "
                              f"{cfg.dataset} images it is drawn from: use fewer (1000 is plenty for the monitor)")
        validation, rest = bank_split.split_off(cfg.validation_images, VALIDATION_SEED)
        train_split = rest if bank_split is train_split else train_split
        bank_split = rest
    return RunData(train_split.subset(cfg.train_subset).labelled_fraction(cfg.label_fraction),
                   bank_split.subset(cfg.eval_subset), test_split.subset(cfg.test_subset), validation)
