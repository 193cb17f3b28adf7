"""The embedded default dataset ("synthetic"): procedurally drawn shapes and textures.

Ten classes, each a shape or texture drawn in a per-image random pose, on cluttered backgrounds
with strong per-image nuisance variation, so that normalization has something to remove:

    0 disk, 1 ring, 2 square, 3 plus, 4 triangle, 5 striped patch, 6 checkered patch,
    7 two dots, 8 diamond, 9 bullseye (dot inside a ring)

Per image: random foreground and background colours, position, scale (radius 18-38 % of the
side), rotation within +-25 degrees (so square/diamond and ring/bullseye overlap at the
extremes), a smooth random background field, one distractor shape of a random class (radius
15-30 %, 80 % opacity, drawn under the object; it can be as large as the object, which makes some
images ambiguous), Gaussian pixel noise (sigma 0.1), then a random gain (brightness), contrast
around the image mean and per-channel colour cast. ``difficulty="easy"`` drops the distractor and
most clutter and noise but keeps the per-image nuisance (the quick benchmark's preset). Images
are uint8 RGB, generated in seconds
with torch and cached on disk (``$NORMZOO_CACHE`` or ``~/.cache/normzoo``), written atomically
and verified by checksum.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "disk",
    "ring",
    "square",
    "plus",
    "triangle",
    "stripes",
    "checkers",
    "two_dots",
    "diamond",
    "bullseye",
)
_VERSION = 1
_SHARPNESS = 6.0  # soft-edge steepness of the masks, in units of 1/pixel


def cache_dir() -> Path:
    """Directory of the on-disk cache: ``$NORMZOO_CACHE`` or ``~/.cache/normzoo``."""
    return Path(os.environ.get("NORMZOO_CACHE", Path.home() / ".cache" / "normzoo"))


def _shape_signed(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed inside-ness (> 0 inside) of class ``label`` in shape coordinates (radius 1)."""
    r = torch.sqrt(u * u + v * v)
    if label == 0:
        return 1.0 - r
    if label == 1:
        return torch.minimum(r - 0.55, 1.0 - r)
    if label == 2:
        return 0.85 - torch.maximum(u.abs(), v.abs())
    if label == 3:
        bar_h = torch.minimum(0.3 - v.abs(), 1.0 - u.abs())
        bar_v = torch.minimum(0.3 - u.abs(), 1.0 - v.abs())
        return torch.maximum(bar_h, bar_v)
    if label == 4:
        d = 0.5 + v  # equilateral triangle with inscribed radius 0.5, apex up (v grows down)
        for angle in (2 * math.pi / 3, 4 * math.pi / 3):
            d = torch.minimum(d, 0.5 - (u * math.sin(angle) - v * math.cos(angle)))
        return d
    if label == 5:
        return torch.minimum(1.0 - r, torch.sin(u * 2.5 * math.pi) * 0.3)
    if label == 6:
        return torch.minimum(1.0 - r, torch.sin(u * 2.2 * math.pi) * torch.sin(v * 2.2 * math.pi))
    if label == 7:
        left = 0.42 - torch.sqrt((u + 0.55) ** 2 + v * v)
        right = 0.42 - torch.sqrt((u - 0.55) ** 2 + v * v)
        return torch.maximum(left, right)
    if label == 8:
        return 1.0 - (u.abs() + v.abs())
    if label == 9:
        return torch.maximum(0.35 - r, torch.minimum(r - 0.7, 1.0 - r))
    raise ValueError(f"label {label} is not a synthetic class; allowed 0..{len(CLASS_NAMES) - 1}")


