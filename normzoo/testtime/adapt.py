"""Unsupervised test-time adaptation of batch layers to a shifted target set: AdaBN and TENT."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor, nn

from normzoo.testtime.inputs import batch_inputs
from normzoo.testtime.modes import batch_layers
from normzoo.testtime.recompute import RECOMPUTE_METHODS, recompute_stats

log = logging.getLogger(__name__)

ADAPT_METHODS = ("adabn", "tent")
TENT_OPTIMIZERS = ("adam", "sgd")
_OPTIONS = {
    "adabn": {"num_batches": None, "stats_method": "precise"},
    "tent": {"lr": 1e-3, "steps": 1, "optimizer": "adam", "num_batches": None},
}


def adapt(
    model: nn.Module, batches: Any, method: str = "adabn", inplace: bool = False, **opts: Any
) -> nn.Module:
    """Adapt ``model``'s batch layers to unlabeled target ``batches``; returns the adapted model.

    - ``"adabn"`` (Li et al. 2016, "Revisiting Batch Normalization For Practical Domain
      Adaptation"): running statistics := exact target statistics via `recompute_stats`.
      Options: ``num_batches=None``, ``stats_method="precise"`` (or ``"sequential"``).
    - ``"tent"`` (Wang et al. 2021, "Tent: Fully Test-Time Adaptation by Entropy Minimization"):
      minimize the mean softmax entropy ``-sum_k p_k log p_k`` of the outputs over the affine
      parameters (weight, bias) of batch layers only, with batch statistics; ``steps`` updates per
      batch. As in the paper, the adapted model normalizes with test-batch statistics: its batch
      layers get ``track_running_stats=False`` and running buffers ``None`` (what the reference
      ``configure_model`` does). Options: ``lr=1e-3``, ``steps=1``, ``optimizer="adam"`` (Adam,
      betas (0.9, 0.999)) or ``"sgd"`` (momentum 0.9), ``num_batches=None``.

    ``batches`` is anything `recompute_stats` accepts (labels, if present, are ignored). The
    original model is untouched unless ``inplace=True`` (otherwise a deepcopy is adapted). The
    returned model is in eval mode with its ``requires_grad`` flags as before.
    """
    if method not in ADAPT_METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; choose one of {ADAPT_METHODS}")
    unknown = sorted(set(opts) - set(_OPTIONS[method]))
    if unknown:
        raise TypeError(
            f"adapt(method={method!r}) got unknown option(s) {unknown}; "
            f"allowed: {sorted(_OPTIONS[method])}"
        )
    options = {**_OPTIONS[method], **opts}
    if not batch_layers(model):
        raise ValueError(f"adapt: {type(model).__name__} has no batch layers to adapt")
    target = model if inplace else copy.deepcopy(model)
    if method == "adabn":
        if options["stats_method"] not in RECOMPUTE_METHODS:
            raise ValueError(
                f"stats_method must be one of {RECOMPUTE_METHODS}, got {options['stats_method']!r}"
            )
        return recompute_stats(
            target, batches, num_batches=options["num_batches"], method=options["stats_method"]
        )
    return _tent(target, batches, **options)


def entropy(logits: Tensor) -> Tensor:
    """Per-sample softmax entropy ``-sum_k p_k log p_k`` of (N, K) logits."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Make every batch layer normalize with batch statistics (buffers None) in train and eval
    mode, as TENT's ``configure_model``; returns the affine parameters TENT optimizes."""
    params = []
    for _, layer in batch_layers(model):
        layer.track_running_stats = False
        layer.running_mean = None
        layer.running_var = None
        params += [p for p in (layer.weight, layer.bias) if p is not None]
    return params


def _tent(
    model: nn.Module, batches: Any, lr: float, steps: int, optimizer: str, num_batches: int | None
) -> nn.Module:
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"tent: lr must be > 0, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"tent: steps must be an int >= 1, got {steps!r}")
    if optimizer not in TENT_OPTIMIZERS:
        raise ValueError(f"tent: optimizer must be one of {TENT_OPTIMIZERS}, got {optimizer!r}")
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    params = configure_tent(model)
    if not params:
        raise ValueError("tent: no batch layer has affine parameters (affine=False everywhere)")
    device = params[0].device
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    # eval: dropout off; batch layers still use batch statistics because their buffers are None
    model.eval()
    seen = 0
    try:
        with torch.enable_grad():
            for index, x in enumerate(batch_inputs(batches, num_batches)):
                x = x.to(device)
                for _ in range(steps):
                    logits = model(x)
                    if not isinstance(logits, Tensor) or logits.dim() != 2:
                        raise TypeError(
                            "tent needs a model that returns (N, K) logits, got "
                            f"{type(logits).__name__} {getattr(logits, 'shape', '')}"
                        )
                    loss = entropy(logits).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                seen += 1
                log.debug("tent batch %d: entropy %.4f", index, loss.item())
        if seen == 0:
            raise ValueError(f"tent got no batches from {type(batches).__name__}")
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
            p.grad = None
    return model
