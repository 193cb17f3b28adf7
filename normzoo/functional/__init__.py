"""Pure tensor functions behind every normzoo layer, one module per family.

Layers hold state (parameters, running buffers, step counters); these functions hold the math.
Where torch has a fused kernel that computes the same thing (``F.batch_norm``,
``F.group_norm``) we call it, so the zoo is as fast as torch's own layers.

- :mod:`~normzoo.functional.checks`: input checks (channels-first shape, values per channel,
  finite batches).
- :mod:`~normzoo.functional.moments`: per-channel moments, their merge, the source/batch mix,
  torch's EMA update (shared by batch layers, sync layers and test-time statistics).
- :mod:`~normzoo.functional.affine`: per-channel affine transforms.
- :mod:`~normzoo.functional.batch`, :mod:`~normzoo.functional.ghost`,
  :mod:`~normzoo.functional.renorm`, :mod:`~normzoo.functional.group`,
  :mod:`~normzoo.functional.frn`, :mod:`~normzoo.functional.evonorm`,
  :mod:`~normzoo.functional.rms`, :mod:`~normzoo.functional.ws`: one family each, as
  :mod:`normzoo.layers`.
"""

from normzoo.functional.affine import affine_normalize, channel_affine
from normzoo.functional.batch import batch_norm
from normzoo.functional.checks import check_input, finite_update_mask, values_per_channel
from normzoo.functional.evonorm import evonorm_b0, evonorm_b0_normalize, evonorm_s0
from normzoo.functional.frn import filter_response_norm
from normzoo.functional.ghost import ghost_batch_norm
from normzoo.functional.group import group_norm
from normzoo.functional.moments import (
    batch_stats,
    channel_moments,
    ema_factor,
    ema_update_,
    merge_moments,
    mix_moments,
    update_running_stats,
)
from normzoo.functional.renorm import (
    SIGMA_UPDATES,
    batch_renorm,
    renorm_correction,
    renorm_limits,
    renorm_update_,
)
from normzoo.functional.rms import rms_norm
from normzoo.functional.ws import standardize_weight

__all__ = [
    "SIGMA_UPDATES",
    "affine_normalize",
    "batch_norm",
    "batch_stats",
    "batch_renorm",
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
    "rms_norm",
    "standardize_weight",
    "renorm_update_",
    "update_running_stats",
    "values_per_channel",
]
