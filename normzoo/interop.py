"""``norm_layer``: zoo layers as the ``norm_layer=`` argument of timm and torchvision models.

torchvision calls ``norm_layer(num_features)``. timm resolves the argument first:
``get_norm_layer`` unbinds a ``functools.partial`` and rebinds its keywords, and
``get_norm_act_layer`` (efficientnet, regnet, densenet, ...) accepts only its own norm+act
classes, a class whose lower-cased name it maps to *timm's* norm+act layers (which would
silently drop the zoo layer), or a plain function that it treats as a norm+act factory without
telling it the activation. We therefore hand out ``functools.partial(ZooNormFactory, norm=...)``
and register :class:`ZooNormFactory` with timm's norm+act factory as a norm+act type that takes
``act_layer`` (:mod:`normzoo.timm_compat`, the one module that touches timm internals), so timm
binds the model's activation and the built model holds zoo layers.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from normzoo.registry import (
    canonical_name,
    check_layout,
    check_options,
    create_layout,
    create_norm_act,
    without_activation,
)
from normzoo.timm_compat import register_norm_act_type

__all__ = ["ZooNormFactory", "norm_layer"]


def _make_act(act_layer, act_kwargs: dict | None, inplace: bool | None, apply_act: bool):
    if act_layer is None or not apply_act:
        return None
    if isinstance(act_layer, nn.Module):
        return act_layer
    # local: only timm passes activations by name or class, and `import normzoo` stays free
    # of timm's start-up time
    from timm.layers import create_act_layer

    return create_act_layer(act_layer, inplace=bool(inplace), **(act_kwargs or {}))


class ZooNormFactory:
    """Builds a zoo norm (or norm+act) layer; a type so timm's factories accept it.

    ``ZooNormFactory(num_features, norm="group", groups=8)`` returns a zoo module, never an
    instance of this class. timm's norm+act keywords (``act_layer``, ``apply_act``,
    ``act_kwargs``, ``inplace``, ``drop_layer``) add a drop and an activation after the norm;
    a norm with its own nonlinearity (FRN + TLU, EvoNorm) takes no activation after it and
    ``apply_act=False`` turns its own off (``tlu=False`` / ``apply_act=False``), as timm's
    ``FilterResponseNormTlu2d`` and ``EvoNorm2d*`` do. ``layout``: see :func:`norm_layer`
    (which passes ``"auto"``); a plain norm only, norm+act layers are channels-first.
    """

    def __new__(
        cls,
        num_features: int,
        norm: str = "batch",
        act_layer=None,
        apply_act: bool = True,
        act_kwargs: dict | None = None,
        inplace: bool | None = None,
        drop_layer=None,
        layout: str = "channels_first",
        **opts,
    ) -> nn.Module:
        act = _make_act(act_layer, act_kwargs, inplace, apply_act)
        if not apply_act:
            opts = without_activation(norm, opts)
        if act is None and drop_layer is None:
            return create_layout(norm, num_features, layout, **opts)
        if layout == "channels_last":
            raise ValueError(
                f"norm_layer({norm!r}, layout='channels_last'): timm asked for a norm+act layer "
                f"(act_layer={act_layer!r}), which normalizes channels-first (N, C, *) input"
            )
        return create_norm_act(norm, num_features, act_layer=act, drop_layer=drop_layer, **opts)


def norm_layer(name: str, layout: str = "auto", **opts: Any) -> functools.partial:
    """A ``norm_layer=`` callable for timm and torchvision models: ``callable(C) -> zoo layer``.

    torchvision calls it with the channels; timm resolves it first (``get_norm_layer``
    unbinds the partial, ``get_norm_act_layer`` binds the model's activation), and both end
    with zoo layers in the model (:class:`ZooNormFactory`, registered with timm by
    :mod:`normzoo.timm_compat`). For models that take no ``norm_layer`` (e.g. timm's
    mobilenetv3) or that are already built, use :func:`normzoo.convert`.

    Token models too (``timm.create_model("vit_tiny_patch16_224",
    norm_layer=normzoo.norm_layer("group", groups=8))``). A model calls its ``norm_layer``
    without saying how its input is laid out, so by default (``layout="auto"``) the norms that
    apply to tokens (:func:`normzoo.registry.token_norms`: batch, batch_renorm, group, layer,
    rms, none) are built as their channels-last variants in shape-dispatching mode: input
    ``(N, C, *)`` is normalized exactly as the plain layer does, token input ``(N, L, C)``
    (dim 1 is not C, the last dim is) over the last dim (:mod:`normzoo.layers.channels_last`).

    Args:
        name: a name from :func:`normzoo.available` or an alias.
        layout: ``auto`` (above), ``channels_first`` or ``channels_last`` (a norm without a
            channels-last variant then fails here, naming the norms that apply).
        **opts: the layer's options, validated now, not at model build time.

    Returns:
        A ``functools.partial(ZooNormFactory, norm=name, layout=layout, **opts)``, which,
            called with the number of channels (and, from timm, ``act_layer`` etc.), returns
            a zoo layer.

    Raises:
        ValueError: unknown name (with the closest match), or a layout the norm has no
            variant for.
        TypeError: an option the layer does not take.
        RuntimeError: an installed timm whose norm+act internals differ from the tested ones.

    Examples:
        >>> import torch, torchvision, normzoo
        >>> model = torchvision.models.resnet18(norm_layer=normzoo.norm_layer("group", groups=8))
        >>> isinstance(model.bn1, torch.nn.GroupNorm), model.bn1.num_groups
        (True, 8)
        >>> type(model.bn1).__module__.startswith("normzoo.layers")
        True
    """
    name = canonical_name(name)
    check_layout(name, layout)
    check_options(name, {k: v for k, v in opts.items() if k not in ("device", "dtype")})
    register_norm_act_type(ZooNormFactory)  # see normzoo.timm_compat; raises if timm changed
    return functools.partial(ZooNormFactory, norm=name, layout=layout, **opts)