def _draw_masks(
    labels: torch.Tensor, size: int, radius_range: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Soft masks (N, size, size) in [0, 1] of each image's shape in a random pose."""
    n = labels.numel()
    radius = radius_range[0] + (radius_range[1] - radius_range[0]) * torch.rand(n, generator=g)
    radius = radius * size
    centre = radius[:, None] + (size - 2 * radius[:, None]) * torch.rand(n, 2, generator=g)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(25)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = coords[None, :, None] - centre[:, 1, None, None]
    dx = coords[None, None, :] - centre[:, 0, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    signed = torch.empty(n, size, size)
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero(as_tuple=True)[0]
        signed[idx] = _shape_signed(label, u[idx], v[idx])
    return torch.sigmoid(signed * radius[:, None, None] * _SHARPNESS)


def _smooth_field(n: int, channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random smooth background (N, C, size, size): 4x4 noise upsampled bicubically."""
    coarse = torch.randn(n, channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def generate(
    num_images: int,
    seed: int,
    image_size: int = 32,
    num_classes: int = 10,
    difficulty: str = "hard",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_images`` synthetic images (uint8 (N, 3, S, S)) and balanced int64 labels."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(
            f"difficulty={difficulty!r} not allowed; use one of {sorted(DIFFICULTIES)}"
        )
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes={num_classes} not allowed; use 1..{len(CLASS_NAMES)}")
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small; use at least 8 (default 32)")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=g)]
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, num_images, 4096):
        chunk = labels[start : start + 4096]
        images[start : start + 4096] = _render(chunk, image_size, num_classes, g, difficulty)
    return images, labels.long()


# "hard" (default) is calibrated so that a small 4-layer CNN with BatchNorm reaches ~65-71 % test
# accuracy after 5 epochs on 20k 32x32 images; "easy" drops the distractor and most clutter and
# noise (the per-image brightness/contrast/colour nuisance stays), so that a few epochs on a few
# thousand 16x16 images already separate the classes — the budget of the quick benchmark.
DIFFICULTIES = {
    "hard": dict(
        min_colour_distance=0.2,
        background_clutter=0.12,
        distractor_radius=(0.15, 0.30),
        distractor_opacity=0.8,
        object_radius=(0.18, 0.38),
        pixel_noise=0.10,
    ),
    "easy": dict(
        min_colour_distance=0.35,
        background_clutter=0.05,
        distractor_radius=(0.15, 0.30),
        distractor_opacity=0.0,
        object_radius=(0.30, 0.42),
        pixel_noise=0.04,
    ),
}


def _render(
    labels: torch.Tensor, size: int, num_classes: int, g: torch.Generator, difficulty: str = "hard"
) -> torch.Tensor:
    k = DIFFICULTIES[difficulty]
    n = labels.numel()
    background = torch.rand(n, 3, 1, 1, generator=g)
    foreground = torch.rand(n, 3, 1, 1, generator=g)
    # keep a minimum colour distance so the object is visible, but allow low contrast
    away = foreground - background
    too_close = away.norm(dim=1, keepdim=True) < k["min_colour_distance"]
    foreground = torch.where(too_close, (background + 0.5) % 1.0, foreground)
    image = background + k["background_clutter"] * _smooth_field(n, 3, size, g)
    distractor_labels = torch.randint(0, num_classes, (n,), generator=g)
    distractor = _draw_masks(distractor_labels, size, k["distractor_radius"], g)[:, None]
    distractor_colour = torch.rand(n, 3, 1, 1, generator=g)
    image = image + k["distractor_opacity"] * distractor * (distractor_colour - image)
    mask = _draw_masks(labels, size, k["object_radius"], g)[:, None]
    image = image + mask * (foreground - image)
    image = image + k["pixel_noise"] * torch.randn(image.shape, generator=g)
    # per-image nuisance: contrast around the mean, brightness gain and offset, colour cast
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    contrast = torch.exp((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * math.log(2.0))
    gain = torch.exp((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * math.log(1.6))
    cast = torch.exp((torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * math.log(1.3))
    offset = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.15
    image = ((image - mean) * contrast + mean) * gain * cast + offset
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _checksum(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_synthetic(
    train_size: int = 20_000,
    test_size: int = 5_000,
    image_size: int = 32,
    seed: int = 0,
    num_classes: int = 10,
    cache: bool = True,
    difficulty: str = "hard",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test images and labels of the synthetic dataset, from the cache when it is valid."""
    for key, value in (("train_size", train_size), ("test_size", test_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} not allowed; pass a positive int")
    tag = f"synthetic-v{_VERSION}-n{train_size}-{test_size}-s{image_size}-c{num_classes}-seed{seed}"
    if difficulty != "hard":  # keeps the cache names of existing "hard" files
        tag += f"-{difficulty}"
    path = cache_dir() / f"{tag}.pt"
    if cache and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            tensors = (blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"])
            if blob["tag"] == tag and blob["sha256"] == _checksum(*tensors):
                return tensors
            log.warning("cache file %s fails its checksum; rebuilding it", path)
        except Exception as error:  # a truncated or foreign file: rebuild rather than fail
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, error)
    train_x, train_y = generate(train_size, seed * 2 + 1, image_size, num_classes, difficulty)
    test_x, test_y = generate(test_size, seed * 2 + 2, image_size, num_classes, difficulty)
    tensors = (train_x, train_y, test_x, test_y)
    if cache:
        _write_atomic(path, tag, tensors)
    return tensors


def _write_atomic(path: Path, tag: str, tensors: tuple[torch.Tensor, ...]) -> None:
    """Save to a temporary file in the same directory, then rename it over ``path``."""
    blob = dict(zip(("train_x", "train_y", "test_x", "test_y"), tensors, strict=True))
    blob.update(tag=tag, sha256=_checksum(*tensors))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            torch.save(blob, handle)
        os.replace(tmp, path)
    except OSError as error:  # a read-only home must not stop the benchmark
        log.warning("could not write cache %s (%s); continuing without cache", path, error)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
