"""The datasets: the bundled digits split, and the IDX reader on files the tests write themselves."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from experiment import data
from experiment.errors import UsageError


def test_digits_split_is_stratified_deterministic_and_disjoint(digits):
    again = data.load_dataset(seed=0)
    assert np.array_equal(digits.test.images, again.test.images)
    sizes = (len(digits.train), len(digits.validation), len(digits.test))
    assert sum(sizes) == 1797
    assert digits.image_shape == (8, 8) and digits.num_classes == 10 and digits.pixel_max == 16.0
    assert digits.train.images.dtype == np.float32 and digits.train.labels.dtype == np.int64
    # Stratified: every class's share of the test split is within one image of its share overall.
    all_labels = np.concatenate([digits.train.labels, digits.validation.labels, digits.test.labels])
    for label in range(10):
        expected = (all_labels == label).mean() * len(digits.test)
        assert abs((digits.test.labels == label).sum() - expected) <= 1
    # Disjoint: no image of the test split appears in training (the digits set has no exact duplicates across).
    train_rows = {row.tobytes() for row in digits.train.images}
    assert not any(row.tobytes() in train_rows for row in digits.test.images)


def test_another_seed_gives_another_split(digits):
    other = data.load_dataset(seed=1)
    assert not np.array_equal(digits.test.images, other.test.images)


def _write_mnist_like(folder, gzipped: bool, count: int = 60, shape=(6, 5)):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gzipped else ""
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        data.write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        data.write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_folder_loads(tmp_path, gzipped):
    folder = tmp_path / "Fashion-MNIST"
    folder.mkdir()
    test_images, test_labels = _write_mnist_like(folder, gzipped)
    dataset = data.load_dataset(folder, seed=0)
    assert dataset.name == "fashion-mnist"
    assert dataset.image_shape == (6, 5) and dataset.pixel_max == 255.0 and dataset.num_classes == 10
    assert np.array_equal(dataset.test.images, test_images.astype(np.float32))
    assert np.array_equal(dataset.test.labels, test_labels)
    assert len(dataset.train) + len(dataset.validation) == 60


def test_idx_reader_rejects_wrong_magic(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    data.write_idx(path, np.zeros((4,), dtype=np.uint8))
    with pytest.raises(UsageError, match="magic number 0x00000801, expected 0x00000803"):
        data.read_idx(path, data.IDX_IMAGES_MAGIC)


@pytest.mark.parametrize("cut", [2, 10, 30])
def test_idx_reader_rejects_truncated_files(tmp_path, cut):
    path = tmp_path / "images.idx3-ubyte"
    data.write_idx(path, np.ones((3, 4, 4), dtype=np.uint8))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) - cut] if cut != 2 else content[:2])
    with pytest.raises(UsageError, match="truncated"):
        data.read_idx(path, data.IDX_IMAGES_MAGIC)


def test_idx_reader_rejects_a_broken_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 40)[:-12])
    with pytest.raises(UsageError):
        data.read_idx(path, data.IDX_IMAGES_MAGIC)


def test_idx_folder_without_files_names_the_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no train-images-idx3-ubyte file"):
        data.load_dataset(tmp_path)


def test_idx_folder_with_mismatched_counts(tmp_path):
    _write_mnist_like(tmp_path, gzipped=False)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((7,), dtype=np.uint8))
    with pytest.raises(UsageError, match="60 images but 7 labels"):
        data.load_dataset(tmp_path)
