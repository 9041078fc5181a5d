"""Readers of the datasets' real on-disk formats, each failing with one clear error.

- IDX (MNIST / Fashion-MNIST), optionally gzipped: magic 0x00000801 (labels) / 0x00000803 (images).
- CIFAR-10 / CIFAR-100 "python version": pickled dicts with b"data" (N x 3072 uint8, CHW) and
  b"labels" / b"fine_labels", read by an unpickler that builds only what that format holds (dicts,
  lists, bytes, str, numbers and numpy arrays of unsigned or signed integers): a crafted batch file
  cannot run code.
- STL-10 binary: *_X.bin uint8 images stored column-major (N x 3 x 96 x 96 with W and H swapped),
  *_y.bin uint8 labels 1..10.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
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
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or garbled .gz raises zlib's own error
        raise _fail(path, f"cannot be read ({exc})", fix) from None
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


# What a CIFAR batch's pickle may name: numpy's array reconstruction (numpy 1 and 2 paths) and dtypes.
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class _Refused(pickle.UnpicklingError):
    """The batch holds (or would build) something no CIFAR batch holds."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"it names {module}.{name}, which no CIFAR batch holds")


def _checked_cifar_value(value, depth: int = 0):
    """The value if it is made of what the CIFAR format holds, else UnpicklingError."""
    if depth > 4:
        raise _Refused("nested deeper than a CIFAR batch")
    if isinstance(value, dict):
        for k, v in value.items():
            _checked_cifar_value(k, depth + 1)
            _checked_cifar_value(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _checked_cifar_value(v, depth + 1)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "ui":
            raise _Refused(f"an array of dtype {value.dtype}; CIFAR batches hold integers only")
    elif not isinstance(value, (bytes, str, int, float)) or isinstance(value, bool):
        raise _Refused(f"a {type(value).__name__}, which no CIFAR batch holds")
    return value


def load_cifar_pickle(path: Path):
    """One CIFAR batch file through the restricted unpickler."""
    with open(path, "rb") as fh:
        return _checked_cifar_value(_CifarUnpickler(io.BytesIO(fh.read()), encoding="bytes").load())


def read_cifar_batches(paths: list[Path], label_key: bytes, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR python batches -> (N x 3 x 32 x 32 uint8, N int64)."""
    images, labels = [], []
    for path in paths:
        if not path.exists():
            raise _fail(path, "file not found", fix)
        try:
            entry = load_cifar_pickle(path)
        except _Refused as exc:
            raise DatasetError(f"{path}: refused, not a CIFAR batch ({exc}); nothing in it was run. Fix: replace it "
                               f"with the real file ({fix})") from None
        except Exception as exc:  # truncated or garbled pickles fail in many ways
            raise _fail(path, f"not a readable CIFAR batch ({type(exc).__name__}: {exc})", fix) from None
        try:
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(path, f"not a CIFAR batch ({type(exc).__name__}: {exc})", fix) from None
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
