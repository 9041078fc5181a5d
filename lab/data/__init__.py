"""Datasets as in-memory uint8 tensors (N x C x H x W) with integer labels.

The images stay uint8 in memory and are augmented batch-wise on the training device
(`lab.views`), so there is no per-image PIL pipeline competing with the step for the cores.

Fashion-MNIST is the embedded default: read from Debian's `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist) or from a torchvision download. CIFAR-10, CIFAR-100 and
STL-10 use torchvision's real download and on-disk formats.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lab.data import formula
from lab.data.formats import read_cifar_batches, read_idx, read_stl10
from lab.data.image_folders import FOLDER_NAMES, IMAGE_SIDE, LOADERS as FOLDER_LOADERS
from lab.data.imageset import DatasetSpec, ImageSet
from lab.errors import DatasetError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path(os.environ.get("LAB_DATA", Path.home() / ".cache" / "lab-data"))


# ---------------------------------------------------------------------------------------
# Fashion-MNIST
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _fashion_candidates(root: Path | None) -> list[Path]:
    """Where Fashion-MNIST is looked for: a data_root given by the user is the only place (itself, or
    torchvision's FashionMNIST/raw under it); without one, Debian's copy, then torchvision's cache."""
    if root is not None:
        return [root, root / "FashionMNIST" / "raw"]
    return [DEBIAN_FASHION_MNIST, DEFAULT_ROOT / "FashionMNIST" / "raw"]


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).exists():
            return directory / name
    return None


def _fashion_directory(root: Path | None, download: bool) -> Path:
    """The one folder both splits are read from: the first candidate that holds all four IDX files."""
    stems = [stem for files in FASHION_FILES.values() for stem in files]
    candidates = _fashion_candidates(root)
    for directory in candidates:
        if all(_find_idx(directory, stem) is not None for stem in stems):
            return directory
    if download:
        from torchvision.datasets import FashionMNIST

        target = root or DEFAULT_ROOT
        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
        return target / "FashionMNIST" / "raw"
    if root is not None:
        present = [d for d in candidates if d.is_dir()]
        missing = [stem + ".gz" for stem in stems if not any(_find_idx(d, stem) for d in present)]
        raise DatasetError(f"data_root={root}: Fashion-MNIST is not there (missing {', '.join(missing) or 'files'} in "
                           f"{root} and {root / 'FashionMNIST' / 'raw'}; only the data_root given is read). Fix: put "
                           "the four IDX files in that folder, rerun with --download to fetch them into it, or leave "
                           "data_root out to read the default location")
    raise DatasetError(f"Fashion-MNIST not found (looked in {', '.join(map(str, candidates))}). Fix: install Debian's "
                       "package (sudo apt-get install dataset-fashion-mnist), or rerun with --download to fetch it "
                       "with torchvision, or point data_root at a folder holding the four IDX files")


def _load_fashion_mnist(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
    directory = _fashion_directory(root, download)
    image_stem, label_stem = FASHION_FILES[split]
    fix = f"replace the damaged file in {directory} (Debian: sudo apt-get install --reinstall dataset-fashion-mnist)"
    images_path, labels_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    images, labels = read_idx(images_path, fix), read_idx(labels_path, fix).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}. "
                           f"Fix: {fix}")
    return images[:, None], labels, str(directory)


