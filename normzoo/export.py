"""Inference export: fold eval-mode batch norms into the convolution or linear layer before them.

A batch norm at eval is a per-channel affine map of its input, ``y = (x - mean) * s + beta``
with ``s = gamma / sqrt(var + eps)``; after ``z = w * x + b`` it folds into the layer:
``w' = w * s`` (per output channel) and ``b' = (b - mean) * s + beta``. Batch renorm at eval
normalizes with its moving (mu, sigma), stored as ``running_mean = mu`` and ``running_var =
sigma^2 - eps``, so the same equation with ``sqrt(running_var + eps) = sigma`` folds it.

A pair is folded only where the data flow proves it: a ``torch.fx`` trace of the model (norms,
convolutions and linear layers kept as leaves) must show the norm's only input to be the output
of the layer, used by nothing else, each called once; a linear layer must feed the norm a
``(N, C)`` tensor (proven from a ``flatten(1)`` upstream), since a batch norm normalizes dim 1
and a linear layer maps the last. A model that does not trace falls back to ``nn.Sequential``
order. Every norm left in place is listed with its reason (:func:`plan_fold`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo.layers import act as zoo_act
from normzoo.layers.batch import BatchNorm
from normzoo.layers.ghost import GhostBatchNorm
from normzoo.layers.identity import NoNorm
from normzoo.layers.renorm import BatchRenorm
from normzoo.registry import available, get_spec

__all__ = ["FoldPlan", "fold", "plan_fold"]

log = logging.getLogger(__name__)

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_TORCH_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.RMSNorm)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Identity, nn.Dropout, nn.LeakyReLU)


def _foldable_norm_types() -> tuple[type, ...]:
    """Norm classes whose eval forward is ``F.batch_norm`` with the running statistics, followed
    (norm+act layers) by ``drop`` and ``act``. Exact classes: a subclass may compute more."""
    types: list[type] = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm]
    types += [BatchNorm, BatchRenorm, GhostBatchNorm]
    types += [zoo_act.BatchNormAct, zoo_act.BatchRenormAct, zoo_act.GhostBatchNormAct]
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # timm is optional
        return tuple(types)
    return (*types, BatchNormAct2d)


def _is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch's, the zoo's or timm's); the zoo's
    ``none`` (an identity) is not."""
    if isinstance(module, NoNorm) or isinstance(module, _LAYERS):
        return False
    zoo = tuple(get_spec(name).cls for name in available())
    if isinstance(module, (_BatchNorm, *_TORCH_NORMS, *zoo)):
        return True
    return type(module).__module__.startswith(("timm.layers.norm", "timm.layers.evo_norm"))


@dataclass(frozen=True)
class FoldPlan:
    """What :func:`fold` does to a model: the (layer, norm) pairs it folds, by qualified name,
    and each norm it leaves in place with the reason."""

    folded: tuple[tuple[str, str], ...]
    left: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        """One line per folded pair and per norm left in place."""
        lines = [f"folded {len(self.folded)} norm(s), left {len(self.left)} in place"]
        lines += [f"  folded {norm} into {layer}" for layer, norm in self.folded]
        lines += [f"  left {norm}: {reason}" for norm, reason in self.left]
        return "\n".join(lines)


