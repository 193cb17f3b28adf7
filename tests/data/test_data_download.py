"""Opt-in download, against a local HTTP server on 127.0.0.1 serving archives in the real formats.

Nothing here reaches the network: torchvision's CIFAR-10/MNIST sources and the CIFAR-10-C URL
are pointed at the local server, with the checksums of the small archives it serves.
"""

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, MNIST

from normzoo.data import load, load_cifar10c
from normzoo.data.download import download


@pytest.fixture
def server(tmp_path):
    """(base URL, folder it serves) of an HTTP server on 127.0.0.1 in a thread."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar(members: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cifar10_archive(rng):
    members, batches = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps(
            {b"data": data, b"labels": labels, b"batch_label": b"x"}, protocol=2
        )
        batches[name] = (data, labels)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [b"x"] * 10, b"num_vis": 3072}, protocol=2
    )
    return members, batches


def _point_cifar10_at(monkeypatch, url, archive):
    """torchvision's CIFAR-10 source, pointed at the local server with this archive's MD5."""
    monkeypatch.setattr(CIFAR10, "url", url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(archive))


def test_cifar10_download_through_torchvision(server, tmp_path, monkeypatch):
    base, served = server
    members, batches = _cifar10_archive(np.random.default_rng(0))
    archive = _tar(members, "w:gz")
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    _point_cifar10_at(monkeypatch, base + "cifar-10-python.tar.gz", archive)
    root = tmp_path / "data"
    download("cifar10", root)
    splits = load("cifar10", root)
    assert splits.train_images.shape == (20, 3, 32, 32) and splits.test_images.shape == (
        4,
        3,
        32,
        32,
    )
    data, labels = batches["data_batch_2"]
    assert np.array_equal(splits.train_images[4:8].reshape(4, -1).numpy(), data)
    assert splits.train_labels[4:8].tolist() == labels
    (served / "cifar-10-python.tar.gz").unlink()
    download("cifar10", root)  # complete on disk: not fetched again (the server has nothing now)


def test_cifar10_wrong_checksum_is_refused(server, tmp_path, monkeypatch):
    base, served = server
    members, _ = _cifar10_archive(np.random.default_rng(1))
    archive = _tar(members, "w:gz")
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    _point_cifar10_at(monkeypatch, base + "cifar-10-python.tar.gz", archive)
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    with pytest.raises(RuntimeError):
        download("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()  # never unpacked


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_mnist_download_through_torchvision(server, tmp_path, monkeypatch):
    base, served = server
    rng = np.random.default_rng(2)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (6,)),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (4,)),
    }
    resources = []
    for name, array in arrays.items():
        blob = gzip.compress(_idx(array))
        (served / f"{name}.gz").write_bytes(blob)
        resources.append((f"{name}.gz", _md5(blob)))
    monkeypatch.setattr(MNIST, "mirrors", [base])
    monkeypatch.setattr(MNIST, "resources", resources)
    root = tmp_path / "data"
    download("mnist", root)
    splits = load("mnist", root)
    assert np.array_equal(splits.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(splits.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def _cifar10c_archive(rng):
    from normzoo.data import CIFAR10C_CORRUPTIONS

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    images = {
        c: rng.integers(0, 256, (5 * 2, 32, 32, 3), dtype=np.uint8) for c in CIFAR10C_CORRUPTIONS
    }
    members = {f"CIFAR-10-C/{c}.npy": npy(x) for c, x in images.items()}
    members["CIFAR-10-C/labels.npy"] = npy(np.tile(np.arange(2, dtype=np.uint8), 5))
    return _tar(members, "w"), images


def test_cifar10c_download_with_checksum(server, tmp_path):
    base, served = server
    archive, images = _cifar10c_archive(np.random.default_rng(3))
    (served / "CIFAR-10-C.tar").write_bytes(archive)
    root = tmp_path / "data"
    with pytest.raises(RuntimeError):
        download("cifar10c", root, url=base + "CIFAR-10-C.tar", md5="f" * 32)
    assert not (root / "CIFAR-10-C").exists()
    download("cifar10c", root, url=base + "CIFAR-10-C.tar", md5=_md5(archive))
    x, y = load_cifar10c(root, "fog", 4)
    assert torch.equal(x, torch.from_numpy(images["fog"][6:8]).permute(0, 3, 1, 2))
    assert y.tolist() == [0, 1]
    assert not (root / "CIFAR-10-C.tar").exists()  # the archive is removed once unpacked
