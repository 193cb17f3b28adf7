"""normzoo: a normalization-layer zoo and comparison benchmark for PyTorch.

Layers: :func:`available`, :func:`create`, :func:`norm_layer`, :func:`convert`.
Inference: :func:`fold` (batch norms folded into the layer before them).
Test-time statistics: :func:`stats_mode`, :func:`recompute_stats`, :func:`adapt`.
"""

from normzoo.convert import convert
from normzoo.export import fold
from normzoo.interop import norm_layer
from normzoo.registry import available, create, is_batch_dependent, register
from normzoo.testtime import STATS_MODES, adapt, recompute_stats, stats_mode

__version__ = "0.1.0"

__all__ = [
    "STATS_MODES",
    "adapt",
    "available",
    "convert",
    "create",
    "fold",
    "is_batch_dependent",
    "norm_layer",
    "recompute_stats",
    "register",
    "stats_mode",
]
