"""The images of a run: its training set, the evaluation bank and the test set.

- class_split='half' (zero-shot retrieval, document 003): training sees only the first half of the
  classes; the bank and the test images are those of the unseen second half (relabelled from 0).
  CUB-200 and Cars196 use every image of the unseen classes (Song et al. 2016's protocol).
- label_fraction < 1 keeps a class-stratified fraction of the training images (few-label fine-tuning).
- Subsets are fixed by dataset (seed 0), not by the run's seed: every run of a study sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.data import DATASETS, ImageSet, load_split


@dataclass
class RunData:
    train: ImageSet
    bank: ImageSet  # train-split images whose features the kNN / linear probe fit on
    test: ImageSet

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
    return RunData(train_split.subset(cfg.train_subset).labelled_fraction(cfg.label_fraction),
                   bank_split.subset(cfg.eval_subset), test_split.subset(cfg.test_subset))
