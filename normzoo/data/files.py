"""Readers for real datasets in their standard on-disk formats. normzoo never downloads.

- CIFAR-10: the python pickle batches ``cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}`` (https://www.cs.toronto.edu/~kriz/cifar.html).
- MNIST: torchvision's layout ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or
  ``.gz``), the IDX format of http://yann.lecun.com/exdb/mnist/.
- CIFAR-10-C: ``CIFAR-10-C/<corruption>.npy`` uint8 (50000, 32, 32, 3) and ``labels.npy``; severity
  s is rows (s-1)*10000 to s*10000 (Hendrycks & Dietterich 2019, zenodo.org/record/2535967).
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

CIFAR10C_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


def data_root(root: str | os.PathLike | None) -> Path:
    """Dataset root: ``root`` if given, else ``$NORMZOO_DATA``, else ``~/.cache/normzoo/data``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("NORMZOO_DATA", Path.home() / ".cache" / "normzoo" / "data"))


def _find_dir(root: Path, folder: str, required: tuple[str, ...], what: str, url: str) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds ``required``; else FileNotFoundError."""
    for candidate in (root / folder, root):
        if all(_existing(candidate / name) for name in required):
            return candidate
    missing = [name for name in required if not _existing(root / folder / name)]
    raise FileNotFoundError(
        f"{what} not found: expected {', '.join(missing)} in {root / folder}. "
        f"normzoo never downloads data; get {what} from {url}, unpack it so that these files "
        f"are in {root / folder}, and pass root={str(root)!r} (or set $NORMZOO_DATA)."
    )


def _existing(path: Path) -> Path | None:
    """``path`` or ``path.gz`` if one of them exists."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_cifar10(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, ...]:
    """CIFAR-10 from its python pickle batches: uint8 (N, 3, 32, 32) images, int64 labels."""
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
    folder = _find_dir(
        data_root(root),
        "cifar-10-batches-py",
        files,
        "CIFAR-10 (python version)",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    )

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return train_x, train_y, test_x, test_y


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): big-endian magic 0x0000 0x08 ndim, then dims, then uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {body.size} bytes but its header says {tuple(dims)}")
    return body.reshape(tuple(dims))


def load_mnist(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, ...]:
    """MNIST from torchvision's raw IDX files: uint8 (N, 1, 28, 28) images, int64 labels."""
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    folder = _find_dir(
        data_root(root),
        "MNIST/raw",
        names,
        "MNIST",
        "http://yann.lecun.com/exdb/mnist/ (or any mirror)",
    )
    arrays = [_read_idx(_existing(folder / name)) for name in names]
    train_x, train_y, test_x, test_y = (torch.from_numpy(a.copy()) for a in arrays)
    return train_x[:, None], train_y.long(), test_x[:, None], test_y.long()


def load_cifar10c(
    root: str | os.PathLike | None, corruption: str, severity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10-C images (uint8 (10000, 3, 32, 32)) and int64 labels of one corruption/severity."""
    if corruption not in CIFAR10C_CORRUPTIONS:
        raise ValueError(
            f"corruption={corruption!r} is not a CIFAR-10-C file; use one of {CIFAR10C_CORRUPTIONS}"
        )
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity={severity!r} not allowed; CIFAR-10-C has severities 1..5")
    folder = _find_dir(
        data_root(root),
        "CIFAR-10-C",
        (f"{corruption}.npy", "labels.npy"),
        "CIFAR-10-C",
        "https://zenodo.org/record/2535967 (CIFAR-10-C.tar)",
    )
    images = np.load(folder / f"{corruption}.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy", mmap_mode="r")
    per_severity = images.shape[0] // 5
    if images.ndim != 4 or images.shape[0] % 5 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{folder / corruption}.npy has shape {images.shape} with {labels.shape[0]} labels; "
            "expected (5*n, H, W, C) uint8 and as many labels (CIFAR-10-C: (50000, 32, 32, 3))"
        )
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    x = torch.from_numpy(np.ascontiguousarray(images[rows].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
    return x.to(torch.uint8), y
