"""Datasets: scikit-learn's bundled 8x8 digits (default) or MNIST-format IDX files, split deterministically."""

from __future__ import annotations

import dataclasses
import gzip
import re
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from experiment.errors import UsageError

DEFAULT_DATASET = "digits"

# IDX magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


@dataclasses.dataclass(frozen=True)
class Split:
    """One part of a dataset: raw images (N, H, W) float32 and integer labels (N,)."""

    images: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset split into train, validation and test parts, with what the network needs to know of it."""

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    pixel_max: float  # the largest intensity the format can store: 16 for digits, 255 for IDX

    @property
    def image_shape(self) -> tuple[int, int]:
        """Height and width of one image."""
        height, width = self.train.images.shape[1:]
        return height, width


def load_dataset(
    data_dir: Path | None = None,
    seed: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load the bundled digits (data_dir None) or the IDX files in data_dir, split by the seed."""
    if data_dir is None:
        return _load_digits(seed, validation_fraction, test_fraction)
    return _load_idx_folder(Path(data_dir), seed, validation_fraction)


def _load_digits(seed: int, validation_fraction: float, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), intensities 0..16
    labels = bunch.target.astype(np.int64)
    rest_images, test_images, rest_labels, test_labels = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    train, validation = _split_validation(rest_images, rest_labels, seed, validation_fraction / (1 - test_fraction))
    return Dataset(
        name=DEFAULT_DATASET,
        train=train,
        validation=validation,
        test=Split(test_images, test_labels),
        num_classes=10,
        pixel_max=16.0,
    )


def _split_validation(
    images: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], seed: int, fraction: float
) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    # Stratifying needs two examples of every class present and room for one of each in the validation part.
    can_stratify = counts[counts > 0].min() >= 2 and fraction * len(labels) >= np.count_nonzero(counts)
    train_images, validation_images, train_labels, validation_labels = train_test_split(
        images, labels, test_size=fraction, random_state=seed, stratify=labels if can_stratify else None
    )
    return Split(train_images, train_labels), Split(validation_images, validation_labels)


def dataset_name_for(data_dir: Path | None) -> str:
    """The model name a dataset gives its exports: 'digits', or the IDX folder's name made URL-safe."""
    if data_dir is None:
        return DEFAULT_DATASET
    name = re.sub(r"[^a-z0-9_-]+", "-", Path(data_dir).resolve().name.lower()).strip("-")
    return name or "idx"


def _find_idx_file(data_dir: Path, prefix: str, kind: str) -> Path:
    """Find e.g. train-images-idx3-ubyte, train-images.idx3-ubyte or either with .gz."""
    candidates = sorted(
        path
        for path in data_dir.iterdir()
        if path.is_file() and re.fullmatch(rf"{prefix}[-.]{kind}-ubyte(\.gz)?", path.name)
    )
    if not candidates:
        raise UsageError(
            f"{data_dir} has no {prefix}-{kind}-ubyte file (gzipped or not); expected MNIST-format IDX files."
        )
    return candidates[0]


def read_idx(path: Path, expected_magic: int) -> npt.NDArray[np.uint8]:
    """Read one IDX file (gzipped or not) into a uint8 array, checking its magic number and length."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError) as error:
        raise UsageError(f"Cannot read IDX file {path}: {error}.") from None
    if len(content) < 4:
        raise UsageError(f"IDX file {path} is truncated: it has only {len(content)} bytes.")
    (magic,) = struct.unpack(">I", content[:4])
    if magic != expected_magic:
        raise UsageError(f"IDX file {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x}.")
    dimensions = magic & 0xFF
    header_size = 4 + 4 * dimensions
    if len(content) < header_size:
        raise UsageError(f"IDX file {path} is truncated inside its header.")
    shape = struct.unpack(f">{dimensions}I", content[4:header_size])
    expected_size = header_size + int(np.prod(shape))
    if len(content) != expected_size:
        raise UsageError(
            f"IDX file {path} is truncated or padded: its header promises {expected_size} bytes, it has {len(content)}."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_idx_pair(data_dir: Path, prefix: str) -> Split:
    images = read_idx(_find_idx_file(data_dir, f"{prefix}-images", "idx3"), IDX_IMAGES_MAGIC)
    labels = read_idx(_find_idx_file(data_dir, f"{prefix}-labels", "idx1"), IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise UsageError(f"{data_dir}: {prefix} has {len(images)} images but {len(labels)} labels.")
    return Split(images.astype(np.float32), labels.astype(np.int64))


def _load_idx_folder(data_dir: Path, seed: int, validation_fraction: float) -> Dataset:
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a directory.")
    full_train = _read_idx_pair(data_dir, "train")
    test = _read_idx_pair(data_dir, "t10k")
    if full_train.images.shape[1:] != test.images.shape[1:]:
        raise UsageError(
            f"{data_dir}: train images are {full_train.images.shape[1:]} but test images are {test.images.shape[1:]}."
        )
    num_classes = int(max(full_train.labels.max(), test.labels.max())) + 1
    train, validation = _split_validation(full_train.images, full_train.labels, seed, validation_fraction)
    return Dataset(
        name=dataset_name_for(data_dir),
        train=train,
        validation=validation,
        test=test,
        num_classes=num_classes,
        pixel_max=255.0,
    )


def write_idx(path: Path, array: npt.ArrayLike) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz); used to make test data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())
