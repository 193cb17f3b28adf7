"""Opt-in download of the real datasets (never by default, never in tests or the default run).

- CIFAR-10 and MNIST through torchvision's downloader (``download_and_extract_archive``) with the
  URLs, mirrors and MD5 checksums of ``torchvision.datasets.CIFAR10`` / ``MNIST``, unpacked in
  torchvision's layout, which is the one ``normzoo.data.files`` reads (``cifar-10-batches-py/``,
  ``MNIST/raw/``). torchvision's dataset classes are not instantiated: CIFAR10 would
  ``pickle.load`` the batches, which normzoo reads with a restricted unpickler instead.
- CIFAR-10-C from its published archive (Hendrycks & Dietterich 2019, Zenodo record 2535967,
  ``CIFAR-10-C.tar``, MD5 as listed there), checked before it is unpacked into ``CIFAR-10-C/``.

A file whose checksum differs raises and is not unpacked; what is already on disk and complete
is never downloaded again.
"""

from __future__ import annotations

import os
from pathlib import Path

from normzoo.data.files import CIFAR10C_CORRUPTIONS, check_files, data_root

CIFAR10C_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
CIFAR10C_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"
DOWNLOADABLE = ("cifar10", "mnist", "cifar10c")


def download(
    dataset: str,
    root: str | os.PathLike | None = None,
    url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Fetch ``dataset`` (``cifar10``, ``mnist`` or ``cifar10c``) into ``root`` unless present.

    ``url``/``md5`` override the CIFAR-10-C archive's source (a mirror); CIFAR-10 and MNIST use
    torchvision's sources. Returns the root. Raises RuntimeError when a checksum does not match.
    """
    if dataset not in DOWNLOADABLE:
        raise ValueError(f"cannot download {dataset!r}; downloadable: {', '.join(DOWNLOADABLE)}")
    base = data_root(root)
    base.mkdir(parents=True, exist_ok=True)
    if _complete(dataset, base):
        return base
    from torchvision.datasets import CIFAR10, MNIST
    from torchvision.datasets.utils import download_and_extract_archive

    if dataset == "cifar10":  # torchvision's source and checksum; unpacked, never unpickled here
        download_and_extract_archive(
            CIFAR10.url, str(base), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
        )
    elif dataset == "mnist":  # torchvision's mirrors and checksums, in MNIST/raw as it lays out
        raw = base / "MNIST" / "raw"
        for filename, checksum in MNIST.resources:
            errors = []
            for mirror in MNIST.mirrors:
                try:
                    download_and_extract_archive(
                        f"{mirror}{filename}", str(raw), filename=filename, md5=checksum
                    )
                    break
                except (RuntimeError, OSError) as error:
                    errors.append(f"{mirror}: {error}")
            else:
                raise RuntimeError(f"could not download {filename}: {'; '.join(errors)}")
    else:
        download_and_extract_archive(
            url or CIFAR10C_URL,
            download_root=str(base),
            filename="CIFAR-10-C.tar",
            md5=md5 or CIFAR10C_MD5,
            remove_finished=True,
        )
    if not _complete(dataset, base):
        check_files(*_files(dataset, base))  # raises naming what is still missing
    return base


def _files(dataset: str, base: Path) -> tuple:
    if dataset == "cifar10c":
        return ("none", base, CIFAR10C_CORRUPTIONS)
    return (dataset, base)


def _complete(dataset: str, base: Path) -> bool:
    try:
        check_files(*_files(dataset, base))
    except OSError:
        return False
    return True
