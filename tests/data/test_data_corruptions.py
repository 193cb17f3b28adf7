import colorsys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from normzoo.data import CORRUPTIONS, corrupt
from normzoo.data import _filters as ops
from normzoo.data.corruptions import CIFAR_PARAMS, STOCHASTIC, frost_texture

SEVERITIES = (1, 2, 3, 4, 5)


def test_the_fifteen_cifar10c_corruptions():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert set(STOCHASTIC) == set(CORRUPTIONS) - {
        "defocus_blur",
        "zoom_blur",
        "brightness",
        "contrast",
        "pixelate",
        "jpeg_compression",
    }


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_shape_range_determinism(natural_images, corruption, severity):
    x = natural_images[:8]
    out = corrupt(x, corruption, severity, seed=7)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(out, corrupt(x, corruption, severity, seed=7))
    assert not torch.equal(out, x)
    other = corrupt(x, corruption, severity, seed=8)
    assert torch.equal(out, other) != (corruption in STOCHASTIC)
    assert torch.equal(x, natural_images[:8])  # the input is not modified


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_grayscale_and_other_sizes(corruption):
    gray = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = corrupt(gray, corruption, 3, seed=0)
    assert out.shape == gray.shape and out.min() >= 0 and out.max() <= 1


def _distance(natural_images, corruption):
    x = natural_images
    return [(corrupt(x, corruption, s, seed=0) - x).abs().mean().item() for s in SEVERITIES]


# The original parameter tables are not monotone in pixel distance for three corruptions:
# glass_blur trades blur for shuffling passes (more blur smooths the shuffled pixels back),
# frost keeps the frost weight from severity 3 to 4 while lowering the image weight, and
# elastic_transform shrinks its affine part (8 % -> 3 % of the size) as the elastic part grows.
NOT_MONOTONE = ("glass_blur", "frost", "elastic_transform")


@pytest.mark.parametrize("corruption", [c for c in CORRUPTIONS if c not in NOT_MONOTONE])
def test_severity_monotone(natural_images, corruption):
    d = _distance(natural_images, corruption)
    assert all(b >= a - 1e-4 for a, b in zip(d[:-1], d[1:], strict=True)), d
    assert d[-1] > d[0]


def test_severity_ordering_of_the_non_monotone_three(natural_images):
    glass = _distance(natural_images, "glass_blur")
    assert min(glass[3:]) > max(glass[:3])  # two shuffling passes beat one
    frost = _distance(natural_images, "frost")
    assert frost[0] < frost[1] < frost[2] and frost[0] < frost[3] < frost[4]
    elastic = _distance(natural_images, "elastic_transform")
    assert min(elastic) > 0.03


def test_errors(natural_images):
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt(natural_images, "rain", 1)
    with pytest.raises(ValueError, match="severity=6"):
        corrupt(natural_images, "fog", 6)
    with pytest.raises(TypeError, match="float"):
        corrupt((natural_images * 255).to(torch.uint8), "fog", 1)
    with pytest.raises(TypeError, match="C in"):
        corrupt(natural_images[:, :2], "fog", 1)
    assert torch.equal(corrupt(natural_images, "none", 0), natural_images)
    assert torch.equal(corrupt(natural_images, "fog", 0), natural_images)


# ---- comparisons with independent references ------------------------------------------------

