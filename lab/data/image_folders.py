"""Datasets shipped as folders of JPEG files with their own index files, in their real layouts.

- Tiny ImageNet (tiny-imagenet-200, the CS231n archive; PNDA's Table 2): wnids.txt (200 wnids, the
  class order), train/<wnid>/images/*.JPEG, val/images/*.JPEG labelled by val/val_annotations.txt
  (file, wnid, box). The val split is the test split (the test images have no labels). 64 x 64.
- CUB-200-2011 (the Caltech archive; document 003's retrieval): CUB_200_2011/images.txt (id, path),
  image_class_labels.txt (id, class 1..200), train_test_split.txt (id, 1 = train), images/<path>.
- Cars196 (torchvision's StanfordCars layout): stanford_cars/devkit/cars_train_annos.mat and
  cars_test_annos_withlabels.mat (struct arrays with fname and class 1..196), cars_train/, cars_test/.

Images are decoded once per process, resized (shorter side) and centre-cropped to
IMAGE_SIDE px, and held as uint8 tensors like every other dataset of the lab. The zero-shot
retrieval protocol of CUB and Cars (first half of the classes for training, the other half
for retrieval, all of their images: Song et al. 2016) reads both splits: see
DatasetSpec.zero_shot_all_images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from lab.errors import DatasetError

IMAGE_SIDE = 64  # in-memory side of the fine-grained datasets (Tiny ImageNet's native size)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CUB_URL = "https://data.caltech.edu/records/65de6-vyk28/files/CUB_200_2011.tgz"


def decode_images(paths: list[Path], side: int, fix: str) -> np.ndarray:
    """JPEG/PNG files -> uint8 N x 3 x side x side (shorter side resized to `side`, centre crop)."""
    from PIL import Image

    out = np.empty((len(paths), 3, side, side), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                w, h = image.size
                scale = side / min(w, h)
                image = image.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BILINEAR)
                w, h = image.size
                left, top = (w - side) // 2, (h - side) // 2
                out[i] = np.asarray(image.crop((left, top, left + side, top + side))).transpose(2, 0, 1)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot read the image ({exc}). Fix: {fix}") from exc
    return out


def _read_lines(path: Path, fix: str) -> list[list[str]]:
    if not path.exists():
        raise DatasetError(f"{path}: file not found. Fix: {fix}")
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _download(url: str, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, str(root))


# ---------------------------------------------------------------------------------------
def load_tiny_imagenet(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "tiny-imagenet-200"
    if download and not folder.exists():
        _download(TINY_IMAGENET_URL, root)
    fix = (f"rerun with download enabled (--download) to fetch {TINY_IMAGENET_URL} into {root}, or unpack "
           f"tiny-imagenet-200.zip there")
    wnids = [row[0] for row in _read_lines(folder / "wnids.txt", fix)]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
        paths, labels = [], []
        for wnid in wnids:
            files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            if not files:
                raise DatasetError(f"{folder / 'train' / wnid / 'images'}: no JPEG images. Fix: {fix}")
            paths += files
            labels += [index[wnid]] * len(files)
    else:
        rows = _read_lines(folder / "val" / "val_annotations.txt", fix)
        unknown = sorted({row[1] for row in rows} - set(index))
        if unknown:
            raise DatasetError(f"{folder / 'val' / 'val_annotations.txt'}: wnids {unknown[:3]} are not in wnids.txt. "
                               f"Fix: {fix}")
        paths = [folder / "val" / "images" / row[0] for row in rows]
        labels = [index[row[1]] for row in rows]
    return decode_images(paths, IMAGE_SIDE, fix), np.array(labels, dtype=np.int64)


def load_cub200(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "CUB_200_2011"
    if download and not folder.exists():
        _download(CUB_URL, root)
    fix = f"rerun with download enabled (--download) to fetch {CUB_URL} into {root}, or unpack CUB_200_2011.tgz there"
    paths = {row[0]: row[1] for row in _read_lines(folder / "images.txt", fix)}
    classes = {row[0]: int(row[1]) - 1 for row in _read_lines(folder / "image_class_labels.txt", fix)}
    is_train = {row[0]: row[1] == "1" for row in _read_lines(folder / "train_test_split.txt", fix)}
    if not (paths.keys() == classes.keys() == is_train.keys()):
        raise DatasetError(f"{folder}: images.txt, image_class_labels.txt and train_test_split.txt list different "
                           f"image ids. Fix: {fix}")
    ids = sorted((i for i in paths if is_train[i] == (split == "train")), key=int)
    images = decode_images([folder / "images" / paths[i] for i in ids], IMAGE_SIDE, fix)
    return images, np.array([classes[i] for i in ids], dtype=np.int64)


def load_cars196(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    folder = root / "stanford_cars"
    if download and not folder.exists():
        from torchvision.datasets import StanfordCars

        StanfordCars(str(root), split=split, download=True)
    fix = (f"place torchvision's 'stanford_cars' folder (devkit/, cars_train/, cars_test/, "
           f"cars_test_annos_withlabels.mat) in {root}, or rerun with download enabled (--download)")
    if split == "train":
        annotations, images_folder = folder / "devkit" / "cars_train_annos.mat", folder / "cars_train"
    else:
        annotations, images_folder = folder / "cars_test_annos_withlabels.mat", folder / "cars_test"
    if not annotations.exists():
        raise DatasetError(f"{annotations}: file not found. Fix: {fix}")
    records = np.atleast_1d(loadmat(str(annotations), squeeze_me=True)["annotations"])
    try:
        paths = [images_folder / str(r["fname"]) for r in records]
        labels = np.array([int(r["class"]) - 1 for r in records], dtype=np.int64)
    except (ValueError, KeyError) as exc:
        raise DatasetError(f"{annotations}: annotations without fname / class ({exc}). Fix: {fix}") from exc
    return decode_images(paths, IMAGE_SIDE, fix), labels


LOADERS: dict[str, Callable[[Path, str, bool], tuple[np.ndarray, np.ndarray]]] = {
    "tiny_imagenet": load_tiny_imagenet, "cub200": load_cub200, "cars196": load_cars196}
FOLDER_NAMES = {"tiny_imagenet": "tiny-imagenet-200", "cub200": "CUB_200_2011", "cars196": "stanford_cars"}
