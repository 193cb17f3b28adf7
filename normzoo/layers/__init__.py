"""The zoo's layer classes, one module per family."""

from normzoo.layers.act import attach_act
from normzoo.layers.batch import BatchNorm
from normzoo.layers.group import GroupNorm, InstanceNorm, LayerNorm
from normzoo.layers.identity import NoNorm
from normzoo.layers.renorm import BatchRenorm

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "NoNorm",
    "attach_act",
]