GRAY = torch.full((4, 3, 32, 32), 0.5)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_noise_statistics(severity):
    sigma = CIFAR_PARAMS["gaussian_noise"][severity - 1]
    residual = corrupt(GRAY, "gaussian_noise", severity, seed=1, quantize=False) - 0.5
    assert abs(residual.std().item() - sigma) < 0.05 * sigma
    photons = CIFAR_PARAMS["shot_noise"][severity - 1]
    shot = corrupt(GRAY, "shot_noise", severity, seed=1, quantize=False)
    assert abs(shot.mean().item() - 0.5) < 0.01
    assert abs(shot.var().item() / (0.5 / photons) - 1) < 0.1  # Poisson: var = mean
    amount = CIFAR_PARAMS["impulse_noise"][severity - 1]
    impulse = corrupt(GRAY, "impulse_noise", severity, seed=1, quantize=False)
    flipped = impulse != 0.5
    assert abs(flipped.float().mean().item() - amount) < 0.25 * amount + 0.002
    assert set(impulse[flipped].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_closed_form(natural_images, severity):
    c = CIFAR_PARAMS["contrast"][severity - 1]
    means = natural_images.mean(dim=(2, 3), keepdim=True)
    expected = ((natural_images - means) * c + means).clamp(0, 1)
    got = corrupt(natural_images, "contrast", severity, quantize=False)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("severity", (1, 5))
def test_brightness_matches_hsv_roundtrip(natural_images, severity):
    c = CIFAR_PARAMS["brightness"][severity - 1]
    x = natural_images[:2]
    out = corrupt(x, "brightness", severity, quantize=False).permute(0, 2, 3, 1).reshape(-1, 3)
    for pixel, got in zip(x.permute(0, 2, 3, 1).reshape(-1, 3).tolist(), out.tolist(), strict=True):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        expected = colorsys.hsv_to_rgb(h, s, min(max(v + c, 0), 1))
        assert np.allclose(got, expected, atol=1e-5)


def _clipped_zoom_reference(img: np.ndarray, zoom: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top : top + ch, top : top + ch], (zoom, zoom, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


@pytest.mark.parametrize("severity", SEVERITIES)
def test_zoom_blur_matches_scipy(natural_images, severity):
    # the zoom factors transcribed literally from hendrycks' make_cifar_c.py (np.arange with its
    # floating-point endpoints: 7 and 12 factors at severities 1-2), not read from _PARAMS
    c = [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ][severity - 1]
    assert len(c) == (7, 12, 16, 21, 26)[severity - 1]
    x = natural_images[:3]
    got = corrupt(x, "zoom_blur", severity, quantize=False)
    for image, out in zip(x.permute(0, 2, 3, 1).double().numpy(), got, strict=True):
        total = image.copy()
        for zoom in c:
            total += _clipped_zoom_reference(image, zoom)
        expected = np.clip(total / (len(c) + 1), 0, 1)
        assert np.allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_blur_matches_scipy(natural_images, severity):
    radius, alias_blur = CIFAR_PARAMS["defocus_blur"][severity - 1]
    grid = np.arange(-8, 9)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    kernel = ndimage.correlate(disk, np.outer(g, g), mode="mirror")  # cv2 BORDER_REFLECT_101
    x = natural_images[:2]
    got = corrupt(x, "defocus_blur", severity, quantize=False).numpy()
    for n in range(2):
        for c in range(3):
            expected = ndimage.correlate(x[n, c].double().numpy(), kernel, mode="mirror")
            assert np.allclose(got[n, c], np.clip(expected, 0, 1), atol=1e-5)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_pixelate_matches_pil(natural_images, severity):
    c = CIFAR_PARAMS["pixelate"][severity - 1]
    x = (natural_images[:3] * 255).round() / 255
    got = corrupt(x, "pixelate", severity, quantize=False)
    for image, out in zip((x * 255).round().byte().permute(0, 2, 3, 1).numpy(), got, strict=True):
        pil = Image.fromarray(image).resize((int(32 * c), int(32 * c)), Image.BOX)
        expected = np.asarray(pil.resize((32, 32), Image.BOX)) / 255
        assert np.abs(out.permute(1, 2, 0).numpy() - expected).max() <= 1.01 / 255


def test_jpeg_is_lossy_and_deterministic(natural_images):
    out = corrupt(natural_images, "jpeg_compression", 5)
    assert 0 < (out - natural_images).abs().mean() < 0.2


def test_motion_blur_kernel_is_imagemagick_line():
    impulse = torch.zeros(1, 1, 32, 32)
    impulse[0, 0, 16, 16] = 1
    radius, sigma = 6, 1.5
    out = ops.motion_blur(impulse, radius, sigma, torch.tensor([0.0]))
    i = np.arange(2 * radius + 1)
    weights = np.exp(-(i**2) / (2 * sigma**2))
    weights /= weights.sum()
    # tap i reads the pixel i to the right, so the impulse spreads i to the left
    assert np.allclose(out[0, 0, 16, 16 - i].numpy(), weights, atol=1e-6)
    assert abs(out.sum().item() - 1) < 1e-5
    down = ops.motion_blur(impulse, radius, sigma, torch.tensor([90.0]))
    assert np.allclose(down[0, 0, 16 - i, 16].numpy(), weights, atol=1e-6)


def test_frost_blends_texture_with_original_weights(natural_images):
    x = natural_images[:4]
    for severity in (1, 5):
        c0, c1 = CIFAR_PARAMS["frost"][severity - 1]
        texture = frost_texture(4, 32, 32, torch.Generator().manual_seed(3))
        expected = (c0 * x + c1 * texture).clamp(0, 1)
        torch.testing.assert_close(corrupt(x, "frost", severity, seed=3, quantize=False), expected)
    assert 0.4 < texture.mean() < 0.6


def test_plasma_fractal_range():
    maps = ops.plasma_fractal(5, 32, 3, torch.Generator().manual_seed(0))
    assert maps.shape == (5, 32, 32)
    assert torch.allclose(maps.amin(dim=(1, 2)), torch.zeros(5))
    assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(5))


@pytest.mark.parametrize("corruption", ["glass_blur", "elastic_transform", "motion_blur"])
def test_constant_image_stays_constant(corruption):
    """Spatial corruptions only move pixels: a constant image is unchanged."""
    flat = torch.full((2, 3, 32, 32), 100 / 255)
    torch.testing.assert_close(corrupt(flat, corruption, 5, seed=0), flat)


def test_border_rules_match_numpy_pad():
    row = torch.arange(5.0)[None, None, None]
    for mode, np_mode in (
        ("reflect101", "reflect"),
        ("symmetric", "symmetric"),
        ("replicate", "edge"),
    ):
        expected = np.pad(np.arange(5.0), 3, mode=np_mode)
        assert np.array_equal(ops.pad(row, 0, 3, mode)[0, 0, 0].numpy(), expected)


@pytest.mark.parametrize(
    "mode, scipy_mode",
    [("reflect101", "mirror"), ("symmetric", "reflect"), ("replicate", "nearest")],
)
def test_bilinear_sample_matches_scipy_map_coordinates(mode, scipy_mode):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 12, 10, generator=g, dtype=torch.float64)
    rows = torch.rand(1, 7, 9, generator=g, dtype=torch.float64) * 20 - 4
    cols = torch.rand(1, 7, 9, generator=g, dtype=torch.float64) * 18 - 4
    got = ops.bilinear_sample(image, rows, cols, mode)[0, 0].numpy()
    expected = ndimage.map_coordinates(
        image[0, 0].numpy(), [rows[0].numpy(), cols[0].numpy()], order=1, mode=scipy_mode
    )
    assert np.allclose(got, expected, atol=1e-10)


