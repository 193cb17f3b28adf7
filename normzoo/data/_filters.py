"""Batched image operations in torch that the corruptions are built from.

Each one re-implements the behaviour of the library call used by Hendrycks & Dietterich's
``make_cifar_c.py`` (scipy/skimage/cv2/PIL/ImageMagick), with the same border handling:
``replicate`` (skimage/scipy "nearest", ImageMagick "edge"), ``reflect101`` (cv2 default,
torch "reflect") and ``symmetric`` (scipy "reflect").
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def border_index(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map integer indices outside ``[0, size)`` into it by the named border rule."""
    if mode == "replicate" or size == 1:
        return index.clamp(0, size - 1)
    if mode == "reflect101":
        period = 2 * (size - 1)
        index = index.remainder(period)
        return torch.where(index >= size, period - index, index)
    if mode == "symmetric":
        period = 2 * size
        index = index.remainder(period)
        return torch.where(index >= size, period - 1 - index, index)
    raise ValueError(f"border mode {mode!r} unknown; use replicate, reflect101 or symmetric")


def pad(x: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``x`` by the named border rule (any pad width)."""
    h, w = x.shape[-2:]
    if mode in _TORCH_PAD and pad_h < h and pad_w < w:
        return F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=_TORCH_PAD[mode])
    rows = border_index(torch.arange(-pad_h, h + pad_h), h, mode)
    cols = border_index(torch.arange(-pad_w, w + pad_w), w, mode)
    return x[..., rows[:, None], cols[None, :]]


_TORCH_PAD = {"replicate": "replicate", "reflect101": "reflect"}


def gaussian_kernel1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, sum 1."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of (N, C, H, W) with a 2-D ``kernel``, borders by ``mode``.

    Written as a sum of shifted copies: for the small kernels here this is much faster on CPU
    than ``conv2d`` over N*C single-channel images.
    """
    h, w = x.shape[-2:]
    kh, kw = kernel.shape
    padded = pad(x, kh // 2, kw // 2, mode)
    out = torch.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            weight = float(kernel[i, j])
            if weight != 0.0:
                out.add_(padded[..., i : i + h, j : j + w], alpha=weight)
    return out


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate"):
    """Separable Gaussian blur (scipy.ndimage.gaussian_filter; skimage default border)."""
    kernel = gaussian_kernel1d(sigma, truncate)
    if kernel.numel() == 1:
        return x.clone()
    x = filter2d(x, kernel[None, :], mode)
    return filter2d(x, kernel[:, None], mode)


_GRID_SAMPLE = {
    "reflect101": ("reflection", True),
    "symmetric": ("reflection", False),
    "replicate": ("border", True),
}


def bilinear_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str):
    """Sample (N, C, H, W) at float pixel coordinates (N, H', W') with bilinear weights.

    Borders: ``reflect101`` = cv2 BORDER_REFLECT_101 / scipy "mirror", ``symmetric`` = scipy
    "reflect", ``replicate`` = scipy "nearest" (via ``grid_sample``'s reflection about pixel
    centres or pixel edges).
    """
    if mode not in _GRID_SAMPLE:
        raise ValueError(f"border mode {mode!r} unknown; use one of {sorted(_GRID_SAMPLE)}")
    padding_mode, align_corners = _GRID_SAMPLE[mode]
    h, w = x.shape[-2:]
    if align_corners:
        gx, gy = cols * 2 / max(w - 1, 1) - 1, rows * 2 / max(h - 1, 1) - 1
    else:
        gx, gy = (cols + 0.5) * 2 / w - 1, (rows + 0.5) * 2 / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
    )


