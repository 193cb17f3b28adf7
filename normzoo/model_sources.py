"""Backbones from libraries and from users, built with a zoo norm; what a built model holds.

- ``timm:<name>``: ``timm.create_model(name, pretrained=False, norm_layer=...)``;
- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None, norm_layer=...)``;
- ``package.module:factory``: the user's callable, called as ``factory(num_classes=...,
  in_channels=..., norm_layer=..., **options)`` and returning an ``nn.Module``.

``norm_layer`` is :func:`normzoo.norm_layer`; a model whose constructor takes no ``norm_layer``
(torchvision's VGG-BN, a factory that ignores it) is built as it is and its norm layers are
replaced by :func:`normzoo.convert`. Nothing is downloaded. A model that normalizes tokens
``(N, L, C)`` refuses, at build time, a norm that has no channels-last variant, naming those that
apply. :func:`describe` counts what a built model holds (zoo norm layers by kind, parameters).
"""

from __future__ import annotations

import difflib
import importlib
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

import normzoo
from normzoo.convert import layout_of, norm_channels
from normzoo.registry import available, canonical_name, check_layout, get_spec, token_norms

__all__ = [
    "TIMM_PREFIX",
    "TORCHVISION_PREFIX",
    "build_library_model",
    "check_source",
    "describe",
    "describe_line",
    "is_library_backbone",
    "resolve_factory",
    "zoo_kind",
]

TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"
FACTORY_FORM = "'package.module:factory'"


def is_library_backbone(backbone: str) -> bool:
    """Whether ``backbone`` names a timm or torchvision model or a user's factory (has a ':')."""
    return ":" in backbone


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _torchvision_names() -> list[str]:
    import torchvision  # local: `import normzoo` stays free of torchvision's start-up time

    return torchvision.models.list_models(module=torchvision.models)  # classification only


def check_source(backbone: str) -> None:
    """Raise ValueError when a ``timm:``/``torchvision:`` name is unknown or a factory path does
    not resolve to a callable (the factory itself is only called by :func:`build_library_model`)."""
    if backbone.startswith(TIMM_PREFIX):
        import timm

        name = backbone[len(TIMM_PREFIX) :]
        if not timm.is_model(name):
            raise ValueError(
                f"unknown timm model '{name}'; list names with timm.list_models('*{name[:4]}*')"
            )
    elif backbone.startswith(TORCHVISION_PREFIX):
        name = backbone[len(TORCHVISION_PREFIX) :]
        names = _torchvision_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown torchvision classification model '{name}'{hint}; list names with "
                "torchvision.models.list_models(module=torchvision.models)"
            )
    else:
        resolve_factory(backbone)


