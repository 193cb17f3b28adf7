"""Names and aliases -> layer classes, with option validation and clear errors."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass

from torch import nn

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
)

__all__ = [
    "NormSpec",
    "available",
    "canonical_name",
    "create",
    "get_spec",
    "is_batch_dependent",
    "register",
]

# Arguments every factory call may carry that are not user options.
_COMMON_ARGS = ("num_features",)


@dataclass(frozen=True)
class NormSpec:
    """A registered normalization layer: its canonical name, class and what it depends on."""

    name: str
    cls: type[nn.Module]
    aliases: tuple[str, ...]
    batch_dependent: bool
    summary: str

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
    batch_dependent: bool,
    summary: str = "",
) -> NormSpec:
    """Register a layer class under ``name`` (and ``aliases``); returns its spec.

    The class must take ``num_features`` first and channels-first input ``(N, C, *)``.
    """
    spec = NormSpec(name, cls, tuple(aliases), batch_dependent, summary)
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
    batch_dependent=True,
    summary="batch norm (Ioffe & Szegedy 2015) = nn.BatchNorm1d/2d/3d",
)
register(
    "layer",
    LayerNorm,
    aliases=("ln", "layernorm", "layer_norm"),
    batch_dependent=False,
    summary="layer norm over (C, *) = nn.GroupNorm(1, C)",
)
register(
    "instance",
    InstanceNorm,
    aliases=("in", "instancenorm", "instance_norm"),
    batch_dependent=False,
    summary="instance norm over (*) = nn.GroupNorm(C, C)",
)
register(
    "group",
    GroupNorm,
    aliases=("gn", "groupnorm", "group_norm"),
    batch_dependent=False,
    summary="group norm (Wu & He 2018) = nn.GroupNorm(groups, C)",
)
register(
    "batch_renorm",
    BatchRenorm,
    aliases=("brn", "batchrenorm", "renorm"),
    batch_dependent=True,
    summary="batch renormalization (Ioffe 2017, Algorithm 1)",
)
register(
    "none",
    NoNorm,
    aliases=("identity", "no_norm"),
    batch_dependent=False,
    summary="identity baseline (no normalization)",
)

register(
    "ghost_batch",
    GhostBatchNorm,
    aliases=("gbn", "ghost", "ghost_batch_norm", "ghostbatchnorm"),
    batch_dependent=True,
    summary="ghost batch norm (Hoffer et al. 2017): batch norm over chunks of virtual_batch_size",
)
register(
    "filter_response",
    FilterResponseNorm,
    aliases=("frn", "filter_response_norm", "frn_tlu"),
    batch_dependent=False,
    summary="filter response norm + TLU (Singh & Krishnan 2020) = timm FilterResponseNormTlu2d",
)
register(
    "evonorm_b0",
    EvoNormB0,
    aliases=("evob0", "evonormb0"),
    batch_dependent=True,
    summary="EvoNorm-B0 (Liu et al. 2020), running variance = timm EvoNorm2dB0",
)
register(
    "evonorm_s0",
    EvoNormS0,
    aliases=("evos0", "evonorms0"),
    batch_dependent=False,
    summary="EvoNorm-S0 (Liu et al. 2020), group std = timm EvoNorm2dS0",
)
register(
    "rms",
    RMSNorm,
    aliases=("rms_norm", "rmsnorm"),
    batch_dependent=False,
    summary="RMS norm over (C, *) (Zhang & Sennrich 2019), per-channel gain",
)


def available() -> list[str]:
    """Canonical names of every registered normalization layer, sorted."""
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


def create(name: str, num_features: int, **opts) -> nn.Module:
    """Build the normalization layer ``name`` for ``num_features`` channels.

    Example: ``create("group", 64, groups=8)``; ``create("bn", 64, momentum=None)``.
    """
    spec = check_options(name, opts)
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int (channels), got {num_features!r}")
    return spec.cls(num_features, **opts)
