"""Channels-last variants for token models: ``(N, *, C)`` input normalized over the last dim.

Transformers normalize tokens ``(N, L, C)`` (and ConvNeXt blocks ``(N, H, W, C)``) with the
channels in the last dimension. Every position then plays the part of a sample for the
per-sample norms and of a value for the batch norms, so each variant flattens the input to
``(N * L, C)`` and applies its channels-first parent (a view, no copy of contiguous input):

- ``layer``: per token over C (= ``nn.LayerNorm(C)`` with its per-channel affine);
- ``rms``: per token over C (= ``nn.RMSNorm(C)``);
- ``group``: per token over each group of C / groups channels;
- ``batch``, ``batch_renorm``: per channel over the N * L tokens of the batch (batch norm for
  ViTs as in "Leveraging Batch Normalization for Vision Transformers", Yao et al. 2021);
- ``none`` takes any layout as it is.

Instance norm, FRN, EvoNorm and ghost batch norm normalize over spatial positions per sample
or over chunks of samples; a token model has no such axis, so they have no variant.

Each variant subclasses its parent, so parameters and buffers keep torch's names and state
dicts load both ways. ``layout="channels_last"`` always reads the last dim as channels;
``layout="auto"`` (what :func:`normzoo.norm_layer` builds by default, since a model calls its
``norm_layer`` without saying its layout) reads channels-first input ``(N, C, *)`` exactly as
the parent does and token input as channels-last: input whose dim 1 is not ``num_features``
but whose last dim is. Channels-first wins when both match (e.g. 16 tokens of 16 channels);
pass ``layout="channels_last"`` to be explicit.
"""

from __future__ import annotations

from torch import Tensor

from normzoo.layers.batch import BatchNorm
from normzoo.layers.group import GroupNorm, LayerNorm
from normzoo.layers.renorm import BatchRenorm
from normzoo.layers.rms import RMSNorm

__all__ = [
    "LAYOUTS",
    "BatchNormChannelsLast",
    "BatchRenormChannelsLast",
    "GroupNormChannelsLast",
    "LayerNormChannelsLast",
    "RMSNormChannelsLast",
    "channels_last_of",
    "make_channels_last",
]

LAYOUTS = ("auto", "channels_first", "channels_last")


class _ChannelsLast:
    """Mixin: normalize ``(N, *, C)`` as ``(N * prod(*), C)`` with the parent's forward."""

    def _init_layout(self, layout: str) -> None:
        if layout not in ("auto", "channels_last"):
            raise ValueError(
                f"{type(self).__name__}: layout={layout!r}; choose 'channels_last' (last dim "
                f"is C) or 'auto' (channels-first (N, C, *) unless dim 1 is not C and the last "
                f"dim is)"
            )
        self.layout = layout

    def _is_channels_last(self, x: Tensor) -> bool:
        if self.layout == "channels_last":
            return True
        return x.dim() >= 3 and x.shape[1] != self.num_features and x.shape[-1] == self.num_features

    def forward(self, x: Tensor) -> Tensor:
        if not self._is_channels_last(x):
            return super().forward(x)
        if x.dim() < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected channels-last input (N, *, C) with "
                f"C = {self.num_features} in the last dim, got shape {tuple(x.shape)}"
            )
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layout={self.layout!r}"


def make_channels_last(parent: type, doc: str, module: str = __name__) -> type:
    """The channels-last subclass ``<Parent>ChannelsLast`` of a zoo layer class ``parent``: its
    options plus ``layout``, defined as if in ``module`` (where it must be bound to that name,
    so that pickling finds it)."""

    def __init__(self, num_features: int, *args, layout: str = "channels_last", **kwargs):
        parent.__init__(self, num_features, *args, **kwargs)
        self._init_layout(layout)

    def init_options(self) -> dict:
        base = parent.init_options(self) if hasattr(parent, "init_options") else {}
        return {**base, "layout": self.layout}

    namespace = {"__init__": __init__, "__doc__": doc, "__module__": module}
    if hasattr(parent, "init_options"):
        namespace["init_options"] = init_options
    return type(f"{parent.__name__}ChannelsLast", (_ChannelsLast, parent), namespace)


BatchNormChannelsLast = make_channels_last(
    BatchNorm, "Batch norm over the N * L tokens per channel of (N, L, C) input."
)
BatchRenormChannelsLast = make_channels_last(
    BatchRenorm, "Batch renorm (Ioffe 2017) over the N * L tokens per channel of (N, L, C)."
)
GroupNormChannelsLast = make_channels_last(
    GroupNorm, "Group norm per token over groups of the last dim of (N, L, C) input."
)
LayerNormChannelsLast = make_channels_last(
    LayerNorm, "Layer norm per token over the last dim of (N, L, C) = nn.LayerNorm(C)."
)
RMSNormChannelsLast = make_channels_last(
    RMSNorm, "RMS norm per token over the last dim of (N, L, C) = nn.RMSNorm(C) (gain per C)."
)

_VARIANTS = {
    BatchNorm: BatchNormChannelsLast,
    BatchRenorm: BatchRenormChannelsLast,
    GroupNorm: GroupNormChannelsLast,
    LayerNorm: LayerNormChannelsLast,
    RMSNorm: RMSNormChannelsLast,
}


def channels_last_of(cls: type) -> type | None:
    """The channels-last variant of a zoo layer class, or None when it has none."""
    return _VARIANTS.get(cls)
