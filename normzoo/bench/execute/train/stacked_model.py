"""K models of one backbone folded into one network (model surgery for stacked training,
`normzoo.bench.execute.train.stack`), and where that applies.

The folded network's channels are the K models' channels side by side: every ``nn.Conv2d``
becomes a convolution with ``groups=K`` (slot k's images enter as channels
``[k*C_in, (k+1)*C_in)``), a norm over C channels becomes the same norm over K*C channels (group
counts times K, so every statistic stays inside one model's channels), the linear head one
batched matrix product. `StackedModel.unstack` gives back a plain model of slot k.

Where it applies (`stack_support`): backbones ``small_cnn`` and ``resnet_tiny`` with plain
convolutions, and every registered norm whose statistics are per channel or per group of
channels (`FOLDABLE_NORMS`). ``rms`` normalizes across all channels of a position and is trained
alone; so are runs under DDP, step-limited runs (``train.max_steps``: Lightning ends them
mid-epoch and logs accordingly), and a layer with a per-model scalar parameter (filter response
norm's ``learn_eps``).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import Run
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
)

log = logging.getLogger(__name__)


STACKABLE_BACKBONES = ("small_cnn", "resnet_tiny")


# Norm classes whose statistics never mix channels of different models once the K models'
# channels sit side by side: per channel, or per group of channels (the group count, named
# here, is multiplied by K).
_FOLDS: dict[type, tuple[str, ...]] = {
    BatchRenorm: (),
    GhostBatchNorm: (),
    BatchNorm: (),
    EvoNormB0: (),
    FilterResponseNorm: (),
    NoNorm: (),
    InstanceNorm: ("num_groups",),
    LayerNorm: ("num_groups",),
    GroupNorm: ("num_groups",),
    EvoNormS0: ("groups",),
}


_CHANNEL_ATTRIBUTES = ("num_features", "num_channels")


FOLDABLE_NORMS = (
    "batch",
    "batch_renorm",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response",
    "ghost_batch",
    "group",
    "instance",
    "layer",
    "none",
)


class NotStackable(ValueError):
    """The models cannot be folded into one; train them one by one."""


def stack_support(config: Config, run: Run) -> str | None:
    """Why ``run`` cannot train stacked with the other seeds of its cell (None: it can)."""
    if config.execution.stack <= 1:
        return "execution.stack is 1"
    if config.execution.ddp_devices > 1:
        return "DDP trains one run over several processes"
    if config.train.max_steps:
        return "step-limited training (train.max_steps) ends mid-epoch"
    if config.model.backbone not in STACKABLE_BACKBONES:
        return f"backbone {config.model.backbone} (stackable: {', '.join(STACKABLE_BACKBONES)})"
    if config.model.options.get("conv", "plain") != "plain":
        return "weight-standardized convolutions"
    if run.norm.name not in FOLDABLE_NORMS:
        return f"norm {run.norm.name} mixes channels (stackable: {', '.join(FOLDABLE_NORMS)})"
    if run.norm.options.get("learn_eps"):
        return "a learned scalar eps per layer"
    return None


class StackedLinear(nn.Module):
    """K linear layers applied to K feature blocks: ``(N, K*in) -> (N, K, out)``.

    The bias is kept flat (``K*out``) so that it stays a 1-d tensor like each model's bias
    (the optimizer's weight-decay groups split parameters by dimension).
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.stack, self.in_features = len(linears), linears[0].in_features
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]).clone())
        bias = [m.bias.detach() for m in linears] if linears[0].bias is not None else None
        self.bias = nn.Parameter(torch.cat(bias).clone()) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.stack, self.in_features)
        y = torch.einsum("nki,koi->nko", x, self.weight)
        return y if self.bias is None else y + self.bias.view(self.stack, -1)


def _stack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, k = convs[0], len(convs)
    stacked = nn.Conv2d(
        k * c.in_channels,
        k * c.out_channels,
        c.kernel_size,
        c.stride,
        c.padding,
        c.dilation,
        k * c.groups,
        c.bias is not None,
        c.padding_mode,
        device=c.weight.device,
        dtype=c.weight.dtype,
    )
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            stacked.bias.copy_(torch.cat([m.bias for m in convs]))
    return stacked


