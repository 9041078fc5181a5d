"""Readers of the datasets' real on-disk formats, each failing with one clear error.

- IDX (MNIST / Fashion-MNIST), optionally gzipped: magic 0x00000801 (labels) / 0x00000803 (images).
- CIFAR-10 / CIFAR-100 "python version": pickled dicts with b"data" (N x 3072 uint8, CHW) and
  b"labels" / b"fine_labels".
- STL-10 binary: *_X.bin uint8 images stored column-major (N x 3 x 96 x 96 with W and H swapped),
  *_y.bin uint8 labels 1..10.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from lab.errors import DatasetError


def _fail(path: Path, problem: str, fix: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}. Fix: {fix}")


def read_idx(path: Path, fix: str) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its declared shape."""
    if not path.exists():
        raise _fail(path, "file not found", fix)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise _fail(path, f"cannot be read ({exc})", fix) from exc
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise _fail(path, "not an IDX file of unsigned bytes (bad magic number)", fix)
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise _fail(path, f"truncated or corrupt: header says {shape} = {expected} bytes, "
                          f"file holds {len(raw) - header}", fix)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_cifar_batches(paths: list[Path], label_key: bytes, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR python batches -> (N x 3 x 32 x 32 uint8, N int64)."""
    images, labels = [], []
    for path in paths:
        if not path.exists():
            raise _fail(path, "file not found", fix)
        try:
            with open(path, "rb") as fh:
                entry = pickle.load(fh, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as exc:  # unpickling errors come in many types
            raise _fail(path, f"not a readable CIFAR batch ({type(exc).__name__}: {exc})", fix) from exc
        if len(data) != len(target):
            raise _fail(path, f"{len(data)} images but {len(target)} labels", fix)
        images.append(data)
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


STL10_SIDE = 96


def read_stl10(images_path: Path, labels_path: Path | None, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 binary -> (N x 3 x 96 x 96 uint8, N int64 with labels 0..9, or -1 if unlabeled)."""
    if not images_path.exists():
        raise _fail(images_path, "file not found", fix)
    raw = np.fromfile(images_path, dtype=np.uint8)
    per_image = 3 * STL10_SIDE * STL10_SIDE
    if raw.size == 0 or raw.size % per_image:
        raise _fail(images_path, f"size {raw.size} bytes is not a multiple of one image ({per_image})", fix)
    images = raw.reshape(-1, 3, STL10_SIDE, STL10_SIDE).transpose(0, 1, 3, 2)
    if labels_path is None:
        return np.ascontiguousarray(images), np.full(len(images), -1, dtype=np.int64)
    if not labels_path.exists():
        raise _fail(labels_path, "file not found", fix)
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise _fail(labels_path, f"{len(labels)} labels in 1..10 expected for {len(images)} images", fix)
    return np.ascontiguousarray(images), labels
