"""Small datasets written in the real on-disk formats of torchvision's downloads."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    return data


def _pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(entry, fh)


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> dict:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}: dicts of bytes keys, data N x 3072 (CHW)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        _pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels,
                                b"data": images.reshape(per_batch, -1),
                                b"filenames": [f"{i}.png".encode() for i in range(per_batch)]})
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(images)
        out[split][1].extend(labels)
    _pickle(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)],
                                      b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in out.items()}


def write_cifar100(root: Path, n: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _pickle(folder / split, {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(),
                                 b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                                 b"data": images.reshape(n, -1)})
        out[split] = (images, np.array(fine))
    _pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    return out


def write_stl10(root: Path, n: int = 4, seed: int = 0) -> dict:
    """stl10_binary/{train,test}_{X,y}.bin: images column-major (each channel stored W-major), labels 1..10."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "test", "unlabeled"):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # column-major as in the real files
        labels = rng.integers(1, 11, n, dtype=np.uint8)
        if split != "unlabeled":
            labels.tofile(folder / f"{split}_y.bin")
        out[split] = (images, labels.astype(np.int64) - 1)
    (folder / "fold_indices.txt").write_text("0 1\n")
    return out


def _write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return pixels


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 2,
                        seed: int = 0) -> dict:
    """tiny-imagenet-200's layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt."""
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        for i in range(per_class):
            _write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, (64, 64))
    val_labels = [2, 0, 1, 2]
    rows = []
    for i, label in enumerate(val_labels):
        _write_jpeg(folder / "val" / "images" / f"val_{i}.JPEG", rng, (64, 64))
        rows.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return {"train_labels": [c for c in range(len(wnids)) for _ in range(per_class)], "test_labels": val_labels}


def write_cub200(root: Path, seed: int = 0) -> dict:
    """CUB_200_2011's layout: images.txt, image_class_labels.txt, train_test_split.txt, images/<class>/<file>.jpg."""
    rng = np.random.default_rng(seed)
    folder = root / "CUB_200_2011"
    classes = [1, 1, 2, 3, 3, 4]  # 1-based, as in the files
    is_train = [1, 0, 1, 1, 0, 0]
    images, labels, split = [], [], []
    for i, (c, t) in enumerate(zip(classes, is_train), start=1):
        path = f"{c:03d}.Bird_{c}/Bird_{c}_{i:04d}.jpg"
        _write_jpeg(folder / "images" / path, rng, (80 + 10 * i, 60))  # not square: resize + centre crop
        images.append(f"{i} {path}")
        labels.append(f"{i} {c}")
        split.append(f"{i} {t}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return {"train_labels": [c - 1 for c, t in zip(classes, is_train) if t],
            "test_labels": [c - 1 for c, t in zip(classes, is_train) if not t]}


def write_cars196(root: Path, seed: int = 0) -> dict:
    """torchvision's StanfordCars layout: devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_*/."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder = root / "stanford_cars"
    out = {}
    for split, mat, images_folder, classes in (
            ("train", folder / "devkit" / "cars_train_annos.mat", "cars_train", [1, 5, 196]),
            ("test", folder / "cars_test_annos_withlabels.mat", "cars_test", [196, 2])):
        records = np.zeros(len(classes), dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
                                                 ("bbox_y2", "O"), ("class", "O"), ("fname", "O")])
        for i, c in enumerate(classes):
            fname = f"{i + 1:05d}.jpg"
            _write_jpeg(folder / images_folder / fname, rng, (70, 50))
            records[i] = (1, 1, 60, 40, c, fname)
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(str(mat), {"annotations": records})
        out[f"{split}_labels"] = [c - 1 for c in classes]
    return out