# ---------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python-pickle format and download)
def _cifar_loader(variant: str) -> Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray, str]]:
    def load(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if variant == "cifar10" else CIFAR100
        root = root or DEFAULT_ROOT
        folder = root / cls.base_folder
        if download and not folder.exists():
            cls(str(root), train=True, download=True)
        names = [n for n, _ in (cls.train_list if split == "train" else cls.test_list)]
        fix = (f"rerun with download enabled (--download) to fetch {variant} with torchvision into {root}, "
               f"or place torchvision's '{cls.base_folder}' folder there")
        label_key = b"labels" if variant == "cifar10" else b"fine_labels"
        return (*read_cifar_batches([folder / n for n in names], label_key, fix), str(folder))

    return load


# ---------------------------------------------------------------------------------------
# STL-10 (torchvision's binary format and download); "unlabeled" gives labels -1
def _load_stl10(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import STL10

    root = root or DEFAULT_ROOT
    folder = root / STL10.base_folder
    if download and not folder.exists():
        STL10(str(root), split="train", download=True)
    fix = (f"rerun with download enabled (--download) to fetch STL-10 with torchvision into {root}, "
           f"or place torchvision's '{STL10.base_folder}' folder there")
    labels = None if split == "unlabeled" else folder / f"{split}_y.bin"
    return (*read_stl10(folder / f"{split}_X.bin", labels, fix), str(folder))


def _rooted(name: str) -> Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray, str]]:
    def load(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
        root = root or DEFAULT_ROOT
        return (*FOLDER_LOADERS[name](root, split, download), str(root / FOLDER_NAMES[name]))

    return load


# ---------------------------------------------------------------------------------------
# Formula-driven sets (document 002), generated by lab.data.formula and cached as .npz under the
# data root: FORMULA_CATEGORIES categories; per category the first FORMULA_TRAIN images are the
# train split (FractalDB's 25 weightings x 4 flips), the next FORMULA_TEST (fresh chaos-game walks /
# jittered noise) the test split on which the pretraining's kNN is measured.
FORMULA_CATEGORIES, FORMULA_TRAIN, FORMULA_TEST, FORMULA_SIDE, FORMULA_SEED = 100, 100, 20, 28, 0


def _formula_loader(kind: str) -> Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray, str]]:
    def load(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
        per_category = FORMULA_TRAIN + FORMULA_TEST
        cache = (root or DEFAULT_ROOT) / "formula" / (
            f"{kind}_{FORMULA_CATEGORIES}x{per_category}_{FORMULA_SIDE}px_seed{FORMULA_SEED}.npz")
        if cache.exists():
            stored = np.load(cache)
            images, labels = stored["images"], stored["labels"]
        else:
            generate = formula.generate_fractaldb if kind == "fractaldb" else formula.generate_perlin
            data = generate(FORMULA_CATEGORIES, per_category, FORMULA_SIDE, FORMULA_SEED,
                            progress=formula.ProgressLine(f"generating {kind} into {cache}"))
            images, labels = data.images.numpy(), data.labels.numpy()
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # two processes generating at once: one file each
            np.savez(tmp, images=images, labels=labels)
            os.replace(tmp, cache)
        position = np.arange(len(labels)) % per_category  # category-major order
        keep = position < FORMULA_TRAIN if split == "train" else position >= FORMULA_TRAIN
        return images[keep], labels[keep], str(cache)

    return load


DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec("fashion_mnist", 10, 1, 28, ("train", "test"), _load_fashion_mnist),
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, ("train", "test"), _cifar_loader("cifar10")),
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, ("train", "test"), _cifar_loader("cifar100")),
    "stl10": DatasetSpec("stl10", 10, 3, 96, ("train", "test", "unlabeled"), _load_stl10),
    "tiny_imagenet": DatasetSpec("tiny_imagenet", 200, 3, IMAGE_SIDE, ("train", "test"), _rooted("tiny_imagenet")),
    "cub200": DatasetSpec("cub200", 200, 3, IMAGE_SIDE, ("train", "test"), _rooted("cub200"), zero_shot_all_images=True),
    "cars196": DatasetSpec("cars196", 196, 3, IMAGE_SIDE, ("train", "test"), _rooted("cars196"),
                           zero_shot_all_images=True),
    "fractaldb": DatasetSpec("fractaldb", FORMULA_CATEGORIES, 1, FORMULA_SIDE, ("train", "test"),
                             _formula_loader("fractaldb")),
    "perlin": DatasetSpec("perlin", FORMULA_CATEGORIES, 1, FORMULA_SIDE, ("train", "test"), _formula_loader("perlin")),
}


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, root: str | None, download: bool) -> ImageSet:
    spec = DATASETS[name]
    images, labels, source = spec.loader(Path(root) if root else None, split, download)
    return ImageSet(name, split, torch.from_numpy(np.array(images, copy=True)),
                    torch.from_numpy(np.array(labels, dtype=np.int64)), spec.num_classes, str(Path(source).resolve()))


def load_split(name: str, split: str, root: str | os.PathLike | None = None, download: bool = False) -> ImageSet:
    """One split of a dataset as an in-memory ImageSet (cached per process)."""
    if name not in DATASETS:
        raise DatasetError(f"dataset {name!r} is unknown; choose one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    if split not in spec.splits:
        raise DatasetError(f"{name} has no split {split!r}; it has {spec.splits}")
    return _load_cached(name, split, str(root) if root else None, download)


__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "ImageSet", "load_split"]
