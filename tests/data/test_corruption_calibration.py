"""Corruptions like the reference: uint8 quantisation of every corrupted image, and severities
for the resolution (CIFAR-10-C constants at 32x32, ImageNet-C's at 224x224, pixel lengths
scaled elsewhere). The tables below are transcribed from hendrycks/robustness
(``ImageNet-C/create_c/make_cifar_c.py`` and ``make_imagenet_c.py``), written as there."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from normzoo.data import CORRUPTIONS, corrupt
from normzoo.data.corruptions import glass_shuffle, quantize_uint8, severity_params

IMSIZE = 32
MAKE_CIFAR_C = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ],
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [
        (IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
        (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
        (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
        (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
        (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03),
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}
MAKE_IMAGENET_C = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ],
    "snow": [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "elastic_transform": [
        (244 * 2, 244 * 0.7, 244 * 0.1),
        (244 * 2, 244 * 0.08, 244 * 0.2),
        (244 * 0.05, 244 * 0.01, 244 * 0.02),
        (244 * 0.07, 244 * 0.01, 244 * 0.02),
        (244 * 0.12, 244 * 0.01, 244 * 0.02),
    ],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}


def _as_lists(table):
    return {k: [np.asarray(v, dtype=float).tolist() for v in rows] for k, rows in table.items()}


@pytest.mark.parametrize("size, reference", [(32, MAKE_CIFAR_C), (224, MAKE_IMAGENET_C)])
def test_reference_sizes_use_the_reference_constants_exactly(size, reference):
    table, base, scale = severity_params(size, size)
    assert (base, scale) == (size, 1.0)
    assert set(table) == set(CORRUPTIONS) == set(reference)
    assert _as_lists(table) == _as_lists(reference)  # exact floats, no tolerance


def test_other_sizes_scale_the_pixel_lengths_of_the_nearer_table():
    table, base, scale = severity_params(16, 16)
    assert (base, scale) == (32, 0.5)
    ref = MAKE_CIFAR_C
    for s in range(5):
        radius, alias = ref["defocus_blur"][s]
        assert table["defocus_blur"][s] == pytest.approx((radius / 2, alias / 2))
        sigma, delta, iterations = ref["glass_blur"][s]
        assert table["glass_blur"][s] == pytest.approx((sigma / 2, 1, iterations))
        assert table["motion_blur"][s] == pytest.approx(tuple(v / 2 for v in ref["motion_blur"][s]))
        snow = list(ref["snow"][s])
        snow[4], snow[5] = snow[4] / 2, snow[5] / 2
        assert table["snow"][s] == pytest.approx(tuple(snow))
        elastic = tuple(v / 2 for v in ref["elastic_transform"][s])
        assert table["elastic_transform"][s] == pytest.approx(elastic)
    for name in ("gaussian_noise", "contrast", "fog", "frost", "pixelate", "jpeg_compression"):
        assert _as_lists({name: table[name]}) == _as_lists({name: ref[name]})
    assert _as_lists({"z": table["zoom_blur"]}) == _as_lists({"z": ref["zoom_blur"]})
    table, base, scale = severity_params(112, 112)  # nearer ImageNet: its table, halved
    assert (base, scale) == (224, 0.5)
    assert table["glass_blur"][4] == pytest.approx((0.75, 2, 2))
    assert table["gaussian_noise"] == MAKE_IMAGENET_C["gaussian_noise"]


def test_scaled_blur_keeps_its_extent_relative_to_the_image():
    """Scaling the pixel lengths keeps a blur's extent relative to the image: ImageNet-C's
    severity-5 defocus kernel at 112x112 spreads half as far as at 224x224 (second moment / 4)."""
    from normzoo.data.corruptions import _disk_kernel

    def spread(kernel):
        r = (kernel.shape[0] - 1) // 2
        grid = torch.arange(-r, r + 1, dtype=torch.float64)
        return float((kernel.double() * (grid[:, None] ** 2 + grid[None, :] ** 2)).sum())

    big = _disk_kernel(*severity_params(224, 224)[0]["defocus_blur"][4])
    small = _disk_kernel(*severity_params(112, 112)[0]["defocus_blur"][4])
    assert spread(small) == pytest.approx(spread(big) / 4, rel=0.1)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_outputs_are_uint8_levels_by_default(natural_images, corruption):
    x = natural_images[:4]
    out = corrupt(x, corruption, 3, seed=1)
    levels = out.double() * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    exact = corrupt(x, corruption, 3, seed=1, quantize=False)
    # np.uint8(np.clip(x, 0, 1) * 255): truncation, within float32 rounding of a level
    assert torch.equal(out, quantize_uint8(exact))
    assert ((exact - out) >= -1e-6).all() and ((exact - out) < 1 / 255 + 1e-6).all()


def test_quantize_is_numpy_uint8_truncation():
    values = torch.tensor([0.0, 0.5, 0.999, 1.0, 100 / 255, 0.2])
    expected = np.uint8(np.clip(values.double().numpy(), 0, 1) * 255) / 255
    assert np.allclose(quantize_uint8(values).numpy(), expected, atol=1e-7)


def _numpy_swap_loop(image: np.ndarray, offsets: np.ndarray, delta: int) -> np.ndarray:
    """make_c's loop, literally (views and all), with given offsets (dy, dx) per pixel."""
    image = image.copy()
    size = image.shape[0]
    for h in range(size - delta, delta, -1):
        for w in range(size - delta, delta, -1):
            dy, dx = offsets[:, h, w]
            h_prime, w_prime = h + dy, w + dx
            # swap
            image[h, w], image[h_prime, w_prime] = image[h_prime, w_prime], image[h, w]
    return image


