import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from normzoo.data import check_files, load, load_cifar10, load_cifar10c, load_mnist


def _write_cifar10(folder, rng):
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, handle)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_vis": 3072}, handle)
    return batches


@pytest.mark.parametrize("inside", [True, False])
def test_cifar10_reads_pickle_batches(tmp_path, inside):
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(0))
    root = tmp_path if inside else tmp_path / "cifar-10-batches-py"
    train_x, train_y, test_x, test_y = load_cifar10(root)
    assert train_x.shape == (15, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (3, 3, 32, 32) and train_y.dtype == torch.int64
    data, labels = batches["data_batch_2"]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    n, c, i, j = 1, 2, 5, 17
    assert train_x[3 + n, c, i, j] == data[n, c * 1024 + i * 32 + j]
    assert train_y[3:6].tolist() == labels
    assert test_y.tolist() == batches["test_batch"][1]
    splits = load("cifar10", root)
    assert splits.num_classes == 10 and splits.train_images.shape[0] == 15
    expected = train_x.double().mean(dim=(0, 2, 3)) / 255
    assert np.allclose(splits.mean, expected.numpy())


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_reads_idx_files(tmp_path, compressed):
    rng = np.random.default_rng(1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (6,)),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (4,)),
    }
    for name, array in arrays.items():
        if compressed:
            with gzip.open(raw / f"{name}.gz", "wb") as handle:
                handle.write(_idx(array))
        else:
            (raw / name).write_bytes(_idx(array))
    train_x, train_y, test_x, test_y = load_mnist(tmp_path)
    assert train_x.shape == (6, 1, 28, 28) and test_x.shape == (4, 1, 28, 28)
    assert np.array_equal(train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert train_y.dtype == torch.int64
    assert load("mnist", tmp_path).train_images.shape == (6, 1, 28, 28)


def test_mnist_bad_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]:
        (raw / name).write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        load_mnist(tmp_path)


def test_cifar10c_severity_rows(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    images = rng.integers(0, 256, (5 * 4, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.arange(4, dtype=np.uint8), 5)
    np.save(folder / "fog.npy", images)
    np.save(folder / "labels.npy", labels)
    for severity in (1, 3, 5):
        x, y = load_cifar10c(str(tmp_path), "fog", severity)
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        rows = images[(severity - 1) * 4 : severity * 4]
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), rows)
        assert y.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="severity=6"):
        load_cifar10c(str(tmp_path), "fog", 6)
    with pytest.raises(ValueError, match="'rain'"):
        load_cifar10c(str(tmp_path), "rain", 1)
    with pytest.raises(FileNotFoundError, match="snow.npy"):
        load_cifar10c(str(tmp_path), "snow", 1)


@pytest.mark.parametrize(
    "loader, expected",
    [(load_cifar10, "data_batch_1"), (load_mnist, "train-images-idx3-ubyte")],
)
def test_missing_dataset_says_where_and_never_downloads(tmp_path, loader, expected):
    with pytest.raises(FileNotFoundError) as error:
        loader(tmp_path)
    message = str(error.value)
    assert expected in message and str(tmp_path) in message and "never downloads" in message


def test_default_root_from_environment(tmp_path, monkeypatch):
    _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(3))
    monkeypatch.setenv("NORMZOO_DATA", str(tmp_path))
    assert load_cifar10()[0].shape == (15, 3, 32, 32)
    with pytest.raises(ValueError, match="takes no options"):
        load("cifar10", tmp_path, train_size=3)


def _pickle_with(tmp_path, payload) -> None:
    """A CIFAR-10 folder whose data_batch_1 is ``payload`` pickled (the rest are valid)."""
    _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(4))
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as handle:
        pickle.dump(payload, handle)


class _RunsShell:
    """What a crafted CIFAR batch looks like: unpickling calls os.system."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    _pickle_with(tmp_path, {b"data": _RunsShell(marker), b"labels": [0]})
    with pytest.raises(ValueError) as error:
        load_cifar10(tmp_path)
    assert not marker.exists()  # the command never ran
    message = str(error.value)
    assert "data_batch_1" in message and "refusing to load posix.system" in message


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "labels for 3 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 99]}, "labels must be"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "uint8 (N, 3072)"),
        ({b"images": np.zeros((2, 3072), np.uint8)}, "expected keys"),
        ([1, 2, 3], "expected keys"),
    ],
)
def test_cifar10_checks_counts_labels_and_shape_naming_the_file(tmp_path, payload, expected):
    _pickle_with(tmp_path, payload)
    with pytest.raises(ValueError) as error:
        load_cifar10(tmp_path)
    assert "data_batch_1" in str(error.value) and expected in str(error.value)


def test_cifar10_truncated_batch_names_the_file(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(5))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cifar10_batches_as_shipped_load(tmp_path):
    """The real files are Python 2 pickles (protocol 2, numpy arrays under numpy.core)."""
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(6))
    data, labels = batches["data_batch_3"]
    for protocol in (2, 5):
        with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle, protocol=protocol)
        train_x, train_y, _, _ = load_cifar10(tmp_path)
        assert np.array_equal(train_x[6:9].reshape(3, -1).numpy(), data)
        assert train_y[6:9].tolist() == labels


def test_mnist_label_count_must_match(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(7)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (5,)),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (4,)),
    }
    for name, array in arrays.items():
        (raw / name).write_bytes(_idx(array))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_cifar10c_refuses_object_arrays_and_bad_shapes(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "fog.npy", np.array([object()] * 5, dtype=object), allow_pickle=True)
    np.save(folder / "labels.npy", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="fog.npy"):
        load_cifar10c(str(tmp_path), "fog", 1)
    np.save(folder / "fog.npy", np.zeros((5, 32, 32, 3), np.uint8))
    np.save(folder / "labels.npy", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="fog.npy"):
        load_cifar10c(str(tmp_path), "fog", 1)


def test_check_files_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        check_files("cifar10", tmp_path)
    _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(8))
    check_files("cifar10", tmp_path)
    check_files("synthetic", tmp_path)  # nothing on disk to check
    with pytest.raises(FileNotFoundError, match="fog.npy"):
        check_files("cifar10", tmp_path, cifar10c=("fog",))


def test_mnist_corrupt_gzip_names_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_NAMES:
        (raw / f"{name}.gz").write_bytes(gzip.compress(_idx(np.zeros((2, 28, 28))))[:20])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)


MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
