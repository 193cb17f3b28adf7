"""Unsupervised test-time adaptation of batch layers to a shifted target set: AdaBN and TENT."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from normzoo.testtime.inputs import batch_inputs
from normzoo.testtime.modes import batch_layers
from normzoo.testtime.recompute import RECOMPUTE_METHODS, recompute_stats

ADAPT_METHODS = ("adabn", "tent")
TENT_OPTIMIZERS = ("adam", "sgd")
# DequanWang/tent, conf.py: OPTIM.METHOD Adam, LR 1e-3, BETA 0.9, MOMENTUM 0.9, DAMPENING 0,
# NESTEROV True, WD 0, STEPS 1; MODEL.EPISODIC False
TENT_DEFAULTS = {
    "lr": 1e-3,
    "steps": 1,
    "optimizer": "adam",
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.0,
    "episodic": False,
}
_OPTIONS = {
    "adabn": {"num_batches": None, "stats_method": "precise"},
    "tent": {**TENT_DEFAULTS, "num_batches": None},
}


def adapt(
    model: nn.Module, batches: Any, method: str = "adabn", inplace: bool = False, **opts: Any
) -> nn.Module:
    """Adapt ``model``'s batch layers to unlabeled target ``batches``; returns the adapted model.

    - ``"adabn"`` (Li et al. 2016, "Revisiting Batch Normalization For Practical Domain
      Adaptation"): running statistics := exact target statistics via `recompute_stats`.
      Options: ``num_batches=None``, ``stats_method="precise"`` (or ``"sequential"``).
    - ``"tent"`` (Wang et al. 2021, "Tent: Fully Test-Time Adaptation by Entropy Minimization"):
      one pass of :class:`Tent` over ``batches``, online as the official code (each batch: a
      forward pass in train mode, the mean softmax entropy of its outputs, one optimizer step on
      the batch layers' affine parameters; ``steps`` times). Options: :data:`TENT_DEFAULTS`
      (``lr``, ``steps``, ``optimizer``, ``momentum``, ``nesterov``, ``weight_decay``,
      ``episodic``; see :class:`Tent`) and ``num_batches=None``. The returned model is the one
      after the last batch: to score TENT as the paper does, score each batch by the outputs of
      the pass that adapts on it (use :class:`Tent` directly); predicting again with the
      returned model on the same batches is a different, transductive protocol (two passes,
      usually optimistic; report it under its own name, e.g. ``tent_offline``).

    ``batches`` is anything `batch_inputs` accepts (labels, if present, are ignored). The
    original model is untouched unless ``inplace=True`` (otherwise a deepcopy is adapted). The
    returned model is in eval mode with its ``requires_grad`` flags as before.

    Args:
        model: a model with batch layers (every ``_BatchNorm``); for ``tent`` it must return
            ``(N, K)`` logits.
        batches: unlabeled target data, as :func:`~normzoo.testtime.inputs.batch_inputs`
            accepts it.
        method: ``"adabn"`` (default) or ``"tent"`` (:data:`ADAPT_METHODS`).
        inplace: adapt ``model`` itself instead of a deep copy.
        **opts: the method's options (above).

    Returns:
        The adapted model (a copy unless ``inplace``), in eval mode.

    Raises:
        ValueError: unknown method, no batch layers, no batches, or a bad option value.
        TypeError: an option the method does not take.

    Examples:
        >>> import torch, normzoo
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), normzoo.create("batch", 4)).eval()
        >>> target = [torch.randn(4, 3, 8, 8) + 2 for _ in range(3)]  # shifted, unlabeled
        >>> adapted = normzoo.adapt(model, target, "adabn")
        >>> adapted is model, adapted.training
        (False, False)
        >>> bool((adapted[1].running_mean != model[1].running_mean).all())
        True
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
    num_batches = options.pop("num_batches")
    requires_grad = {p: p.requires_grad for p in target.parameters()}
    try:
        tent = Tent(target, **options)
        device = tent.params[0].device
        seen = 0
        try:
            for x in batch_inputs(batches, num_batches):
                tent(x.to(device))
                seen += 1
        except ValueError:  # a non-finite batch: undo the steps of the batches before it
            tent.reset()
            raise
        if seen == 0:
            raise ValueError(f"tent got no batches from {type(batches).__name__}")
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
            p.grad = None
    return target.eval()


