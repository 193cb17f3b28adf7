"""Names and aliases -> layer classes, with option validation and clear errors."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo.layers import (
    BatchNorm,
    BatchRenorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NoNorm,
    RMSNorm,
    norm_act_class,
)
from normzoo.layers.channels_last import LAYOUTS, channels_last_of

__all__ = [
    "NormSpec",
    "available",
    "canonical_name",
    "create",
    "create_layout",
    "create_norm_act",
    "get_spec",
    "is_batch_dependent",
    "register",
    "token_norms",
    "uses_batch_statistics",
]

# Arguments every factory call may carry that are not user options.
_COMMON_ARGS = ("num_features",)


def uses_batch_statistics(cls: type) -> bool:
    """Whether layers of class ``cls`` normalize a sample with statistics of its batch.

    Derived from the class, never kept by hand: a class that declares ``batch_dependent``
    (a bool class attribute) says so itself; otherwise it is batch-dependent exactly when it
    follows torch's batch-norm protocol (a subclass of ``torch.nn.modules.batchnorm._BatchNorm``,
    the class every batch-norm tool looks for).
    """
    declared = getattr(cls, "batch_dependent", None)
    if declared is not None:
        if not isinstance(declared, bool):
            raise TypeError(
                f"{cls.__name__}.batch_dependent must be a bool class attribute, got {declared!r}"
            )
        return declared
    return issubclass(cls, _BatchNorm)


@dataclass(frozen=True)
class NormSpec:
    """A registered normalization layer: its canonical name, class and what it depends on."""

    name: str
    cls: type[nn.Module]
    aliases: tuple[str, ...]
    summary: str

    @property
    def batch_dependent(self) -> bool:
        """Whether the layer uses batch statistics; see :func:`uses_batch_statistics`."""
        return uses_batch_statistics(self.cls)

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the class accepts besides ``num_features``."""
        params = inspect.signature(self.cls.__init__).parameters
        return tuple(p for p in params if p not in ("self", *_COMMON_ARGS))


_REGISTRY: dict[str, NormSpec] = {}
_LOOKUP: dict[str, str] = {}  # normalized name or alias -> canonical name


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register(
    name: str,
    cls: type[nn.Module],
    *,
    aliases: tuple[str, ...] = (),
    summary: str = "",
    batch_dependent: bool | None = None,
) -> NormSpec:
    """Register a layer class under ``name`` (and ``aliases``); returns its spec.

    The class must take ``num_features`` first and channels-first input ``(N, C, *)``.
    Whether it is batch-dependent comes from the class (:func:`uses_batch_statistics`);
    ``batch_dependent``, if given, is only checked against that and never overrides it.
    """
    if batch_dependent is not None and batch_dependent != uses_batch_statistics(cls):
        raise ValueError(
            f"register({name!r}): batch_dependent={batch_dependent} contradicts the class "
            f"{cls.__name__} (batch-dependent = {uses_batch_statistics(cls)}, derived from "
            f"_BatchNorm or a `batch_dependent` class attribute); declare it on the class "
            f"and drop the argument"
        )
    spec = NormSpec(name, cls, tuple(aliases), summary)
    for alias in (name, *aliases):
        key = _key(alias)
        if key in _LOOKUP and _LOOKUP[key] != name:
            raise ValueError(f"norm name {alias!r} is already registered for {_LOOKUP[key]!r}")
    _REGISTRY[name] = spec
    for alias in (name, *aliases):
        _LOOKUP[_key(alias)] = name
    return spec


register(
    "batch",
    BatchNorm,
    aliases=("bn", "batchnorm", "batch_norm"),
    summary="batch norm (Ioffe & Szegedy 2015) = nn.BatchNorm1d/2d/3d",
)
register(
    "layer",
    LayerNorm,
    aliases=("ln", "layernorm", "layer_norm"),
    summary="layer norm over (C, *) = nn.GroupNorm(1, C)",
)
register(
    "instance",
    InstanceNorm,
    aliases=("in", "instancenorm", "instance_norm"),
    summary="instance norm over (*) = nn.GroupNorm(C, C)",
)
register(
    "group",
    GroupNorm,
    aliases=("gn", "groupnorm", "group_norm"),
    summary="group norm (Wu & He 2018) = nn.GroupNorm(groups, C)",
)
register(
    "batch_renorm",
    BatchRenorm,
    aliases=("brn", "batchrenorm", "renorm"),
    summary="batch renormalization (Ioffe 2017, Algorithm 1)",
)
register(
    "none",
    NoNorm,
    aliases=("identity", "no_norm"),
    summary="identity baseline (no normalization)",
)

