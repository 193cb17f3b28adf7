"""Readers for real datasets in their standard on-disk formats (downloads: ``data.download``).

- CIFAR-10: the python pickle batches ``cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}`` (https://www.cs.toronto.edu/~kriz/cifar.html).
- MNIST: torchvision's layout ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or
  ``.gz``), the IDX format of http://yann.lecun.com/exdb/mnist/.
- CIFAR-10-C: ``CIFAR-10-C/<corruption>.npy`` uint8 (50000, 32, 32, 3) and ``labels.npy``; severity
  s is rows (s-1)*10000 to s*10000 (Hendrycks & Dietterich 2019, zenodo.org/record/2535967).
"""

from __future__ import annotations

import gzip
import importlib
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


def _find_dir(root: Path, folder: str, what: str, required: tuple[str, ...], url: str) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds ``required``; else FileNotFoundError."""
    for candidate in (root / folder, root):
        if all(_existing(candidate / name) for name in required):
            return candidate
    missing = [name for name in required if not _existing(root / folder / name)]
    raise FileNotFoundError(
        f"{what} not found: expected {', '.join(missing)} in {root / folder}. "
        f"normzoo never downloads data unless asked: get {what} from {url}, unpack it so that "
        f"these files are in {root / folder}, and pass root={str(root)!r} (or set "
        "$NORMZOO_DATA); or let the benchmark fetch it with data.download: true (--download)."
    )


def _existing(path: Path) -> Path | None:
    """``path`` or ``path.gz`` if one of them exists."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10 = ("cifar-10-batches-py", "CIFAR-10 (python version)")
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_MNIST = ("MNIST/raw", "MNIST")
_MNIST_URL = "http://yann.lecun.com/exdb/mnist/ (or any mirror)"
_CIFAR10C = ("CIFAR-10-C", "CIFAR-10-C")
_CIFAR10C_URL = "https://zenodo.org/record/2535967 (CIFAR-10-C.tar)"

# The only globals a CIFAR-10 python batch needs: numpy's array reconstruction (protocol 2 as
# shipped, 4 and 5 as numpy writes today) and the codec that protocol 2 uses for bytes.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes, str, numbers and numpy arrays, nothing else.

    ``pickle.load`` runs whatever callable a file names; a crafted ``data_batch_1`` would run a
    shell command. Any global outside ``_PICKLE_GLOBALS`` is refused before it is imported.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only dicts, lists, "
                "bytes and numpy arrays"
            )
        for candidate in (module.replace("numpy.core", "numpy._core"), module):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name} in this numpy")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 batch, checked."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as error:
        raise ValueError(f"{path} is not a readable CIFAR-10 python batch: {error}") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: expected keys b'data', b'labels', got {keys}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072) images"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(
            f"{path}: {labels.shape} labels for {len(data)} images; expected one label per image"
        )
    if len(labels) and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{path}: labels must be integers in 0..9, got {labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, ...]:
    """CIFAR-10 from its python pickle batches: uint8 (N, 3, 32, 32) images, int64 labels.

    The batches are read with a restricted unpickler (numpy arrays and plain containers only),
    and image/label counts and the label range are checked; errors name the file.
    """
    folder = _find_dir(data_root(root), *_CIFAR10, CIFAR10_FILES, _CIFAR10_URL)

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_read_cifar_batch(folder / name) for name in names]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        return torch.from_numpy(images), torch.from_numpy(labels)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return train_x, train_y, test_x, test_y


def check_files(dataset: str, root: str | os.PathLike | None, cifar10c: tuple[str, ...] = ()):
    """Raise FileNotFoundError/PermissionError unless the dataset's files exist and can be read.

    ``dataset`` is ``cifar10`` or ``mnist`` (other names need no files); ``cifar10c`` lists
    CIFAR-10-C corruptions whose ``.npy`` files must be there too. Nothing is loaded.
    """
    base = data_root(root)
    paths = []
    if dataset == "cifar10":
        folder = _find_dir(base, *_CIFAR10, CIFAR10_FILES, _CIFAR10_URL)
        paths += [folder / name for name in CIFAR10_FILES]
    elif dataset == "mnist":
        folder = _find_dir(base, *_MNIST, MNIST_FILES, _MNIST_URL)
        paths += [_existing(folder / name) for name in MNIST_FILES]
    if cifar10c:
        names = tuple(f"{c}.npy" for c in cifar10c) + ("labels.npy",)
        folder = _find_dir(base, *_CIFAR10C, names, _CIFAR10C_URL)
        paths += [folder / name for name in names]
    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            raise PermissionError(f"{path} exists but cannot be read: {error.strerror}") from error


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): big-endian magic 0x0000 0x08 ndim, then dims, then uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # unreadable, or a truncated/corrupt .gz
        raise ValueError(f"{path} cannot be read as an IDX file: {error}") from error
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
    folder = _find_dir(data_root(root), *_MNIST, MNIST_FILES, _MNIST_URL)
    paths = [_existing(folder / name) for name in MNIST_FILES]
    arrays = [_read_idx(path) for path in paths]
    for images, labels, (path, label_path) in (
        (arrays[0], arrays[1], paths[:2]),
        (arrays[2], arrays[3], paths[2:]),
    ):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{path} holds images {images.shape} and {label_path} labels {labels.shape}; "
                "expected (N, H, W) images and N labels"
            )
        if len(labels) and labels.max() > 9:
            raise ValueError(f"{label_path}: labels must be in 0..9, got max {labels.max()}")
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
        data_root(root), *_CIFAR10C, (f"{corruption}.npy", "labels.npy"), _CIFAR10C_URL
    )
    arrays = []
    for path in (folder / f"{corruption}.npy", folder / "labels.npy"):
        try:  # allow_pickle=False (numpy's default): an object array is refused, never run
            arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
        except (ValueError, OSError) as error:
            raise ValueError(f"{path} is not a readable .npy array: {error}") from error
    images, labels = arrays
    per_severity = images.shape[0] // 5
    if (
        images.ndim != 4
        or images.dtype != np.uint8
        or images.shape[0] % 5
        or labels.ndim != 1
        or labels.shape[0] != images.shape[0]
    ):
        raise ValueError(
            f"{folder / corruption}.npy is {images.dtype} {images.shape} with {labels.shape} "
            f"labels in {folder / 'labels.npy'}; expected uint8 (5*n, H, W, C) and as many "
            "labels (CIFAR-10-C: (50000, 32, 32, 3))"
        )
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    x = torch.from_numpy(np.ascontiguousarray(images[rows].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
    return x.to(torch.uint8), y