def entropy(logits: Tensor) -> Tensor:
    """Per-sample softmax entropy ``-sum_k p_k log p_k`` of (N, K) logits."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Prepare ``model`` in place as the official ``configure_model`` and ``collect_params`` do:
    train mode, gradients off except the affine parameters of the batch layers, which normalize
    with batch statistics in train and eval mode (running buffers None); returns those
    parameters. Batch layers are all ``_BatchNorm`` (torch 1d/2d/3d, sync, zoo, timm)."""
    model.train()
    model.requires_grad_(False)
    params = []
    for _, layer in batch_layers(model):
        layer.track_running_stats = False
        layer.running_mean = None
        layer.running_var = None
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.requires_grad_(True)
                params.append(p)
    return params


class Tent(nn.Module):
    """TENT (Wang et al. 2021) as the official code (DequanWang/tent) runs it: every forward call
    adapts the model on the batch and returns the outputs of the forward pass that adapted, so
    each batch is scored before the model has seen the batches after it (online).

    ``model`` is configured in place by :func:`configure_tent` (train mode: dropout and drop-path
    stay on, as in the official code; call ``.eval()`` to turn them off). Each forward call:
    ``steps`` times {outputs = model(x); loss = mean softmax entropy; backward; optimizer step},
    the last outputs returned (detached). ``episodic=True`` resets model and optimizer to their
    initial state before every batch (:meth:`reset`). Optimizer as the official
    ``setup_optimizer``: ``"adam"`` (betas (0.9, 0.999)) or ``"sgd"`` (``momentum``,
    ``nesterov``), both with ``weight_decay``; defaults :data:`TENT_DEFAULTS` are the official
    config's (Adam, lr 1e-3, 1 step; SGD with Nesterov momentum 0.9).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = TENT_DEFAULTS["lr"],
        steps: int = TENT_DEFAULTS["steps"],
        optimizer: str = TENT_DEFAULTS["optimizer"],
        momentum: float = TENT_DEFAULTS["momentum"],
        nesterov: bool = TENT_DEFAULTS["nesterov"],
        weight_decay: float = TENT_DEFAULTS["weight_decay"],
        episodic: bool = TENT_DEFAULTS["episodic"],
    ) -> None:
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"tent: lr must be > 0, got {lr!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"tent: steps must be an int >= 1, got {steps!r}")
        if optimizer not in TENT_OPTIMIZERS:
            raise ValueError(f"tent: optimizer must be one of {TENT_OPTIMIZERS}, got {optimizer!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"tent: momentum must be in [0, 1), got {momentum!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"tent: weight_decay must be >= 0, got {weight_decay!r}")
        if nesterov and optimizer == "sgd" and momentum == 0:
            raise ValueError("tent: nesterov=True needs momentum > 0 (or pass nesterov=False)")
        super().__init__()
        if not batch_layers(model):
            raise ValueError(f"tent: {type(model).__name__} has no batch layers to adapt")
        self.model = model
        self.params = configure_tent(model)
        if not self.params:
            raise ValueError("tent: no batch layer has affine parameters (affine=False everywhere)")
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(
                self.params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                self.params,
                lr=lr,
                momentum=momentum,
                dampening=0.0,
                weight_decay=weight_decay,
                nesterov=bool(nesterov),
            )
        self.steps, self.episodic = steps, bool(episodic)
        self._initial = (
            copy.deepcopy(model.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not bool(torch.isfinite(x).all()):  # before any step: parameters stay as they were
            raise ValueError(
                "tent: the batch holds non-finite values (NaN or inf); adapting on it would make"
                " the model's parameters and statistics NaN, so nothing was changed. Clean or drop"
                " such batches (e.g. x.nan_to_num() or a mask of torch.isfinite(x))"
            )
        if self.episodic:
            self.reset()
        for _ in range(self.steps):
            outputs = self._forward_and_adapt(x)
        return outputs

    def reset(self) -> None:
        """Model and optimizer back to their state when this Tent was built."""
        model_state, optimizer_state = self._initial
        self.model.load_state_dict(model_state, strict=True)
        self.optimizer.load_state_dict(optimizer_state)

    @torch.enable_grad()  # adapts inside the caller's no_grad too, as the official code
    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        outputs = self.model(x)
        if not isinstance(outputs, Tensor) or outputs.dim() != 2:
            raise TypeError(
                "tent needs a model that returns (N, K) logits, got "
                f"{type(outputs).__name__} {getattr(outputs, 'shape', '')}"
            )
        loss = entropy(outputs).mean(0)
        if not bool(torch.isfinite(loss)):
            raise ValueError(
                "tent: the entropy of this batch's outputs is not finite; the optimizer step is"
                " skipped and the parameters stay as they were"
            )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return outputs.detach()
