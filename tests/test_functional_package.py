"""normzoo.functional is a package of one module per family that still exports, from the package,
every public name the single module ``normzoo/functional.py`` had (commit 44e5203)."""

from __future__ import annotations

import importlib
import inspect
import math

import pytest
import torch

import normzoo.functional as nzf

# The public names of normzoo/functional.py before the split, transcribed from that file.
PUBLIC_BEFORE_THE_SPLIT = [
    "SIGMA_UPDATES",
    "affine_normalize",
    "batch_norm",
    "batch_renorm",
    "batch_stats",
    "channel_affine",
    "channel_moments",
    "check_input",
    "ema_factor",
    "ema_update_",
    "evonorm_b0",
    "evonorm_b0_normalize",
    "evonorm_s0",
    "filter_response_norm",
    "finite_update_mask",
    "ghost_batch_norm",
    "group_norm",
    "merge_moments",
    "mix_moments",
    "renorm_correction",
    "renorm_limits",
    "renorm_update_",
    "rms_norm",
    "standardize_weight",
    "update_running_stats",
    "values_per_channel",
]

FAMILIES = {
    "checks": ["check_input", "values_per_channel", "finite_update_mask"],
    "moments": ["channel_moments", "merge_moments", "mix_moments", "ema_update_", "batch_stats"],
    "affine": ["affine_normalize", "channel_affine"],
    "batch": ["batch_norm"],
    "ghost": ["ghost_batch_norm"],
    "renorm": ["batch_renorm", "renorm_limits", "renorm_correction", "renorm_update_"],
    "group": ["group_norm"],
    "frn": ["filter_response_norm"],
    "evonorm": ["evonorm_b0", "evonorm_b0_normalize", "evonorm_s0"],
    "rms": ["rms_norm"],
    "ws": ["standardize_weight"],
}


@pytest.mark.parametrize("name", PUBLIC_BEFORE_THE_SPLIT)
def test_every_public_name_is_importable_from_the_package(name):
    module = importlib.import_module("normzoo.functional")
    assert hasattr(module, name), f"normzoo.functional lost {name!r}"
    exec(f"from normzoo.functional import {name}", {})  # the import statement users write
    assert name in nzf.__all__


def test_all_lists_exactly_the_public_names():
    assert sorted(nzf.__all__) == sorted(PUBLIC_BEFORE_THE_SPLIT)


@pytest.mark.parametrize("family,names", FAMILIES.items())
def test_each_function_lives_in_its_family_module(family, names):
    module = importlib.import_module(f"normzoo.functional.{family}")
    for name in names:
        obj = getattr(module, name)
        assert getattr(nzf, name) is obj
        assert inspect.getmodule(obj) is module


def test_renorm_custom_op_is_registered_under_its_name():
    assert hasattr(torch.ops.normzoo, "batch_renorm_statistics_")


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_update_mask_on_cpu_raises_on_nan_or_inf_only(kind, dtype):
    """On CPU the check raises for a NaN or inf statistic and passes finite ones, including
    float64 values whose sum would overflow; tensors and NumPy views (batch renorm's NumPy
    path) alike."""
    x = torch.zeros(2, 3)
    big = torch.full((3,), 1e308 if dtype == torch.float64 else 3e38, dtype=dtype)

    def stats(*values):
        return [v.numpy() if kind == "numpy" else v for v in values]

    assert nzf.finite_update_mask("layer", x, *stats(big, big.clone())) is None
    for bad in (math.nan, math.inf, -math.inf):
        broken = big.clone()
        broken[1] = bad
        with pytest.raises(ValueError, match="^layer: .*NaN or inf"):
            nzf.finite_update_mask("layer", x, *stats(big, broken))