@pytest.mark.parametrize("severity", (1, 4))
def test_glass_blur_matches_the_original_numpy_loop(natural_images, severity):
    """The original's numpy "swap" (on views) with our offsets, and scipy's Gaussian filter."""
    sigma, delta, iterations = CIFAR_PARAMS["glass_blur"][severity - 1]
    x = natural_images[:2]
    got = corrupt(x, "glass_blur", severity, seed=4, quantize=False)
    g = torch.Generator().manual_seed(4)
    offsets = [torch.randint(-delta, delta, (2, 2, 32, 32), generator=g) for _ in range(iterations)]
    for n in range(2):
        image = x[n].permute(1, 2, 0).double().numpy()
        image = np.uint8(ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="nearest") * 255)
        for it in range(iterations):
            for h in range(32 - delta, delta, -1):
                for w in range(32 - delta, delta, -1):
                    dy, dx = (int(v) for v in offsets[it][:, n, h, w])
                    hp, wp = h + dy, w + dx
                    image[h, w], image[hp, wp] = image[hp, wp], image[h, w]
        expected = ndimage.gaussian_filter(image / 255.0, (sigma, sigma, 0), mode="nearest")
        diff = np.abs(got[n].permute(1, 2, 0).numpy() - np.clip(expected, 0, 1))
        assert diff.max() <= 1.01 / 255 and diff.mean() < 0.1 / 255


def test_elastic_severity1_is_the_cv2_style_random_affine(natural_images):
    """Severity 1 has alpha 0: only the random affine of three points, as cv2.getAffineTransform."""
    x = natural_images[:2]
    got = corrupt(x, "elastic_transform", 1, seed=6, quantize=False)
    affine = CIFAR_PARAMS["elastic_transform"][0][2]
    g = torch.Generator().manual_seed(6)
    moves = ((torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 2 - 1) * affine).numpy()
    src = np.array([[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]])  # centre 16 +- 32 // 3, as (x, y)
    for n in range(2):
        dst = src + moves[n]
        solution = np.linalg.solve(np.c_[src, np.ones(3)], dst)  # dst = [x y 1] @ solution
        matrix, shift = solution[:2].T, solution[2]
        inverse = np.linalg.inv(matrix)
        swap = np.array([[0, 1], [1, 0]])  # (x, y) <-> (row, col)
        for c in range(3):
            expected = ndimage.affine_transform(
                x[n, c].double().numpy(),
                swap @ inverse @ swap,
                offset=-(swap @ inverse @ shift),
                order=1,
                mode="mirror",
            )
            assert np.allclose(got[n, c].numpy(), np.clip(expected, 0, 1), atol=1e-5)
