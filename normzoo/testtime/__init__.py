"""What a trained model normalizes with at test time.

- :mod:`~normzoo.testtime.modes`: :func:`stats_mode`, running / batch / mix / online statistics
  inside a ``with`` block.
- :mod:`~normzoo.testtime.recompute`: :func:`recompute_stats`, exact population statistics
  (PreciseBN, AdaBN).
- :mod:`~normzoo.testtime.adapt`: :func:`adapt`, unsupervised adaptation (AdaBN, TENT).
- :mod:`~normzoo.testtime.inputs`: :func:`batch_inputs`, the batches all of them accept.
"""

from normzoo.testtime.adapt import ADAPT_METHODS, adapt
from normzoo.testtime.inputs import batch_inputs
from normzoo.testtime.modes import STATS_MODES, batch_layers, stats_mode
from normzoo.testtime.recompute import RECOMPUTE_METHODS, recompute_stats

__all__ = [
    "ADAPT_METHODS",
    "RECOMPUTE_METHODS",
    "STATS_MODES",
    "adapt",
    "batch_inputs",
    "batch_layers",
    "recompute_stats",
    "stats_mode",
]
