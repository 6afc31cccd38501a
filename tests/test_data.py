import gzip

import numpy as np
import pytest
import tensorflow as tf

from keras_pnil.data import DatasetError, five_by_two_folds, load_dataset, make_dataset

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_loads_official_idx_files(name, data_dir):
    (x_train, y_train), (x_test, y_test) = load_dataset(name, data_dir)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and x_train.min() == 0.0 and x_train.max() == 1.0
    assert y_train.shape == (60000,) and set(np.unique(y_test)) == set(range(10))
    if name == "mnist":
        assert np.bincount(y_test).tolist() == MNIST_TEST_COUNTS
    else:  # Fashion-MNIST is balanced
        assert np.bincount(y_train).tolist() == [6000] * 10


def test_environment_variable_points_at_the_data(monkeypatch, data_dir):
    monkeypatch.setenv("KERAS_PNIL_DATA_DIR", str(data_dir))
    (_, y), _ = load_dataset("fashion_mnist")
    assert len(y) == 60000


def _write_idx(path, magic, dims, payload: bytes, compress=True):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + payload)


def _fake_mnist(directory, n_test=10000, image_bytes=None, magic=2051):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 60000), ("t10k", 10000 if n_test is None else n_test)):
        images = image_bytes if image_bytes is not None and stem == "t10k" else bytes(n * 784)
        _write_idx(directory / f"{stem}-images-idx3-ubyte.gz", magic, [n, 28, 28], images)
        _write_idx(directory / f"{stem}-labels-idx1-ubyte.gz", 2049, [n], bytes(n))


def test_bad_magic_number_is_named(tmp_path):
    _fake_mnist(tmp_path / "mnist", magic=1234)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: bad magic number 1234"):
        load_dataset("mnist", tmp_path)


def test_truncated_file_is_named(tmp_path):
    _fake_mnist(tmp_path / "mnist", image_bytes=bytes(1000))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: truncated"):
        load_dataset("mnist", tmp_path)


def test_wrong_image_count_is_named(tmp_path):
    _fake_mnist(tmp_path / "mnist", n_test=500)
    with pytest.raises(DatasetError, match=r"Wrong image count .*t10k-images.*500 records, expected 10000"):
        load_dataset("mnist", tmp_path)


def test_missing_and_corrupt_gzip_files_are_named(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DatasetError, match="Missing data file: .*train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    _fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="Corrupt data file .*train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="Unknown data set 'svhn'"):
        load_dataset("svhn", "/nonexistent")


def _write_cifar(directory, rng):
    directory.mkdir(parents=True)
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, size=(10000, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, size=10000)
        (directory / name).write_bytes(rec.tobytes())
        records[name] = rec
    return records


def test_cifar10_binary_batches_load_channel_major_records_as_nhwc(tmp_path):
    records = _write_cifar(tmp_path / "cifar-10-batches-bin", np.random.default_rng(0))
    (x_train, y_train), (x_test, y_test) = load_dataset("cifar10", tmp_path)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    first = records["test_batch.bin"][0]
    assert y_test[0] == first[0]
    # Record layout: label, 1024 red, 1024 green, 1024 blue bytes, each row-major.
    assert x_test[0, 0, 1, 0] == pytest.approx(first[1 + 1] / 255)
    assert x_test[0, 0, 0, 2] == pytest.approx(first[1 + 2048] / 255)
    assert y_train[10000] == records["data_batch_2.bin"][0, 0]


def test_cifar10_wrong_size_is_named(tmp_path):
    _write_cifar(tmp_path / "cifar10", np.random.default_rng(1))
    (tmp_path / "cifar10" / "data_batch_3.bin").write_bytes(bytes(100))
    with pytest.raises(DatasetError, match="data_batch_3.bin: 100 bytes, expected 30730000"):
        load_dataset("cifar10", tmp_path)


def test_five_by_two_folds_partition_and_reproduce():
    folds = five_by_two_folds(100, 20, seed=3)
    assert len(folds) == 10
    for a, b in zip(folds[::2], folds[1::2], strict=True):
        assert np.array_equal(a.train, b.test) and np.array_equal(a.test, b.train)
        assert sorted(np.concatenate([a.train, a.test])) == list(range(100))
        assert sorted(np.concatenate([a.validation, b.validation])) == list(range(20))
    assert not np.array_equal(folds[0].train, folds[2].train)  # repetitions reshuffle
    again = five_by_two_folds(100, 20, seed=3)
    assert all(np.array_equal(f.train, g.train) and np.array_equal(f.validation, g.validation)
               for f, g in zip(folds, again, strict=True))


def test_make_dataset_batches_and_rejects_bad_range():
    x = np.random.default_rng(0).uniform(size=(250, 4, 4, 1)).astype("float32")
    y = np.zeros(250, np.int64)
    sizes = [int(b[0].shape[0]) for b in make_dataset(x, y, batch_size=100)]
    assert sizes == [100, 100, 50]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*255"):
        make_dataset(x * 255, y)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = strategy.experimental_distribute_dataset(make_dataset(x, y, batch_size=100, drop_remainder=True))
    assert len(list(dist)) == 2


def test_offline_tfds_failure_says_how_to_use_local_files(monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.delenv("KERAS_PNIL_DATA_DIR", raising=False)
    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(DatasetError, match=r"could not provide 'mnist' \(ConnectionError.*KERAS_PNIL_DATA_DIR"):
        load_dataset("mnist")
