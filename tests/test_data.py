import dataclasses

import numpy as np
import pytest
import torch

from lab.data import DatasetError, load_split
from tests.fixtures import write_cifar10, write_cifar100, write_fashion_mnist, write_stl10


def _fresh(name, split, root):
    from lab.data import _load_cached

    _load_cached.cache_clear()
    return load_split(name, split, root)


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_idx_files(tmp_path, split):
    expected = write_fashion_mnist(tmp_path)[split]
    data = _fresh("fashion_mnist", split, tmp_path)
    assert data.images.shape == (len(expected[0]), 1, 28, 28)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), expected[0])
    np.testing.assert_array_equal(data.labels.numpy(), expected[1])


def test_cifar10_python_batches(tmp_path):
    expected = write_cifar10(tmp_path)
    for split in ("train", "test"):
        data = _fresh("cifar10", split, tmp_path)
        np.testing.assert_array_equal(data.images.numpy(), expected[split][0])
        np.testing.assert_array_equal(data.labels.numpy(), expected[split][1])
        assert data.num_classes == 10
    assert len(_fresh("cifar10", "train", tmp_path)) == 5 * 6


def test_cifar100_fine_labels(tmp_path):
    expected = write_cifar100(tmp_path)
    data = _fresh("cifar100", "test", tmp_path)
    np.testing.assert_array_equal(data.images.numpy(), expected["test"][0])
    np.testing.assert_array_equal(data.labels.numpy(), expected["test"][1])
    assert data.num_classes == 100


def test_stl10_binary_is_read_row_major(tmp_path):
    expected = write_stl10(tmp_path)
    for split in ("train", "test", "unlabeled"):
        data = _fresh("stl10", split, tmp_path)
        np.testing.assert_array_equal(data.images.numpy(), expected[split][0])  # catches a missed transpose
    np.testing.assert_array_equal(_fresh("stl10", "train", tmp_path).labels.numpy(), expected["train"][1])
    assert (_fresh("stl10", "unlabeled", tmp_path).labels == -1).all()


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3: file not found\. Fix: .*--download"):
        _fresh("cifar10", "train", tmp_path)


def test_corrupt_files_name_the_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR batch"):
        _fresh("cifar10", "test", tmp_path)
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match=r"test_X\.bin: size 100 bytes"):
        _fresh("stl10", "test", tmp_path)


def test_truncated_idx_names_the_file(tmp_path):
    write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    import gzip

    raw = gzip.open(path).read()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:-10])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: truncated or corrupt.*Fix: .*apt-get"):
        _fresh("fashion_mnist", "test", tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match="unknown"):
        load_split("imagenet", "train")
    with pytest.raises(DatasetError, match="no split 'unlabeled'"):
        load_split("cifar10", "unlabeled")


def test_embedded_fashion_mnist_is_the_real_one():
    from lab.data import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    train, test = load_split("fashion_mnist", "train"), load_split("fashion_mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels.bincount().tolist() == [6000] * 10


@pytest.mark.parametrize("name, writer", [("tiny_imagenet", "write_tiny_imagenet"), ("cub200", "write_cub200"),
                                          ("cars196", "write_cars196")])
def test_image_folder_datasets_read_their_real_layouts(tmp_path, name, writer):
    import tests.fixtures as fixtures
    from lab.data import DATASETS, _load_cached, load_split

    expected = getattr(fixtures, writer)(tmp_path)
    for split in ("train", "test"):
        data = load_split(name, split, tmp_path)
        assert data.images.dtype == torch.uint8 and tuple(data.images.shape[1:]) == (3, 64, 64)
        assert data.labels.tolist() == expected[f"{split}_labels"]
        assert data.num_classes == DATASETS[name].num_classes
    _load_cached.cache_clear()


def test_image_folder_datasets_say_what_is_missing(tmp_path):
    from lab.data import DatasetError, _load_cached, load_split

    with pytest.raises(DatasetError, match=r"wnids.txt: file not found. Fix: rerun with download enabled"):
        load_split("tiny_imagenet", "train", tmp_path)
    with pytest.raises(DatasetError, match=r"images.txt: file not found.*CUB_200_2011.tgz"):
        load_split("cub200", "test", tmp_path)
    with pytest.raises(DatasetError, match=r"cars_train_annos.mat: file not found.*stanford_cars"):
        load_split("cars196", "train", tmp_path)
    _load_cached.cache_clear()


def test_zero_shot_split_trains_on_the_first_half_and_retrieves_the_unseen_half(tmp_path, monkeypatch):
    import lab.data
    from lab.config import RunConfig
    from lab.data import _load_cached
    from lab.splits import load_run_data

    raw = write_fashion_mnist(tmp_path, n_train=200, n_test=100)
    train_labels, test_labels = raw["train"][1], raw["test"][1]
    cfg = RunConfig(data_root=str(tmp_path), class_split="half")
    data = load_run_data(cfg)
    assert data.train.labels.tolist() == [c for c in train_labels.tolist() if c < 5] and data.train.num_classes == 5
    # the unseen classes 5..9, relabelled 0..4: the test split's only (Fashion-MNIST)
    assert data.test.labels.tolist() == [c - 5 for c in test_labels.tolist() if c >= 5]
    assert data.bank.labels.tolist() == [c - 5 for c in train_labels.tolist() if c >= 5]
    # CUB / Cars protocol: every image of the unseen classes
    spec = dataclasses.replace(lab.data.DATASETS["fashion_mnist"], zero_shot_all_images=True)
    monkeypatch.setitem(lab.data.DATASETS, "fashion_mnist", spec)
    data = load_run_data(cfg)
    assert len(data.test) == (test_labels >= 5).sum() + (train_labels >= 5).sum()
    _load_cached.cache_clear()


def test_validation_images_are_held_out_of_training_and_are_the_monitors_queries(tmp_path):
    """validation_images: that many training-split images out of training (and out of the kNN bank), what the
    per-epoch monitor queries; without them the monitor scores a test subset. Under class_split='half' they
    come from the unseen classes' images, the bank's, never trained on."""
    from lab.config import RunConfig
    from lab.errors import ConfigError
    from lab.splits import MONITOR_QUERIES, load_run_data

    write_fashion_mnist(tmp_path, n_train=300, n_test=100)
    plain = load_run_data(RunConfig(data_root=str(tmp_path)))
    assert plain.validation is None and len(plain.monitor_queries) == min(MONITOR_QUERIES, len(plain.test))
    data = load_run_data(RunConfig(data_root=str(tmp_path), validation_images=50))
    held = {bytes(image.numpy()) for image in data.validation.images}
    assert len(data.validation) == 50 and data.monitor_queries is data.validation
    assert len(data.train) == 250 and not held & {bytes(image.numpy()) for image in data.train.images}
    assert not held & {bytes(image.numpy()) for image in data.monitor_bank.images}
    assert len(data.test) == len(plain.test)  # the test split is untouched
    half = load_run_data(RunConfig(data_root=str(tmp_path), validation_images=20, class_split="half"))
    assert len(half.validation) == 20 and (half.validation.labels < 5).all()  # unseen classes, relabelled
    assert len(half.train) == len(load_run_data(RunConfig(data_root=str(tmp_path), class_split="half")).train)
    with pytest.raises(ConfigError, match="validation_images=300 holds out every one of the 300"):
        load_run_data(RunConfig(data_root=str(tmp_path), validation_images=300))