@pytest.mark.parametrize("delta", [1, 2, 3, 4])
def test_glass_shuffle_is_the_reference_loop_for_every_distance(delta):
    g = torch.Generator().manual_seed(delta)
    size = 17
    x = torch.randint(0, 256, (3, 3, size, size), generator=g).float()
    offsets = torch.randint(-delta, delta, (2, 3, size, size), generator=g)
    got = glass_shuffle(x, offsets, delta)
    for n in range(3):
        image = x[n].permute(1, 2, 0).numpy().astype(np.uint8)
        expected = _numpy_swap_loop(image, offsets[:, n].numpy(), delta)
        assert np.array_equal(got[n].permute(1, 2, 0).numpy(), expected.astype(np.float32))


def test_defocus_at_224_is_the_imagenet_disk(natural_images):
    """ImageNet-C severity 5: disk radius 10 on the grid -10..10, anti-aliased by cv2's 5x5
    Gaussian (sigma 0.5), applied with cv2's BORDER_REFLECT_101 (scipy 'mirror')."""
    x = torch.nn.functional.interpolate(natural_images[:1], size=224, mode="bilinear")
    got = corrupt(x, "defocus_blur", 5, quantize=False)
    radius, alias_blur = 10, 0.5
    grid = np.arange(-radius, radius + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-(np.arange(-2, 3) ** 2) / (2 * alias_blur**2))
    taps /= taps.sum()
    kernel = ndimage.correlate(disk, np.outer(taps, taps), mode="mirror")
    for c in range(3):
        expected = ndimage.correlate(x[0, c].double().numpy(), kernel, mode="mirror")
        assert np.allclose(got[0, c].numpy(), np.clip(expected, 0, 1), atol=1e-5)


@pytest.mark.parametrize("size", [16, 224])
def test_every_corruption_runs_at_other_resolutions(natural_images, size):
    x = torch.nn.functional.interpolate(natural_images[:1], size=size, mode="bilinear")
    for corruption in CORRUPTIONS:
        for severity in (3, 5) if size == 16 else (3,):
            out = corrupt(x, corruption, severity, seed=0)
            assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1, corruption
            assert not torch.equal(out, x), corruption
    assert math.isclose(severity_params(size, size)[2], 1.0 if size == 224 else 0.5)
