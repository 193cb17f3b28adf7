"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le 2020, "Evolving
Normalization-Activation Layers"), normalization and activation in one layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normzoo import functional as nzf
from normzoo.layers.checks import check_eps, check_momentum
from normzoo.layers.group import resolve_groups


class EvoNormB0(_BatchNorm):
    """EvoNorm-B0 (paper Table 1): ``y = x / max(sqrt(s2_b + eps), v * x + sqrt(s2_i + eps))
    * weight + bias``, batch-dependent.

    ``s2_b`` is the per-channel biased batch variance over (N, *) in training (its unbiased
    version feeds ``running_var`` by EMA, ``momentum=None``: cumulative average) and
    ``running_var`` in eval; ``s2_i`` is each sample's per-channel variance over (*) (0 without
    spatial dims); ``v`` is a learned per-channel parameter (init 1). Defaults equal timm's
    ``EvoNorm2dB0`` (eps=1e-3, momentum=0.1).

    The layer is a ``torch`` ``_BatchNorm`` so the zoo's test-time tools (``stats_mode``,
    ``recompute_stats``, ``adapt``) treat its variance like batch norm's. B0 subtracts no mean:
    ``running_mean`` exists for those tools only, is never read, and is not saved (a
    non-persistent buffer); ``num_batches_tracked`` is not saved either. The state dict is
    therefore timm's (``weight``, ``bias``, ``v``, ``running_var``) and loads both ways with
    ``EvoNorm2dB0`` (with ``affine=False``, ``weight``/``bias`` are absent).

    The layer is normalization *and* activation (it replaces BN-ReLU): backbones put no
    activation after it (``provides_activation``). ``apply_act=False`` is the reference code's
    ``nonlinearity=False`` (tensorflow/tpu ``resnet_layers.evonorm``, timm's ``apply_act``),
    used before a residual addition: ``v`` is absent and the layer is ``x * weight + bias``.

    Being a ``_BatchNorm`` also makes torch's ``nn.SyncBatchNorm.convert_sync_batchnorm`` and
    timm's ``freeze_batch_norm_2d`` take it for batch norm and silently replace it by plain batch
    norm (a different function): for multi-process training use
    ``normzoo.distributed.sync_batch_stats`` (or Lightning's ``ZooLayerSync``), which turns it
    into ``SyncEvoNormB0`` (variance of the global batch).

    A training batch with NaN/inf raises as in ``BatchNorm`` (on CPU, ``running_var`` and
    ``num_batches_tracked`` unchanged; masked on other devices); opt out per layer with
    ``layer.check_finite = False``.

    Args:
        num_features: channels C of the input.
        eps: added to both variances before the square roots (timm's 1e-3).
        momentum: weight of each new batch in the running statistics (torch's convention;
            ``None``: cumulative average).
        affine: learn the per-channel ``weight`` and ``bias``.
        track_running_stats: keep ``running_mean``/``running_var``; without them eval uses
            batch statistics.
        apply_act: the nonlinearity (``v``); ``False`` leaves ``x * weight + bias``.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: an invalid option (eps <= 0, momentum outside [0, 1]); in the forward, an
            input that is not ``(N, C, *)`` with C = ``num_features``, a training batch with
            one value per channel, or (on CPU) a training batch with NaN/inf.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> b0 = normzoo.create("evonorm_b0", 4)
        >>> b0(torch.randn(8, 4, 3, 3)).shape
        torch.Size([8, 4, 3, 3])
        >>> sorted(b0.state_dict())  # timm's EvoNorm2dB0 keys
        ['bias', 'running_var', 'v', 'weight']
    """

    activation_option = "apply_act"  # the constructor flag that turns its activation off

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-3,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        apply_act: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_eps(type(self).__name__, eps)
        check_momentum(type(self).__name__, momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        v = torch.ones(num_features, device=device, dtype=dtype)
        self.register_parameter("v", nn.Parameter(v) if apply_act else None)
        if track_running_stats:
            for name in ("running_mean", "num_batches_tracked"):
                buffer = getattr(self, name)
                delattr(self, name)
                self.register_buffer(name, buffer, persistent=False)

    @property
    def provides_activation(self) -> bool:
        """Whether the layer applies its own nonlinearity (no activation should follow)."""
        return self.v is not None

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.v is not None else ", apply_act=False")

    def _check_input_dim(self, x: Tensor) -> None:
        nzf.check_input(x, self.num_features, type(self).__name__)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # skip _NormBase's fill-in of num_batches_tracked for old checkpoints: ours is not saved
        nn.Module._load_from_state_dict(self, *args, **kwargs)

    check_finite = True  # raise on a non-finite training batch; set False on a layer to opt out

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if self.v is None:  # the reference's nonlinearity=False: the affine transform only
            return nzf.channel_affine(x, self.weight, self.bias)
        factor = 0.0 if self.momentum is None else self.momentum
        count = self.num_batches_tracked
        counting = self.training and self.track_running_stats and count is not None
        if counting and self.momentum is None:
            factor = nzf.ema_factor(None, int(count) + 1)
        use_batch_stats = self.training or self.running_var is None
        running_var = self.running_var if (not self.training or self.track_running_stats) else None
        y = nzf.evonorm_b0(
            x,
            running_var,
            self.weight,
            self.bias,
            self.v,
            use_batch_stats,
            factor,
            self.eps,
            self.check_finite,
        )
        if counting:  # after the step went through: a rejected batch is no step
            self.num_batches_tracked.add_(1)
        return y


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (paper Table 1): ``y = x * sigmoid(v * x) / group_std(x) * weight + bias``,
    ``group_std`` = per sample sqrt(biased variance over each group of channels and (*) + eps).

    Batch-independent. ``groups=32`` (or ``group_size``, channels per group), validated as in
    the zoo's group norm. Defaults and
    parameter names (``weight``, ``bias``, ``v``) equal timm's ``EvoNorm2dS0``, so state dicts
    load both ways (with ``affine=False``, ``weight``/``bias`` are absent).

    Normalization and activation in one (it replaces GN-ReLU; ``provides_activation``).
    ``apply_act=False`` as in the reference code and timm (before a residual addition): ``v``
    is absent and the layer is ``x * weight + bias``.

    Args:
        num_features: channels C of the input.
        eps: added to the group variance before the square root.
        affine: learn the per-channel ``weight`` and ``bias``.
        groups: number of groups (default 32); must divide ``num_features``.
        group_size: channels per group instead of ``groups`` (not both).
        apply_act: the nonlinearity (``v``); ``False`` leaves ``x * weight + bias``.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, any number of spatial dims.
        - Output: same shape as the input.

    Raises:
        ValueError: groups or group_size not dividing ``num_features`` (listing the valid
            values), or eps <= 0; in the forward, an input that is not ``(N, C, *)`` with
            C = ``num_features``.

    Examples:
        >>> import torch, normzoo
        >>> _ = torch.manual_seed(0)
        >>> s0 = normzoo.create("evonorm_s0", 8, groups=2)
        >>> x = torch.randn(2, 8, 4, 4)
        >>> torch.allclose(s0(x)[:1], s0(x[:1]))  # batch-independent
        True
    """

    activation_option = "apply_act"  # the constructor flag that turns its activation off

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        groups: int | None = None,
        group_size: int | None = None,
        apply_act: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_eps(type(self).__name__, eps)
        super().__init__()
        self.groups = resolve_groups(num_features, groups, group_size, "evonorm_s0")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.weight = nn.Parameter(torch.ones(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if affine else None
        self.v = nn.Parameter(torch.ones(num_features, **factory)) if apply_act else None

    @property
    def provides_activation(self) -> bool:
        """Whether the layer applies its own nonlinearity (no activation should follow)."""
        return self.v is not None

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, groups={self.groups}, eps={self.eps}, affine={self.affine}"
            + ("" if self.v is not None else ", apply_act=False")
        )

    def forward(self, x: Tensor) -> Tensor:
        nzf.check_input(x, self.num_features, type(self).__name__)
        if self.v is None or x.numel() == 0:
            # nonlinearity=False (the reference's): the affine transform only. An empty batch has
            # no group statistics; like torch's GroupNorm it gives an empty output (affine only).
            return nzf.channel_affine(x, self.weight, self.bias)
        return nzf.evonorm_s0(x, self.groups, self.weight, self.bias, self.v, self.eps)