class _Tracer(fx.Tracer):
    """Traces through containers and blocks; keeps norms, convolutions, linear layers, torch's
    own modules and timm's untraceable ones as leaves."""

    def __init__(self) -> None:
        try:
            from timm.layers import _fx as timm_fx

            functions, self._timm_leaves = (
                timm_fx.get_notrace_functions(),
                tuple(timm_fx.get_notrace_modules()),
            )
        except ImportError:  # timm is optional
            functions, self._timm_leaves = [], ()
        super().__init__(autowrap_functions=tuple(functions))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _is_norm(m) or isinstance(m, (*_LAYERS, *self._timm_leaves)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_two_dim(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the value of ``node`` is proven to be ``(N, C)``: a ``flatten(1)`` (or
    ``nn.Flatten()``), then only linear layers, norms and elementwise modules."""
    if node.op in ("call_method", "call_function") and node.target in ("flatten", torch.flatten):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    module = modules[node.target]
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if isinstance(module, (nn.Linear, *_ELEMENTWISE)) or type(module) in _foldable_norm_types():
        return _is_two_dim(node.args[0], modules)
    return False


def _pairs_from_graph(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """({norm: layer} proven by an fx trace, {norm: why not}) for the foldable norms."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, why = {}, {}
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) not in _foldable_norm_types():
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        layer = modules.get(source.target) if getattr(source, "op", "") == "call_module" else None
        if type(layer) not in _LAYERS:
            why[node.target] = "its input is not a convolution's or linear layer's output"
        elif calls[node.target] > 1 or calls[source.target] > 1 or len(source.users) > 1:
            why[node.target] = f"{source.target} or the norm is called twice or used elsewhere"
        elif isinstance(layer, nn.Linear) and not _is_two_dim(source.args[0], modules):
            why[node.target] = "linear -> norm whose input is not proven (N, C) (needs flatten(1))"
        else:
            pairs[node.target] = source.target
    return pairs, why


def _pairs_from_sequentials(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """({norm: layer} of consecutive children of exact ``nn.Sequential`` modules, {})."""
    pairs = {}
    for name, parent in model.named_modules():
        if type(parent) is not nn.Sequential:
            continue
        children = list(parent.named_children())
        for (layer_name, layer), (norm_name, norm) in zip(children, children[1:], strict=False):
            if type(layer) in _LAYERS and not isinstance(layer, nn.Linear):
                if type(norm) in _foldable_norm_types():
                    prefix = f"{name}." if name else ""
                    pairs[prefix + norm_name] = prefix + layer_name
    return pairs, {}


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def plan_fold(model: nn.Module) -> FoldPlan:
    """Which norms of ``model`` :func:`fold` folds into the layer before them, and why each other
    norm stays (batch-independent norms, batch norms that normalize with batch statistics, pairs
    the data flow does not prove). Reads the model only."""
    try:
        pairs, why = _pairs_from_graph(model)
    except Exception as error:  # noqa: BLE001 - any trace failure falls back to the safe rule
        log.info(
            "fold: %s does not trace with torch.fx (%s); folding only nn.Sequential pairs",
            type(model).__name__,
            error,
        )
        pairs, why = _pairs_from_sequentials(model)
    occurrences: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        occurrences[id(module)] = occurrences.get(id(module), 0) + 1
    modules = dict(model.named_modules())
    folded, left = [], []
    for name, norm in model.named_modules():
        if not _is_norm(norm):
            continue
        layer_name = pairs.get(name)
        layer = modules.get(layer_name)
        if type(norm) not in _foldable_norm_types():
            kind = (
                "batch norm fold does not know"
                if isinstance(norm, _BatchNorm)
                else "batch-independent norm"
            )
            reason = f"{type(norm).__name__}: {kind}"
        elif norm.training:
            reason = "in training mode: normalizes with batch statistics"
        elif norm.running_mean is None or norm.running_var is None:
            reason = "no running statistics (track_running_stats=False): batch statistics"
        elif layer is None:
            reason = why.get(name, "not proven to follow a convolution or linear layer")
        elif _has_hooks(norm) or _has_hooks(layer):
            reason = "forward hooks (e.g. a stats_mode block) may change what it computes"
        elif occurrences[id(norm)] > 1 or occurrences[id(layer)] > 1:
            reason = f"{layer_name} or the norm is shared by several parents"
        elif _channels(layer) != norm.num_features:
            reason = f"{layer_name} has {_channels(layer)} outputs, the norm {norm.num_features}"
        else:
            folded.append((layer_name, name))
            continue
        left.append((name or type(norm).__name__, reason))
    return FoldPlan(tuple(folded), tuple(left))


def _fold_pair(layer: nn.Module, norm: _BatchNorm) -> None:
    """Fold the eval-mode ``norm`` into ``layer``'s weight and bias, in place."""
    with torch.no_grad():
        dtype = layer.weight.dtype
        var, mean = norm.running_var.to(dtype), norm.running_mean.to(dtype)
        scale = torch.rsqrt(var + norm.eps)
        shift = torch.zeros_like(mean)
        if norm.weight is not None:
            scale = scale * norm.weight.to(dtype)
        if norm.bias is not None:
            shift = norm.bias.to(dtype)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        new_bias = (bias - mean) * scale + shift
        layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias, requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(new_bias)


def _replacement(norm: nn.Module) -> nn.Module:
    """What stays of a folded norm: its ``drop`` and ``act`` (norm+act layers), else nothing."""
    rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if m is not None]
    rest = [m for m in rest if not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _from_stats_mode(hook: object) -> bool:
    return getattr(hook, "__module__", None) == "normzoo.testtime.modes"


def _strip_stats_mode_hooks(model: nn.Module) -> None:
    """Remove hooks a ``stats_mode`` block installed on the original: on the copy they would only
    double-fire in a later block (the copy is not in that block)."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, f in hooks.items() if _from_stats_mode(f)]:
                del hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)


def fold(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode ``model`` with every batch norm that follows a convolution or
    linear layer folded into it: ``w' = w * gamma / sqrt(var + eps)`` per output channel,
    ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``, the norm replaced by ``nn.Identity``
    (a norm+act layer by its activation).

    Folds ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, the zoo's ``batch``, ``batch_renorm``
    (its moving mu and sigma) and ``ghost_batch``, their norm+act layers and timm's
    ``BatchNormAct2d``, where the data flow proves the pairing (see the module docstring).
    Batch-independent norms (group, layer, instance, FRN, EvoNorm, RMS), batch norms in training
    mode, without running statistics or inside a ``stats_mode`` block stay in place; the plan is
    logged at INFO (:func:`plan_fold` returns it). The folded model's outputs equal the
    model's eval outputs up to float rounding; ``model`` itself is not modified.

    Args:
        model: an eval-mode model (``model.eval()``); any ``nn.Module``.

    Returns:
        A deep copy of ``model`` (same classes and module names) with the folded norms replaced.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` is in training mode.

    Examples:
        >>> import torch, normzoo
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), normzoo.create("batch", 4), nn.ReLU())
        >>> _ = model(torch.randn(8, 3, 6, 6))  # a training step sets the running statistics
        >>> folded = normzoo.fold(model.eval())
        >>> folded[1]
        Identity()
        >>> x = torch.randn(2, 3, 6, 6)
        >>> torch.allclose(folded(x), model(x), atol=1e-6)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold expects an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            f"fold needs an eval-mode model ({type(model).__name__} is in training mode, where "
            "batch norms normalize with batch statistics and cannot fold); call model.eval() "
            "first, e.g. normzoo.fold(model.eval())"
        )
    plan = plan_fold(model)
    folded = copy.deepcopy(model)
    _strip_stats_mode_hooks(folded)
    modules = dict(folded.named_modules())
    for layer_name, norm_name in plan.folded:
        _fold_pair(modules[layer_name], modules[norm_name])
        parent_name, _, child = norm_name.rpartition(".")
        setattr(modules[parent_name], child, _replacement(modules[norm_name]))
    log.info("fold(%s): %s", type(model).__name__, plan.summary())
    return folded
