"""The zoo's layer classes, one module per family."""

from normzoo.layers.act import norm_act_class
from normzoo.layers.batch import BatchNorm
from normzoo.layers.evonorm import EvoNormB0, EvoNormS0
from normzoo.layers.frn import FilterResponseNorm
from normzoo.layers.ghost import GhostBatchNorm
from normzoo.layers.group import GroupNorm, InstanceNorm, LayerNorm
from normzoo.layers.identity import NoNorm
from normzoo.layers.renorm import BatchRenorm
from normzoo.layers.rms import RMSNorm
from normzoo.layers.ws import WSConv2d

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "GhostBatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "NoNorm",
    "RMSNorm",
    "WSConv2d",
    "norm_act_class",
]