def resolve_factory(path: str) -> Callable:
    """The callable named by ``package.module:factory`` (``factory`` may be dotted, e.g.
    ``Class.build``); ValueError naming the problem when it cannot be imported or found."""
    module_name, _, attribute = path.partition(":")
    parts = attribute.split(".")
    if not module_name or not all(p.isidentifier() for p in (*module_name.split("."), *parts)):
        raise ValueError(
            f"backbone '{path}' is neither a built-in, 'timm:<name>', 'torchvision:<name>' nor "
            f"{FACTORY_FORM} (a model factory by import path, e.g. 'mypkg.models:build')"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a factory module may fail to import in any way
        raise ValueError(
            f"cannot import module '{module_name}' of model factory '{path}' "
            f"({_one_line(error)}); install its package or put its folder on PYTHONPATH"
        ) from error
    factory = module
    for part in parts:
        if not hasattr(factory, part):
            raise ValueError(
                f"module '{module_name}' has no attribute '{attribute}' (model factory "
                f"'{path}'); name a function or class defined in {module.__file__}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(
            f"model factory '{path}' is not callable (a {type(factory).__name__}); name a "
            "function or class that returns the model"
        )
    return factory


def build_library_model(
    backbone: str,
    norm: str,
    num_classes: int,
    in_channels: int,
    norm_options: dict | None = None,
    **options,
) -> nn.Module:
    """Build a ``timm:``, ``torchvision:`` or factory backbone whose every norm layer is a zoo
    layer of ``norm`` (through ``norm_layer``, else :func:`normzoo.convert`).

    Raises:
        ValueError: the model rejects its options, the factory raises (its message included),
            a token model meets a norm without a channels-last variant, or ``in_channels`` != 3
            for a torchvision model whose first convolution does not take 3 channels.
        TypeError: the factory returns something that is not an ``nn.Module``.
    """
    norm_options = dict(norm_options or {})
    check_source(backbone)
    if backbone.startswith(TIMM_PREFIX):
        model = _build_timm(backbone, norm, num_classes, in_channels, norm_options, options)
    elif backbone.startswith(TORCHVISION_PREFIX):
        model = _build_torchvision(backbone, norm, num_classes, in_channels, norm_options, options)
    else:
        model = _build_factory(backbone, norm, num_classes, in_channels, norm_options, options)
    if any(norm_channels(m) is not None and zoo_kind(m) is None for m in model.modules()):
        normzoo.convert(model, norm, **norm_options)  # norms the constructor made on its own
    return model


def _refuse_token_mismatch(backbone: str, norm: str, build_default: Callable) -> None:
    """A norm without a channels-last variant cannot go where the model normalizes tokens: build
    the model with its own norms (RNG state restored, so paired seeds keep their init) and raise
    when one of them normalizes the last dim."""
    if canonical_name(norm) in token_norms():
        return
    with torch.random.fork_rng(devices=[]):
        default = build_default()
    for module in default.modules():
        if norm_channels(module) is not None and layout_of(module) == "channels_last":
            try:
                check_layout(norm, "channels_last")
            except ValueError as error:
                raise ValueError(
                    f"backbone '{backbone}' normalizes token input (N, L, C) "
                    f"({type(module).__name__} over the last dim): {error}"
                ) from None


def _build_timm(backbone, norm, num_classes, in_channels, norm_options, options) -> nn.Module:
    import timm

    name = backbone[len(TIMM_PREFIX) :]

    def build(**extra):
        return timm.create_model(
            name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_channels,
            **options,
            **extra,
        )

    _refuse_token_mismatch(backbone, norm, lambda: _build_own_norms(backbone, build))
    return _with_norm_layer(backbone, build, norm, norm_options)


def _build_torchvision(backbone, norm, num_classes, in_channels, norm_options, options):
    import torchvision

    name = backbone[len(TORCHVISION_PREFIX) :]

    def build(**extra):
        return torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **options, **extra
        )

    _refuse_token_mismatch(backbone, norm, lambda: _build_own_norms(backbone, build))
    model = _with_norm_layer(backbone, build, norm, norm_options)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels, backbone)
    return model


def _with_norm_layer(backbone: str, build: Callable, norm: str, norm_options: dict) -> nn.Module:
    """``build(norm_layer=...)``; a constructor that takes no ``norm_layer`` builds without it
    (its norms are converted afterwards)."""
    try:
        return build(norm_layer=normzoo.norm_layer(norm, **norm_options))
    except TypeError as error:
        if "norm_layer" not in str(error):
            raise ValueError(
                f"backbone '{backbone}' cannot be built with model.options: {_one_line(error)}"
            ) from error
    except (AssertionError, RuntimeError) as error:  # e.g. torchvision's ViT size checks
        raise ValueError(
            f"backbone '{backbone}' cannot be built with model.options: {_one_line(error)}"
        ) from error
    return _build_own_norms(backbone, build)


def _build_own_norms(backbone: str, build: Callable) -> nn.Module:
    """``build()`` with the model's own norms; what it raises becomes one ValueError line."""
    try:
        return build()
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise ValueError(
            f"backbone '{backbone}' cannot be built with model.options: {_one_line(error)}"
        ) from error


