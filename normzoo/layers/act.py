"""Norm + activation layers: a zoo norm followed by an optional drop and activation.

They mirror timm's ``BatchNormAct2d``/``GroupNormAct``: built as their own class, with the
norm's parameters and buffers on the module itself (same state-dict keys as the plain norm)
and ``drop`` and ``act`` submodules. They serve timm models that build norm+act layers, and
``convert`` of such layers.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from normzoo.layers.batch import BatchNorm
from normzoo.layers.evonorm import EvoNormB0, EvoNormS0
from normzoo.layers.frn import FilterResponseNorm
from normzoo.layers.ghost import GhostBatchNorm
from normzoo.layers.group import GroupNorm, InstanceNorm, LayerNorm
from normzoo.layers.identity import NoNorm
from normzoo.layers.renorm import BatchRenorm
from normzoo.layers.rms import RMSNorm

__all__ = [
    "BatchNormAct",
    "BatchRenormAct",
    "EvoNormB0Act",
    "EvoNormS0Act",
    "FilterResponseNormAct",
    "GhostBatchNormAct",
    "GroupNormAct",
    "InstanceNormAct",
    "LayerNormAct",
    "NoNormAct",
    "NormActMixin",
    "RMSNormAct",
    "norm_act_class",
    "register_norm_act",
]

ActLayer = nn.Module | type[nn.Module] | Callable[[], nn.Module] | None


def _module(layer: ActLayer, what: str) -> nn.Module:
    """A module from a module, a class or a no-argument factory; None is the identity."""
    if layer is None:
        return nn.Identity()
    if isinstance(layer, nn.Module):
        return layer
    if callable(layer):
        module = layer()
        if isinstance(module, nn.Module):
            return module
    raise TypeError(
        f"{what} must be an nn.Module, a module class or a factory returning one, got "
        f"{layer!r}; timm's activation names ('relu', 'silu') are resolved by "
        f"normzoo.norm_layer, which builds the module"
    )


class NormActMixin:
    """Adds ``drop`` and ``act`` after a norm: put it first in the bases of a norm class.

    ``__init__(num_features, act_layer=None, drop_layer=None, **norm_options)``, as timm's
    ``BatchNormAct2d(num_features, ..., act_layer, drop_layer)``; ``act_layer`` and
    ``drop_layer`` are modules (kept as they are), module classes or factories (called once).
    A norm that applies its own nonlinearity (``provides_activation``: FRN + TLU, EvoNorm)
    replaces the norm *and* the activation, so ``act_layer`` is not added after it, as timm's
    ``FilterResponseNormTlu2d``/``EvoNorm2d*`` take no ``act_layer``; ``drop`` still applies.
    """

    drop: nn.Module
    act: nn.Module

    def __init__(
        self, num_features: int, *, act_layer: ActLayer = None, drop_layer: ActLayer = None, **opts
    ) -> None:
        super().__init__(num_features, **opts)
        self.drop = _module(drop_layer, "drop_layer")
        own_act = bool(getattr(self, "provides_activation", False))
        self.act = nn.Identity() if own_act else _module(act_layer, "act_layer")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


class BatchNormAct(NormActMixin, BatchNorm):
    """:class:`BatchNorm` followed by ``drop`` and ``act``."""


class BatchRenormAct(NormActMixin, BatchRenorm):
    """:class:`BatchRenorm` followed by ``drop`` and ``act``."""


class GroupNormAct(NormActMixin, GroupNorm):
    """:class:`GroupNorm` followed by ``drop`` and ``act``."""


class LayerNormAct(NormActMixin, LayerNorm):
    """:class:`LayerNorm` followed by ``drop`` and ``act``."""


class InstanceNormAct(NormActMixin, InstanceNorm):
    """:class:`InstanceNorm` followed by ``drop`` and ``act``."""


class NoNormAct(NormActMixin, NoNorm):
    """Identity followed by ``drop`` and ``act``."""


class GhostBatchNormAct(NormActMixin, GhostBatchNorm):
    """:class:`GhostBatchNorm` followed by ``drop`` and ``act``."""


class FilterResponseNormAct(NormActMixin, FilterResponseNorm):
    """:class:`FilterResponseNorm` followed by ``drop`` and ``act``."""


class EvoNormB0Act(NormActMixin, EvoNormB0):
    """:class:`EvoNormB0` followed by ``drop`` and ``act``."""


class EvoNormS0Act(NormActMixin, EvoNormS0):
    """:class:`EvoNormS0` followed by ``drop`` and ``act``."""


class RMSNormAct(NormActMixin, RMSNorm):
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


def register_norm_act(norm_cls: type[nn.Module], act_cls: type[nn.Module]) -> None:
    """Declare ``act_cls`` (``class X(NormActMixin, norm_cls)``) the norm+act class of
    ``norm_cls``."""
    if not (issubclass(act_cls, NormActMixin) and issubclass(act_cls, norm_cls)):
        raise TypeError(
            f"{act_cls.__name__} must subclass NormActMixin and {norm_cls.__name__}, e.g. "
            f"class {norm_cls.__name__}Act(NormActMixin, {norm_cls.__name__}): ..."
        )
    _ACT_CLASSES[norm_cls] = act_cls


def norm_act_class(norm_cls: type[nn.Module]) -> type[nn.Module]:
    """The norm+act class for the norm class ``norm_cls`` (exact class, not a subclass).

    A subclass of a zoo norm may change what the norm computes, so it never silently gets
    its parent's twin: it raises, saying how to declare one.
    """
    if issubclass(norm_cls, NormActMixin):
        return norm_cls
    act_cls = _ACT_CLASSES.get(norm_cls)
    if act_cls is None:
        raise TypeError(
            f"no norm+act class for {norm_cls.__qualname__}; known: "
            f"{sorted(c.__name__ for c in _ACT_CLASSES)}. Define "
            f"`class {norm_cls.__name__}Act(NormActMixin, {norm_cls.__name__})` and call "
            f"normzoo.layers.act.register_norm_act({norm_cls.__name__}, "
            f"{norm_cls.__name__}Act)"
        )
    return act_cls