def _fold_rule(module: nn.Module) -> tuple[str, ...] | None:
    for cls in type(module).__mro__:
        if cls in _FOLDS:
            return _FOLDS[cls]
    return None


def _stack_norm(norms: list[nn.Module], layout: dict, prefix: str) -> nn.Module:
    """One norm over K*C channels holding the K norms' parameters and buffers."""
    first, k = norms[0], len(norms)
    stacked = copy.deepcopy(first)
    for attribute in (*_CHANNEL_ATTRIBUTES, *_fold_rule(first)):
        derived = isinstance(getattr(type(first), attribute, None), property)
        if hasattr(stacked, attribute) and not derived:
            setattr(stacked, attribute, k * getattr(first, attribute))
    if any(next(c.parameters(), None) is not None for c in first.children()) or any(
        next(c.buffers(), None) is not None for c in first.children()
    ):
        raise NotStackable(f"{type(first).__name__} holds a submodule with state")
    channels = next(getattr(first, a) for a in _CHANNEL_ATTRIBUTES if hasattr(first, a))
    for name, value in [
        *first.named_parameters(recurse=False),
        *first.named_buffers(recurse=False),
    ]:
        values = [getattr(m, name) for m in norms]
        if value.ndim == 0:
            if isinstance(value, nn.Parameter) or any(not torch.equal(v, value) for v in values):
                raise NotStackable(f"{type(first).__name__}.{name} is a per-model scalar")
            layout[prefix + name] = None
            continue
        dim = 0 if value.ndim == 1 else 1
        if value.numel() != channels or value.shape[dim] != channels:
            raise NotStackable(f"{type(first).__name__}.{name} is not one value per channel")
        joined = torch.cat([v.detach() for v in values], dim).clone()
        if isinstance(value, nn.Parameter):
            setattr(stacked, name, nn.Parameter(joined, requires_grad=value.requires_grad))
        else:
            setattr(stacked, name, joined)
        layout[prefix + name] = ("cat", dim)
    return stacked


def _fold(modules: list[nn.Module], layout: dict, prefix: str = "") -> nn.Module:
    """The K modules (same structure) as one module; ``layout`` gets how each tensor stacks."""
    first = modules[0]
    if type(first) is nn.Conv2d:
        layout.update({prefix + n: ("cat", 0) for n, _ in first.named_parameters()})
        return _stack_conv(modules)
    if type(first) is nn.Linear:
        layout[prefix + "weight"] = ("stack", 0)
        if first.bias is not None:
            layout[prefix + "bias"] = ("cat", 0)
        return StackedLinear(modules)
    if _fold_rule(first) is not None:
        return _stack_norm(modules, layout, prefix)
    if (
        next(first.parameters(recurse=False), None) is not None
        or next(first.buffers(recurse=False), None) is not None
    ):
        raise NotStackable(f"no stacked form of {type(first).__name__}")
    folded = copy.copy(first)
    folded._modules = {
        name: _fold([m._modules[name] for m in modules], layout, f"{prefix}{name}.")
        for name, child in first._modules.items()
    }
    return folded


class StackedModel(nn.Module):
    """K models of one architecture as one: input ``(N, K*C, H, W)`` -> logits ``(N, K, classes)``.

    ``unstack(k, model)`` loads slot k's parameters and buffers into a model of the run's backbone
    (everything downstream of training takes that plain model).
    """

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.stack = len(models)
        self.layout: dict[str, tuple[str, int] | None] = {}
        self.net = _fold(models, self.layout)
        missing = set(models[0].state_dict()) - set(self.layout)
        if missing:
            raise NotStackable(f"tensors without a stacked form: {sorted(missing)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def slot_state(self, k: int) -> dict[str, torch.Tensor]:
        """Slot k's state dict, in the layout of the original model."""
        out = {}
        for name, value in self.net.state_dict().items():
            how = self.layout[name]
            if how is None:
                out[name] = value.clone()
            elif how[0] == "stack":
                out[name] = value[k].clone()
            else:
                out[name] = value.chunk(self.stack, how[1])[k].clone()
        return out

    def unstack(self, k: int, model: nn.Module) -> nn.Module:
        """Load slot k into ``model`` (a model of the run's backbone) and return it."""
        model.load_state_dict(self.slot_state(k))
        return model
