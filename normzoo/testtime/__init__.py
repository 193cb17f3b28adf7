"""What a trained model normalizes with at test time.

- :mod:`~normzoo.testtime.modes`: :func:`stats_mode`, running / batch / mix / online statistics
  inside a ``with`` block.
- :mod:`~normzoo.testtime.recompute`: :func:`recompute_stats`, exact population statistics
  (PreciseBN, AdaBN).
- :mod:`~normzoo.testtime.adapt`: :func:`adapt`, unsupervised adaptation (AdaBN, TENT), and
  :class:`Tent`, TENT online (each batch scored by the pass that adapts on it).
- :mod:`~normzoo.testtime.inputs`: :func:`batch_inputs`, the batches all of them accept.
"""

from normzoo.testtime.adapt import ADAPT_METHODS, TENT_DEFAULTS, Tent, adapt
from normzoo.testtime.inputs import batch_inputs
from normzoo.testtime.modes import STATS_MODES, batch_layers, stats_mode
from normzoo.testtime.recompute import RECOMPUTE_METHODS, recompute_stats

__all__ = [
    "ADAPT_METHODS",
    "RECOMPUTE_METHODS",
    "STATS_MODES",
    "TENT_DEFAULTS",
    "Tent",
    "adapt",
    "batch_inputs",
    "batch_layers",
    "recompute_stats",
    "stats_mode",
]
