"""normzoo: a normalization-layer zoo and comparison benchmark for PyTorch.

Public API (see README): :func:`available`, :func:`create`, :func:`norm_layer`,
:func:`convert`.
"""

from normzoo.convert import convert
from normzoo.interop import norm_layer
from normzoo.registry import available, create, is_batch_dependent, register

__version__ = "0.1.0"

__all__ = [
    "available",
    "convert",
    "create",
    "is_batch_dependent",
    "norm_layer",
    "register",
]
