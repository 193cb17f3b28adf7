"""Lazy image stores: uint8 images decoded on demand, never all in memory.

A store is what the data module batches when a dataset is too large to load whole (an ImageFolder
tree, a torchvision dataset, a user's LightningDataModule). It holds a *reader* (image paths or a
map-style dataset, never pixels) and a LongTensor of positions into it:

- ``len(store)``, ``store.shape`` (N, C, H, W), like a uint8 image tensor;
- ``store[index]`` with an index tensor (or list, or slice) is a lazy subset;
- ``store.decode(index)`` decodes those images into a uint8 tensor (n, C, H, W).

`take` is the one accessor the data module and the measurements use for tensors and stores alike.
Pillow images become square uint8 images the torchvision way: ``Resize(image_size)`` (shorter side
to ``image_size``, bilinear) then ``CenterCrop(image_size)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MODES = {1: "L", 3: "RGB"}  # channels -> Pillow mode


class BadImageError(OSError):
    """An image file Pillow cannot decode; the message names the path."""


def resize_crop(image: Image.Image, channels: int, image_size: int) -> torch.Tensor:
    """A Pillow image -> uint8 (C, S, S): converted to RGB/L, shorter side resized to S
    (bilinear, torchvision's ``Resize(S)`` sizes), then center-cropped (``CenterCrop(S)``)."""
    image = image.convert(MODES[channels])
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short != image_size:
        new_long = int(image_size * long / short)
        size = (image_size, new_long) if width <= height else (new_long, image_size)
        image = image.resize(size, Image.BILINEAR)
        width, height = image.size
    top = int(round((height - image_size) / 2.0))
    left = int(round((width - image_size) / 2.0))
    image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_file(path: str | os.PathLike, channels: int, image_size: int) -> torch.Tensor:
    """Decode one image file to uint8 (C, S, S); `BadImageError` naming the path if it fails."""
    try:
        with Image.open(path) as image:
            return resize_crop(image, channels, image_size)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(
            f"unreadable image {path}: {error}; fix or delete the file, or set "
            "data.options.on_bad_image: skip"
        ) from None


class FileReader:
    """Image files by path (strings only: a store of 100k images holds 100k paths)."""

    def __init__(self, paths: Sequence[str], channels: int, image_size: int) -> None:
        self.paths, self.channels, self.image_size = list(map(str, paths)), channels, image_size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def read(self, i: int) -> torch.Tensor:
        return read_file(self.paths[i], self.channels, self.image_size)

    def describe(self, i: int) -> str:
        return self.paths[i]


def item_image(image, channels: int, image_size: int | None, where: str) -> torch.Tensor:
    """A dataset item's image -> uint8 (C, H, W): a Pillow image is resized and cropped; a
    tensor or array (C, H, W), uint8 or float in [0, 1], is taken as it is."""
    if isinstance(image, Image.Image):
        return resize_crop(image, channels, image_size or min(image.size))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        kind = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise TypeError(
            f"{where}: image must be a PIL image or a tensor (C, H, W), got {kind}; "
            "return (image, label) items with images uint8 or float in [0, 1]"
        )
    if image.dtype == torch.uint8:
        return image.contiguous()
    if not image.is_floating_point():
        raise TypeError(f"{where}: image dtype {image.dtype}; use uint8 or float in [0, 1]")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"{where}: float image values in [{low:.3g}, {high:.3g}], outside [0, 1]; return "
            "images before normalization (normzoo normalizes with the train split's statistics)"
        )
    return (image * 255).round().to(torch.uint8).contiguous()


class DatasetReader:
    """A map-style dataset whose item ``i`` is ``(image, label, ...)``; images only are read."""

    def __init__(self, dataset, channels: int, image_size: int | None, name: str) -> None:
        self.dataset, self.channels, self.image_size, self.name = (
            dataset,
            channels,
            image_size,
            name,
        )
        self._shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            self._shape = tuple(self.read(0).shape)
        return self._shape

    def read(self, i: int) -> torch.Tensor:
        image = item_image(self.dataset[i][0], self.channels, self.image_size, self.describe(i))
        if self._shape is not None and tuple(image.shape) != self._shape:
            raise ValueError(
                f"{self.describe(i)}: image shape {tuple(image.shape)} differs from "
                f"{self._shape}; give every image one shape (resize in the dataset's transform)"
            )
        return image

    def describe(self, i: int) -> str:
        return f"{self.name} item {i}"


class ImageStore:
    """Images of a reader at ``positions``, decoded on demand (see the module docstring)."""

    def __init__(self, reader, positions: torch.Tensor | None = None) -> None:
        self.reader = reader
        if positions is None:
            positions = torch.arange(len(reader))
        self.positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.reader.image_shape))

    def __getitem__(self, index) -> ImageStore:
        if isinstance(index, int):
            index = [index]
        return ImageStore(self.reader, self.positions[index])

    def decode(self, index=None) -> torch.Tensor:
        """The images at ``index`` (all when None) as uint8 (n, C, H, W)."""
        positions = self.positions if index is None else self.positions[index].reshape(-1)
        if len(positions) == 0:
            return torch.empty((0, *self.reader.image_shape), dtype=torch.uint8)
        return torch.stack([self.reader.read(int(p)) for p in positions])

    def describe(self, i: int) -> str:
        """Where image ``i`` of this store comes from (a path or a dataset item)."""
        return self.reader.describe(int(self.positions[i]))


def take(images: torch.Tensor | ImageStore, index: torch.Tensor) -> torch.Tensor:
    """``images[index]`` as a tensor, for an in-memory tensor or a lazy `ImageStore`."""
    return images.decode(index) if isinstance(images, ImageStore) else images[index]


def stream_channel_stats(
    store: ImageStore, limit: int | None = None, seed: int = 0, chunk: int = 256
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of a store's images scaled to [0, 1], streamed.

    Exactly `normzoo.data.channel_stats` of the same images (a 256-bin histogram per channel is
    accumulated chunk by chunk), over all images or, with ``limit``, over ``limit`` of them drawn
    without replacement by ``seed``.
    """
    order = torch.arange(len(store))
    if limit is not None and limit < len(store):
        order = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed))[:limit]
        order = order.sort().values
    channels = store.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, len(order), chunk):
        x = store.decode(order[start : start + chunk])
        for c in range(channels):
            counts[c] += torch.bincount(x[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / total
    std = var.clamp_min(1e-12).sqrt()
    return tuple(map(float, mean)), tuple(map(float, std))
