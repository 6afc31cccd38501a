"""Data sets (MNIST, Fashion-MNIST, CIFAR-10), the paper's 5×2 split, tf.data pipelines.

Local files are read in their official formats: the IDX files of MNIST and
Fashion-MNIST (gzip-compressed or not) and the CIFAR-10 binary batches. Without
a directory, tensorflow-datasets downloads the data (needs internet).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_pnil import augmentation
from keras_pnil.augmentation import check_augmentation
from keras_pnil.pipeline import steady
from keras_pnil.validation import check_choice, check_count, check_images, check_same_length

DATA_DIR_ENV = "KERAS_PNIL_DATA_DIR"
DATASETS = ("mnist", "fashion_mnist", "cifar10")
# The paper's L∞ radii for pixels in [0, 1].
DEFAULT_EPSILON = {"mnist": 8 / 255, "fashion_mnist": 4 / 255, "cifar10": 0.03}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_IDX_IMAGE_MAGIC, _IDX_LABEL_MAGIC = 2051, 2049
_CIFAR_RECORDS_PER_FILE = 10000
_CIFAR_RECORD = 1 + 32 * 32 * 3


class DatasetError(ValueError):
    """A data file is missing, corrupt or not what was asked for."""


def check_dataset_name(name: str) -> None:
    """Raises a ValueError naming the data sets there are, unless `name` is one."""
    check_choice("data set", name, DATASETS)


def _find_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"Missing data file: neither {stem}.gz nor {stem} in {directory}.")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetError(f"Corrupt data file {path}: {err}") from err


def read_idx(path: Path, magic: int, expected_count: int | None = None) -> np.ndarray:
    """Reads one IDX file (images or labels) and checks its header against its size."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DatasetError(f"Corrupt IDX file {path}: only {len(raw)} bytes, no header.")
    found_magic = int.from_bytes(raw[0:4], "big")
    if found_magic != magic:
        raise DatasetError(
            f"Corrupt IDX file {path}: bad magic number {found_magic}, expected {magic}."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected_bytes = header + int(np.prod(dims))
    if len(raw) != expected_bytes:
        state = "truncated" if len(raw) < expected_bytes else "too long"
        raise DatasetError(
            f"Corrupt IDX file {path}: {state}, {len(raw)} bytes where the header "
            f"{dims} implies {expected_bytes}."
        )
    if expected_count is not None and dims[0] != expected_count:
        raise DatasetError(
            f"Wrong image count in {path}: {dims[0]} records, expected {expected_count}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _dataset_directory(name: str, data_dir: Path) -> Path:
    """`data_dir/name` when it exists (the shared layout), else `data_dir` itself."""
    nested = data_dir / name
    if nested.is_dir():
        return nested
    if name == "cifar10" and (data_dir / "cifar-10-batches-bin").is_dir():
        return data_dir / "cifar-10-batches-bin"
    if not data_dir.is_dir():
        raise DatasetError(f"Data directory {data_dir} does not exist: point data_dir or ${DATA_DIR_ENV} at a "
                           "folder holding the official files.")
    return data_dir


def _load_idx_split(directory: Path, split: str, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem, count = _IDX_FILES[split]
    images = read_idx(_find_file(directory, image_stem), _IDX_IMAGE_MAGIC, count)
    labels = read_idx(_find_file(directory, label_stem), _IDX_LABEL_MAGIC, count)
    if images.shape[1:] != shape[:2]:
        raise DatasetError(
            f"Wrong image size in {directory / image_stem}: {images.shape[1:]}, "
            f"expected {shape[:2]}."
        )
    if labels.max() > 9:
        raise DatasetError(f"Corrupt labels in {directory / label_stem}: label {labels.max()} > 9.")
    return images[..., None], labels


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"Missing data file: {path}.")
    raw = _read_bytes(path)
    expected = _CIFAR_RECORDS_PER_FILE * _CIFAR_RECORD
    # The official files hold 10,000 records each; a smaller file of whole records (a subset, or synthetic
    # test data in the same layout) is read as it is.
    if len(raw) != expected and (not raw or len(raw) % _CIFAR_RECORD):
        raise DatasetError(
            f"Corrupt CIFAR-10 file {path}: {len(raw)} bytes, expected {expected} "
            f"({_CIFAR_RECORDS_PER_FILE} records of {_CIFAR_RECORD} bytes), or a whole number of records."
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise DatasetError(f"Corrupt CIFAR-10 file {path}: label {labels.max()} > 9.")
    # Records store each image channel-major (1024 R, 1024 G, 1024 B): to NHWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _load_cifar_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    parts = [_read_cifar_file(directory / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_tfds(name: str, splits=("train", "test")):
    # A local import: tensorflow-datasets takes seconds to import and is needed only without local files.
    import tensorflow_datasets as tfds

    try:
        splits = tfds.load(name, split=list(splits), as_supervised=True, batch_size=-1)
    except Exception as err:  # tfds raises many types (connection, checksum, download) for one cause
        raise DatasetError(
            f"tensorflow-datasets could not provide {name!r} ({type(err).__name__}: {str(err)[:200]}). "
            f"Without internet, point ${DATA_DIR_ENV} or data_dir at a folder holding the official files."
        ) from err
    return [(np.asarray(x), np.asarray(y)) for x, y in tfds.as_numpy(splits)]


def _to_float(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None):
    """Loads a data set as float32 NHWC images in [0, 1] and integer labels.

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        data_dir: Directory holding the official files (directly, or in a
            sub-directory named after the data set). Defaults to the
            `KERAS_PNIL_DATA_DIR` environment variable; when neither is set the
            data come from tensorflow-datasets.

    Returns:
        `(x_train, y_train), (x_test, y_test)`.
    """
    return tuple(_load_splits(name, ("train", "test"), data_dir))


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split ("train" or "test") of a data set, as `load_dataset` gives it, reading only that split's files.

    Example:
        >>> x_test, y_test = load_split("mnist", "test")
    """
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; expected 'train' or 'test'.")
    return _load_splits(name, (split,), data_dir)[0]


def _load_splits(name: str, splits, data_dir) -> list:
    check_dataset_name(name)
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir is None:
        loaded = _load_tfds(name, splits)
    else:
        directory = _dataset_directory(name, Path(data_dir))
        if name == "cifar10":
            loaded = [_load_cifar_split(directory, s) for s in splits]
        else:
            loaded = [_load_idx_split(directory, s, IMAGE_SHAPES[name]) for s in splits]
    return [_to_float(*split) for split in loaded]


@dataclass(frozen=True)
class Fold:
    """One train/test/validation split of the 5×2-fold protocol (index arrays)."""

    repetition: int
    fold: int
    train: np.ndarray  # half of the official training set
    test: np.ndarray  # the other half, where the fold is scored
    validation: np.ndarray  # half of the official test set, for checkpoint selection


def five_by_two_folds(
    n_train: int, n_test: int, seed: int = 0, repetitions: int = 5
) -> list[Fold]:
    """The paper's protocol: `repetitions` × 2 folds of the training set.

    Each repetition shuffles the training set and cuts it in two halves; fold 0
    trains on the first and is scored on the second, fold 1 the other way round.
    The official test set is shuffled and cut into halves too, fold k validating
    on half k. Every index array is reproducible from `seed`.
    """
    if repetitions < 1 or n_train < 2 or n_test < 2:
        raise ValueError(
            f"Need repetitions >= 1 and at least 2 train and test examples; got "
            f"repetitions={repetitions}, n_train={n_train}, n_test={n_test}."
        )
    rng = np.random.default_rng(seed)
    folds = []
    for repetition in range(repetitions):
        train_halves = np.array_split(rng.permutation(n_train), 2)
        test_halves = np.array_split(rng.permutation(n_test), 2)
        for fold in range(2):
            folds.append(
                Fold(repetition, fold, np.sort(train_halves[fold]),
                     np.sort(train_halves[1 - fold]), np.sort(test_halves[fold]))
            )
    return folds


def make_dataset(x, y, batch_size: int = 100, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = False, augment: str = "none"):
    """A shuffled, batched, prefetched `tf.data.Dataset` of `(x, y)`, with autotuning off (`pipeline.steady`).

    `augment` ("none" or "crop_flip", see `keras_pnil.augmentation`) transforms every batch, drawn
    afresh each epoch from `seed`: give it to the training set only. The pipeline holds no Python
    generator, so `tf.distribute` strategies can split its batches across replicas.

    Example:
        >>> ds = make_dataset(x_train, y_train, batch_size=128, seed=0, augment="crop_flip")  # doctest: +SKIP
    """
    check_images(x)
    check_same_length(x, y)
    check_count("batch_size", batch_size)
    check_augmentation(augment)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = augmentation.augment(ds.batch(batch_size, drop_remainder=drop_remainder), augment, seed)
    return steady(ds.prefetch(tf.data.AUTOTUNE))


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A user's own evaluation set: a `.npz` file with `x` (N, H, W, C) floats in [0, 1] and `y` (N,) labels.

    Raises a `DatasetError` naming the problem: an unreadable file, a missing
    array, images that are not a batch of floats, lengths that differ. The
    values and labels are checked against the model by `inputs.check_inputs`.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in ("x", "y") if name not in arrays.files]
            if missing:
                raise DatasetError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it lacks "
                                   f"{' and '.join(map(repr, missing))} (it has {sorted(arrays.files)}).")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"cannot read {path} as a .npz file: {err}") from None
    if x.ndim != 4:
        raise DatasetError(f"{path}: x must be shaped (N, height, width, channels); got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{path}: x must hold floats in [0, 1]; got {x.dtype} (divide 8-bit pixels by 255).")
    if len(x) != len(y):
        raise DatasetError(f"{path}: x holds {len(x)} images but y {len(y)} labels.")
    if not len(x):
        raise DatasetError(f"{path} holds no images.")
    # Values and labels are checked against the model, by the same boundary as the Python API's.
    return x.astype(np.float32), y
