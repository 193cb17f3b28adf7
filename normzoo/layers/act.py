"""Norm + activation layers: a zoo norm followed by an optional drop and activation.

They mirror timm's ``BatchNormAct2d``/``GroupNormAct``: the norm's parameters and buffers sit
on the module itself (same state-dict keys as the plain norm), with ``drop`` and ``act``
submodules. They serve timm models that build norm+act layers, and ``convert`` of such layers.
"""

from __future__ import annotations

from torch import Tensor, nn

from normzoo.layers.batch import BatchNorm
from normzoo.layers.evonorm import EvoNormB0, EvoNormS0
from normzoo.layers.frn import FilterResponseNorm
from normzoo.layers.ghost import GhostBatchNorm
from normzoo.layers.group import GroupNorm, InstanceNorm, LayerNorm
from normzoo.layers.identity import NoNorm
from normzoo.layers.renorm import BatchRenorm
from normzoo.layers.rms import RMSNorm


class _ActMixin:
    drop: nn.Module
    act: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


class BatchNormAct(_ActMixin, BatchNorm):
    """:class:`BatchNorm` followed by ``drop`` and ``act``."""


class BatchRenormAct(_ActMixin, BatchRenorm):
    """:class:`BatchRenorm` followed by ``drop`` and ``act``."""


class GroupNormAct(_ActMixin, GroupNorm):
    """:class:`GroupNorm` followed by ``drop`` and ``act``."""


class LayerNormAct(_ActMixin, LayerNorm):
    """:class:`LayerNorm` followed by ``drop`` and ``act``."""


class InstanceNormAct(_ActMixin, InstanceNorm):
    """:class:`InstanceNorm` followed by ``drop`` and ``act``."""


class NoNormAct(_ActMixin, NoNorm):
    """Identity followed by ``drop`` and ``act``."""


class GhostBatchNormAct(_ActMixin, GhostBatchNorm):
    """:class:`GhostBatchNorm` followed by ``drop`` and ``act``."""


class FilterResponseNormAct(_ActMixin, FilterResponseNorm):
    """:class:`FilterResponseNorm` followed by ``drop`` and ``act``."""


class EvoNormB0Act(_ActMixin, EvoNormB0):
    """:class:`EvoNormB0` followed by ``drop`` and ``act``."""


class EvoNormS0Act(_ActMixin, EvoNormS0):
    """:class:`EvoNormS0` followed by ``drop`` and ``act``."""


class RMSNormAct(_ActMixin, RMSNorm):
    """:class:`RMSNorm` followed by ``drop`` and ``act``."""


_ACT_CLASSES: dict[type, type] = {
    BatchNorm: BatchNormAct,
    BatchRenorm: BatchRenormAct,
    GroupNorm: GroupNormAct,
    LayerNorm: LayerNormAct,
    InstanceNorm: InstanceNormAct,
    NoNorm: NoNormAct,
    GhostBatchNorm: GhostBatchNormAct,
    FilterResponseNorm: FilterResponseNormAct,
    EvoNormB0: EvoNormB0Act,
    EvoNormS0: EvoNormS0Act,
    RMSNorm: RMSNormAct,
}


def attach_act(norm: nn.Module, act: nn.Module | None, drop: nn.Module | None) -> nn.Module:
    """Turn a zoo norm into its norm+act twin in place (same parameters and buffers).

    Returns ``norm`` unchanged when both ``act`` and ``drop`` are None or identities.
    """
    act = act if act is not None else nn.Identity()
    drop = drop if drop is not None else nn.Identity()
    if isinstance(act, nn.Identity) and isinstance(drop, nn.Identity):
        return norm
    base = type(norm)
    act_cls = _ACT_CLASSES.get(base) or next((v for v in _ACT_CLASSES.values() if v is base), None)
    if act_cls is None:
        raise TypeError(f"no norm+act variant for {base.__name__}; known: {list(_ACT_CLASSES)}")
    norm.__class__ = act_cls
    norm.drop = drop
    norm.act = act
    return norm