register(
    "ghost_batch",
    GhostBatchNorm,
    aliases=("gbn", "ghost", "ghost_batch_norm", "ghostbatchnorm"),
    summary="ghost batch norm (Hoffer et al. 2017): batch norm over chunks of virtual_batch_size",
)
register(
    "filter_response",
    FilterResponseNorm,
    aliases=("frn", "filter_response_norm", "frn_tlu"),
    summary="filter response norm + TLU (Singh & Krishnan 2020) = timm FilterResponseNormTlu2d",
)
register(
    "evonorm_b0",
    EvoNormB0,
    aliases=("evob0", "evonormb0"),
    summary="EvoNorm-B0 (Liu et al. 2020), running variance = timm EvoNorm2dB0",
)
register(
    "evonorm_s0",
    EvoNormS0,
    aliases=("evos0", "evonorms0"),
    summary="EvoNorm-S0 (Liu et al. 2020), group std = timm EvoNorm2dS0",
)
register(
    "rms",
    RMSNorm,
    aliases=("rms_norm", "rmsnorm"),
    summary="RMS norm over (C, *) (Zhang & Sennrich 2019), per-channel gain",
)


def available() -> list[str]:
    """Canonical names of every registered normalization layer, sorted.

    Each name (or one of its aliases, case-insensitive, ``-`` and ``_`` ignored) is accepted
    by :func:`create`, :func:`normzoo.norm_layer`, :func:`normzoo.convert` and the benchmark's
    configs.

    Returns:
        The canonical names, sorted alphabetically.

    Examples:
        >>> import normzoo
        >>> normzoo.available()[:4]
        ['batch', 'batch_renorm', 'evonorm_b0', 'evonorm_s0']
        >>> "group" in normzoo.available()
        True
    """
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    """Canonical name for ``name`` or an alias (case-insensitive, '-' and '_' ignored)."""
    if not isinstance(name, str):
        raise TypeError(f"norm name must be a str, got {type(name).__name__}: {name!r}")
    key = _key(name)
    if key in _LOOKUP:
        return _LOOKUP[key]
    close = difflib.get_close_matches(key, list(_LOOKUP), n=1, cutoff=0.5)
    hint = f" Did you mean {_LOOKUP[close[0]]!r}?" if close else ""
    known = ", ".join(f"{n} ({'/'.join(s.aliases[:1])})" for n, s in sorted(_REGISTRY.items()))
    raise ValueError(f"unknown norm {name!r}.{hint} Known norms: {known}")


def get_spec(name: str) -> NormSpec:
    """The :class:`NormSpec` registered under ``name`` or one of its aliases."""
    return _REGISTRY[canonical_name(name)]


def is_batch_dependent(name: str) -> bool:
    """Whether the norm's output depends on other samples of the batch (batch, batch_renorm)."""
    return get_spec(name).batch_dependent


def provides_activation(layer: nn.Module) -> bool:
    """Whether a built layer applies its own nonlinearity, so no activation should follow it:
    FRN + TLU and EvoNorm-B0/S0, which replace a norm *and* its ReLU (their papers, and timm)."""
    return bool(getattr(layer, "provides_activation", False))


def without_activation(name: str, opts: dict) -> dict:
    """``opts`` with the layer's own nonlinearity turned off (its ``activation_option`` set to
    False: ``tlu`` for FRN, ``apply_act`` for EvoNorm), as timm's ``apply_act=False`` and the
    reference code's ``nonlinearity=False`` do for a norm before a residual addition; ``opts``
    unchanged for layers without one."""
    option = getattr(get_spec(name).cls, "activation_option", None)
    return {**opts, option: False} if option else dict(opts)


def check_options(name: str, opts: dict) -> NormSpec:
    """Validate option names for ``name``; raise TypeError naming the unknown ones."""
    spec = get_spec(name)
    unknown = sorted(set(opts) - set(spec.options))
    if unknown:
        extra = ""
        if not spec.batch_dependent and {"momentum", "track_running_stats"} & set(unknown):
            extra = f" ({spec.name!r} is batch-independent: it keeps no running statistics)"
        raise TypeError(
            f"unknown option(s) {unknown} for norm {spec.name!r}{extra}; "
            f"accepted options: {list(spec.options)}"
        )
    return spec