def clipped_zoom_matrix(size: int, zoom: float) -> torch.Tensor:
    """(size, size) matrix of ``clipped_zoom``: centre crop, scipy.ndimage.zoom order 1, trim.

    scipy's zoom maps output index o to input o * (in - 1) / (out - 1) with out = round(in * z).
    """
    crop = int(math.ceil(size / zoom))
    top = (size - crop) // 2
    out = int(round(crop * zoom))
    trim = (out - size) // 2
    o = torch.arange(trim, trim + size, dtype=torch.float64)
    src = o * (crop - 1) / max(out - 1, 1)
    lo = src.floor().clamp(max=crop - 1)
    frac = src - lo
    hi = (lo + 1).clamp(max=crop - 1)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)
    matrix.index_put_((rows, top + lo.long()), 1 - frac, accumulate=True)
    matrix.index_put_((rows, top + hi.long()), frac, accumulate=True)
    return matrix.float()


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom (N, C, H, W) by ``zoom`` about the centre, keeping the size (make_cifar_c's helper)."""
    rows = clipped_zoom_matrix(x.shape[-2], zoom)
    cols = clipped_zoom_matrix(x.shape[-1], zoom)
    return rows @ (x @ cols.T)


_KRON_LIMIT = 64 * 64  # pixels up to which zoom_sum builds the (H*W, H*W) operator


@functools.lru_cache(maxsize=16)
def _zoom_operator(h: int, w: int, zooms: tuple[float, ...]) -> torch.Tensor:
    operator = sum(torch.kron(clipped_zoom_matrix(h, z), clipped_zoom_matrix(w, z)) for z in zooms)
    return operator.to_sparse()  # COO; it needs a contiguous dense operand to be fast


def zoom_sum(x: torch.Tensor, zooms: list[float]) -> torch.Tensor:
    """``sum(clipped_zoom(x, z) for z in zooms)`` as one sparse (H*W, H*W) operator (small
    images), or zoom by zoom with the separable row and column matrices (large ones, where the
    Kronecker operator would not fit in memory: (H*W)^2 values)."""
    n, c, h, w = x.shape
    if h * w > _KRON_LIMIT:
        return sum(clipped_zoom(x, z) for z in zooms)
    operator = sum(torch.kron(clipped_zoom_matrix(h, z), clipped_zoom_matrix(w, z)) for z in zooms)
    sparse = operator.to_sparse()  # COO; it needs a contiguous dense operand to be fast
    dense = x.reshape(n * c, h * w).T.contiguous()
    return torch.sparse.mm(sparse, dense).T.reshape(n, c, h, w)


def pil_box_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) matrix of PIL's ``Image.resize(..., BOX)`` along one axis (Pillow Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / filterscale
            matrix[i, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
        matrix[i] /= matrix[i].sum()
    return matrix.float()


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor):
    """ImageMagick's one-sided motion blur (MotionBlurImage), one angle (degrees) per image.

    Kernel of width ``2*ceil(radius)+1`` with weights ``exp(-i^2 / (2 sigma^2))`` (normalized);
    tap i reads the pixel at offset ``round(i * (cos a, sin a))``; edge pixels are replicated.
    """
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma * sigma))
    weights = (weights / weights.sum()).tolist()
    rad = torch.deg2rad(angles.double())
    reach = width - 1
    padded = pad(x, reach, reach, "replicate")
    out = torch.zeros_like(x)
    for i in range(width):
        if weights[i] < 1e-6:
            break
        off_c = torch.floor(i * torch.cos(rad) + 0.5).long()
        off_r = torch.floor(i * torch.sin(rad) + 0.5).long()
        # images sharing this tap's offset read the same shifted window of the padded batch
        keys = (off_r + reach) * (2 * reach + 1) + (off_c + reach)
        for key in keys.unique().tolist():
            rows = (keys == key).nonzero(as_tuple=True)[0]
            r0, c0 = divmod(key, 2 * reach + 1)
            window = padded[rows, :, r0 : r0 + h, c0 : c0 + w]
            if len(rows) == n:
                out.add_(window, alpha=weights[i])
            else:
                out.index_add_(0, rows, window, alpha=weights[i])
    return out


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, g: torch.Generator) -> torch.Tensor:
    """Diamond-square height maps (N, mapsize, mapsize) in [0, 1], as make_cifar_c's fog uses."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize={mapsize} must be a power of two")
    maps = torch.zeros(n, mapsize, mapsize)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = (torch.rand(total.shape, generator=g) * 2 - 1) * wibble
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, dims=1)
        squares = squares + torch.roll(squares, -1, dims=2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres = maps[:, half::step, half::step]
        corners = maps[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.amin(dim=(1, 2), keepdim=True)
    return maps / maps.amax(dim=(1, 2), keepdim=True)