def _adapt_first_conv(model: nn.Module, in_channels: int, backbone: str) -> None:
    """Replace the first ``nn.Conv2d`` (the stem, 3 input channels) by one taking
    ``in_channels``, its weights adapted as timm's ``adapt_input_conv`` does (summed for 1
    channel, RGB repeated and rescaled otherwise), so the init keeps its scale."""
    from timm.models import adapt_input_conv

    for parent in model.modules():
        for child_name, child in parent.named_children():
            if not isinstance(child, nn.Conv2d):
                continue
            if child.in_channels != 3 or child.groups != 1:
                raise ValueError(
                    f"backbone '{backbone}' takes in_channels={in_channels} only by replacing "
                    f"its first convolution, but that one ({child_name}: {child}) does not take "
                    "3 channels; use 3-channel data or a factory that builds the stem"
                )
            conv = nn.Conv2d(
                in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                bias=child.bias is not None,
                padding_mode=child.padding_mode,
            )
            with torch.no_grad():
                conv.weight.copy_(adapt_input_conv(in_channels, child.weight))
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
            setattr(parent, child_name, conv)
            return
    raise ValueError(
        f"backbone '{backbone}' has no nn.Conv2d to adapt to in_channels={in_channels}; use "
        "3-channel data or a factory"
    )


def _build_factory(backbone, norm, num_classes, in_channels, norm_options, options):
    factory = resolve_factory(backbone)
    try:
        model = factory(
            num_classes=num_classes,
            in_channels=in_channels,
            norm_layer=normzoo.norm_layer(norm, **norm_options),
            **options,
        )
    except Exception as error:  # the user's code may raise anything; name it in one line
        raise ValueError(
            f"model factory '{backbone}' raised {_one_line(error)} (it is called as "
            "factory(num_classes=..., in_channels=..., norm_layer=..., **model.options))"
        ) from error
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory '{backbone}' returned {type(model).__name__}, not a "
            "torch.nn.Module; return the model"
        )
    return model


def _zoo_classes() -> dict[type, str]:
    return {get_spec(name).cls: name for name in available()}


def zoo_kind(module: nn.Module) -> str | None:
    """The canonical norm name of a zoo layer (channels-last and norm+act variants included),
    or None for any other module: the most derived registered class in its MRO."""
    return _kind(module, _zoo_classes())


def _kind(module: nn.Module, classes: dict[type, str]) -> str | None:
    return next((classes[c] for c in type(module).__mro__ if c in classes), None)


def describe(model: nn.Module) -> dict:
    """What a built model holds: parameters, zoo norm layers by kind, and any other norm
    layer (torch, timm) left in it, by class name. Lazy parameters (not yet shaped) count 0.

    Returns:
        ``{"parameters", "trainable_parameters", "norm_layers", "norm_parameters",
        "norm_kinds": {kind: count}, "foreign_norm_layers": {class name: count}}``.
    """
    classes = _zoo_classes()
    kinds: Counter = Counter()
    foreign: Counter = Counter()
    norm_parameters = 0
    for module in model.modules():
        kind = _kind(module, classes)
        if kind is not None:
            kinds[kind] += 1
            norm_parameters += _numel(module.parameters())
        elif norm_channels(module) is not None:
            foreign[type(module).__name__] += 1
    return {
        "parameters": _numel(model.parameters()),
        "trainable_parameters": _numel(p for p in model.parameters() if p.requires_grad),
        "norm_layers": sum(kinds.values()),
        "norm_parameters": norm_parameters,
        "norm_kinds": dict(sorted(kinds.items())),
        "foreign_norm_layers": dict(sorted(foreign.items())),
    }


def _numel(parameters) -> int:
    """Elements of the parameters; lazy ones (``nn.LazyLinear`` before its first call) count 0."""
    return sum(0 if nn.parameter.is_lazy(p) else p.numel() for p in parameters)


def describe_line(description: dict) -> str:
    """:func:`describe`'s result as one line, e.g. ``11.2M parameters, 20 zoo norm layers
    (batch 20, 9.6k parameters)``."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in description["norm_kinds"].items())
    line = (
        f"{_count(description['parameters'])} parameters, {description['norm_layers']} zoo norm "
        f"layers ({kinds or 'none'}; {_count(description['norm_parameters'])} parameters)"
    )
    if description["foreign_norm_layers"]:
        others = ", ".join(f"{k} {v}" for k, v in description["foreign_norm_layers"].items())
        line += f", other norm layers: {others}"
    return line


def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