def create(name: str, num_features: int, **opts: Any) -> nn.Module:
    """Build the normalization layer ``name`` for ``num_features`` channels.

    The factory behind every zoo layer (timm's ``create_*`` style): a name or alias plus
    keyword options gives a module with torch's constructor arguments (``eps``, ``affine``,
    and for batch-dependent layers ``momentum`` and ``track_running_stats``).

    Args:
        name: a name from :func:`available` or an alias (``"bn"``, ``"gn"``, ``"brn"``, ...;
            case-insensitive, ``-`` and ``_`` ignored).
        num_features: channels C of the channels-first input ``(N, C, *)``.
        **opts: the layer's constructor options (e.g. ``groups=8`` for ``group``,
            ``warmup=500`` for ``batch_renorm``, ``device``, ``dtype``).

    Returns:
        The layer, an ``nn.Module`` (a ``torch.nn.modules.batchnorm._BatchNorm`` exactly
            when the norm is batch-dependent).

    Raises:
        ValueError: unknown name (with the closest match and the known names), a
            ``num_features`` that is not a positive int, or an invalid option value (e.g.
            groups not dividing the channels, with the valid values).
        TypeError: an option the layer does not take (with the accepted ones).

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> gn = normzoo.create("group", 64, groups=8)
        >>> gn.num_groups, gn.num_features
        (8, 64)
        >>> gn(torch.randn(2, 64, 4, 4)).shape
        torch.Size([2, 64, 4, 4])
        >>> normzoo.create("bn", 16, momentum=None).momentum is None
        True
    """
    spec = check_options(name, opts)
    _check_num_features(num_features)
    return spec.cls(num_features, **opts)


def _check_num_features(num_features) -> None:
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int (channels), got {num_features!r}")


def create_norm_act(
    name: str, num_features: int, *, act_layer=None, drop_layer=None, **opts
) -> nn.Module:
    """The zoo layer ``name`` followed by ``drop_layer`` and ``act_layer``, built as its
    norm+act class (like timm's ``BatchNormAct2d``); the plain layer when both are None or
    ``nn.Identity``. ``act_layer``/``drop_layer``: a module, a module class or a factory.
    """
    spec = check_options(name, opts)
    if all(m is None or isinstance(m, nn.Identity) for m in (act_layer, drop_layer)):
        return create(name, num_features, **opts)
    _check_num_features(num_features)
    return norm_act_class(spec.cls)(
        num_features, act_layer=act_layer, drop_layer=drop_layer, **opts
    )


def token_norms() -> list[str]:
    """Canonical names of the norms that apply to token input ``(N, L, C)``: those with a
    channels-last variant (:mod:`normzoo.layers.channels_last`) and the identity ``none``."""
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if channels_last_of(spec.cls) is not None or spec.cls is NoNorm
    )


def check_layout(name: str, layout: str) -> None:
    """Validate ``layout`` for norm ``name``: one of ``LAYOUTS``, and ``channels_last`` only for
    a norm that applies to tokens (the error names those that do)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; choose one of {list(LAYOUTS)}")
    spec = get_spec(name)
    if layout == "channels_last" and spec.name not in token_norms():
        raise ValueError(
            f"norm {spec.name!r} has no channels-last variant for token input (N, L, C) (it "
            f"normalizes over spatial positions or chunks of samples); norms that apply to "
            f"tokens: {', '.join(token_norms())}"
        )


def create_layout(name: str, num_features: int, layout: str = "channels_first", **opts):
    """Build norm ``name`` for input laid out as ``layout``: ``channels_first`` (N, C, *) is
    :func:`create`; ``channels_last`` (N, *, C) builds the norm's channels-last variant;
    ``auto`` the variant in its shape-dispatching mode (channels-first input as the plain
    layer, token input as channels-last), or the plain layer for norms without a variant."""
    check_layout(name, layout)
    spec = check_options(name, opts)
    variant = channels_last_of(spec.cls)
    if layout == "channels_first" or variant is None:  # none: the identity takes any layout
        return create(name, num_features, **opts)
    _check_num_features(num_features)
    return variant(num_features, layout=layout, **opts)
