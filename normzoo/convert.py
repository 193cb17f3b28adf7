"""``convert``: swap every normalization layer of an existing model for a zoo layer."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from normzoo.layers import EvoNormS0, FilterResponseNorm, RMSNorm
from normzoo.layers.channels_last import _ChannelsLast
from normzoo.layers.identity import NoNorm
from normzoo.registry import check_layout, check_options, create_layout, create_norm_act

__all__ = ["convert", "norm_channels"]

log = logging.getLogger(__name__)


def _timm_channel_layernorms() -> tuple[type, ...]:
    try:  # local: `import normzoo` stays free of timm's start-up time (timm loads torchvision)
        from timm.layers import LayerNorm2d
    except ImportError:
        return ()
    return (LayerNorm2d,)


def norm_channels(module: nn.Module) -> int | None:
    """Channels of a convertible norm layer, or None if ``module`` is not one.

    Convertible: torch's BatchNorm*/SyncBatchNorm/GroupNorm/InstanceNorm*, timm's norm(+act)
    layers built on them and its channels-first ``LayerNorm2d``, zoo layers, and an
    ``nn.LayerNorm`` over one (the last) dimension: the channels of token models (N, L, C) and
    of ConvNeXt blocks (N, H, W, C), replaced by channels-last variants (:func:`layout_of`).
    """
    if isinstance(module, (_BatchNorm, _InstanceNorm)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, (NoNorm, FilterResponseNorm, EvoNormS0, RMSNorm)):
        return module.num_features
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]  # timm's LayerNorm2d (channels-first) included
    return None


def layout_of(module: nn.Module) -> str:
    """How a convertible norm layer's input is laid out: ``channels_last`` for an
    ``nn.LayerNorm`` over the last dim (not timm's channels-first ``LayerNorm2d``), a zoo
    channels-last variant's own ``layout``, else ``channels_first``."""
    if isinstance(module, _ChannelsLast):
        return module.layout
    if isinstance(module, _timm_channel_layernorms()):
        return "channels_first"
    if isinstance(module, nn.LayerNorm):
        return "channels_last"
    return "channels_first"


def _has_running_stats(module: nn.Module) -> bool:
    return (
        isinstance(module, _BatchNorm)
        and module.running_mean is not None
        and module.running_var is not None
    )


def _inherited_options(old: nn.Module, new_name: str, opts: dict) -> dict:
    """Options carried over from the old layer (eps, momentum, groups) unless given."""
    spec = check_options(new_name, opts)
    carried = {}
    if "eps" in spec.options and hasattr(old, "eps"):
        carried["eps"] = float(old.eps)
    # batch renorm's paper update has its own rate (renorm_momentum): batch norm's does not carry
    renorm_paper = spec.name == "batch_renorm" and opts.get("sigma_update", "paper") == "paper"
    if "momentum" in spec.options and isinstance(old, _BatchNorm) and not renorm_paper:
        carried["momentum"] = old.momentum
    if "track_running_stats" in spec.options and isinstance(old, _BatchNorm):
        carried["track_running_stats"] = old.track_running_stats
    if "groups" in spec.options and isinstance(old, nn.GroupNorm) and "group_size" not in opts:
        carried["groups"] = old.num_groups
    affine = getattr(old, "affine", None)
    if affine is None:
        affine = getattr(old, "elementwise_affine", None)
    if "affine" in spec.options and affine is not None:
        carried["affine"] = bool(affine)
    return {**carried, **opts}


def _submodule(module: nn.Module, name: str) -> nn.Module | None:
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Module) else None


def _replacement(old: nn.Module, channels: int, name: str, opts: dict) -> nn.Module:
    ref = next(iter(old.parameters()), None)
    if ref is None:
        ref = next(iter(old.buffers()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    if ref is not None and not ref.is_floating_point():
        factory.pop("dtype")
    options = {**_inherited_options(old, name, opts), **factory}
    layout = layout_of(old)
    if layout != "channels_first":
        new = create_layout(name, channels, layout, **options)
    else:  # timm norm+act layers keep their activation and drop modules as they were
        act, drop = _submodule(old, "act"), _submodule(old, "drop")
        new = create_norm_act(name, channels, act_layer=act, drop_layer=drop, **options)
    with torch.no_grad():
        old_w, old_b = getattr(old, "weight", None), getattr(old, "bias", None)
        new_w, new_b = getattr(new, "weight", None), getattr(new, "bias", None)
        if isinstance(new_w, nn.Parameter) and isinstance(old_w, torch.Tensor):
            new_w.copy_(old_w.reshape(new_w.shape))
            new_w.requires_grad_(old_w.requires_grad)
        if isinstance(new_b, nn.Parameter) and isinstance(old_b, torch.Tensor):
            new_b.copy_(old_b.reshape(new_b.shape))
            new_b.requires_grad_(old_b.requires_grad)
        if _has_running_stats(old) and _has_running_stats(new):
            new.running_mean.copy_(old.running_mean)
            new.running_var.copy_(old.running_var)
            if old.num_batches_tracked is not None and new.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(old.num_batches_tracked)
    new.train(old.training)
    return new


def convert(model: nn.Module, name: str, **opts: Any) -> nn.Module:
    """Replace every normalization layer of ``model`` (in place) by the zoo layer ``name``.

    Replaced: torch's ``BatchNorm*d``, ``SyncBatchNorm``, ``GroupNorm``, ``InstanceNorm*d``,
    timm's norm and norm+act layers (their activation and drop stay in place), timm's
    channels-first ``LayerNorm2d`` and zoo layers (:func:`norm_channels`). A plain
    ``nn.LayerNorm`` normalizes the last dim (transformer tokens) and is left alone.
    Affine parameters are kept, and running statistics when both the old and the new layer are
    batch-dependent; eps, momentum and group count carry over unless given in ``opts``. Other
    modules are untouched, so converting a trained model to ``batch`` leaves its eval output
    unchanged. Token norms (``nn.LayerNorm`` over the last dim, zoo channels-last variants)
    become the channels-last variant of ``name``; a norm without one (instance, FRN, EvoNorm,
    ghost batch) raises before anything is replaced, naming the norms that apply.

    Args:
        model: the model to convert in place, or a single norm layer.
        name: a name from :func:`normzoo.available` or an alias.
        **opts: options of the new layer; they override what carries over from the old one.

    Returns:
        ``model`` (or the replacement when ``model`` itself is a norm layer). A model
            without any convertible layer is returned unchanged, with a logged warning.

    Raises:
        ValueError: unknown name, or an option value the new layer rejects (e.g. groups not
            dividing a layer's channels).
        TypeError: an option the new layer does not take.

    Examples:
        >>> import torch, normzoo
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> model = normzoo.convert(model, "group", groups=4)
        >>> type(model[1]).__name__, model[1].num_groups
        ('GroupNorm', 4)
        >>> model(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 6, 6])
    """
    check_options(name, opts)
    for module in model.modules():
        if norm_channels(module) is not None and layout_of(module) == "channels_last":
            check_layout(name, "channels_last")
    channels = norm_channels(model)
    if channels is not None:
        return _replacement(model, channels, name, opts)
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            channels = norm_channels(child)
            if channels is None:
                continue
            setattr(parent, child_name, _replacement(child, channels, name, opts))
            replaced += 1
    if replaced == 0:
        log.warning("convert(%s): no normalization layer found in %s", name, type(model).__name__)
    return model
