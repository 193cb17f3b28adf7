"""Benchmark backbones, each built with a given normalization layer from the zoo.

``small_cnn`` (default, fast on CPU), ``resnet_tiny`` (residual), ``mlp`` (no spatial dims after
its first pooling, so instance norm does not apply), any timm model as ``timm:<name>``, any
torchvision classification model as ``torchvision:<name>`` and a user's model factory as
``package.module:factory`` (:mod:`normzoo.model_sources`).
Backbone option ``conv``: ``"plain"`` (default) or ``"ws"``, every ``nn.Conv2d`` weight-standardized
(Qiao et al. 2019), the usual partner of group norm at small batch.
"""

from __future__ import annotations

import torch
from torch import nn

import normzoo
from normzoo.model_sources import (
    TIMM_PREFIX,
    build_library_model,
    check_source,
    describe,
    describe_line,
    is_library_backbone,
)
from normzoo.registry import canonical_name, provides_activation, without_activation

__all__ = [
    "BACKBONES",
    "TIMM_PREFIX",
    "build_model",
    "check_backbone",
    "describe",
    "describe_line",
    "has_batch_layers",
    "has_spatial_dims",
]

BACKBONES = ("small_cnn", "resnet_tiny", "mlp")
CONVS = ("plain", "ws")


def has_spatial_dims(backbone: str) -> bool:
    """Whether the backbone's normalized activations have spatial dims (needed by instance norm)."""
    return backbone != "mlp"


def check_backbone(backbone: str) -> None:
    """Raise ValueError naming the allowed backbones when ``backbone`` is unknown, or when a
    ``timm:``/``torchvision:`` name is unknown or a factory path does not import."""
    if is_library_backbone(backbone):
        check_source(backbone)
    elif backbone not in BACKBONES:
        raise ValueError(
            f"unknown backbone '{backbone}'; allowed: {', '.join(BACKBONES)}, 'timm:<name>', "
            "'torchvision:<name>' or 'package.module:factory'"
        )


def _conv_block(
    in_ch: int, out_ch: int, stride: int, norm: str, norm_options: dict
) -> list[nn.Module]:
    bias = norm == "none"  # a following norm layer's shift makes a conv bias redundant
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
    return [conv, *_norm_relu(norm, out_ch, norm_options)]


def _norm_relu(norm: str, channels: int, norm_options: dict) -> list[nn.Module]:
    """The norm and a ReLU; a norm with its own nonlinearity (FRN + TLU, EvoNorm) replaces both,
    as in its paper (``provides_activation``)."""
    layer = normzoo.create(norm, channels, **norm_options)
    return [layer] if provides_activation(layer) else [layer, nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Four conv-norm-relu blocks (the last three with stride 2), global average pool, linear."""

    def __init__(
        self,
        norm: str,
        num_classes: int,
        in_channels: int = 3,
        norm_options: dict | None = None,
        widths: tuple[int, ...] = (32, 64, 128, 128),
    ) -> None:
        super().__init__()
        norm_options = norm_options or {}
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(widths):
            layers += _conv_block(previous, width, 1 if i == 0 else 2, norm, norm_options)
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-norm, identity or 1x1 conv shortcut.

    A norm with its own nonlinearity (FRN + TLU, EvoNorm) replaces norm1 and its ReLU; the
    norms before the addition (norm2, the shortcut's) have it turned off
    (:func:`normzoo.registry.without_activation`, timm's ``apply_act=False``); the ReLU after
    the addition stays.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, norm_options: dict) -> None:
        super().__init__()
        linear = without_activation(norm, norm_options)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1, *act1 = _norm_relu(norm, out_ch, norm_options)
        self.act1: nn.Module = act1[0] if act1 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = normzoo.create(norm, out_ch, **linear)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                normzoo.create(norm, out_ch, **linear),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNetTiny(nn.Module):
    """A stem conv and one basic block per stage (widths 32-64-128), global average pool, linear."""

    def __init__(
        self,
        norm: str,
        num_classes: int,
        in_channels: int = 3,
        norm_options: dict | None = None,
        widths: tuple[int, ...] = (32, 64, 128),
    ) -> None:
        super().__init__()
        norm_options = norm_options or {}
        self.stem = nn.Sequential(*_conv_block(in_channels, widths[0], 1, norm, norm_options))
        blocks = []
        previous = widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(previous, width, 1 if i == 0 else 2, norm, norm_options))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class MLP(nn.Module):
    """Average-pool to 8x8, flatten, two linear-norm-relu layers on (N, C) features, linear."""

    def __init__(
        self,
        norm: str,
        num_classes: int,
        in_channels: int = 3,
        norm_options: dict | None = None,
        width: int = 256,
    ) -> None:
        super().__init__()
        norm_options = norm_options or {}
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.body = nn.Sequential(
            nn.Linear(in_channels * 64, width, bias=False),
            *_norm_relu(norm, width, norm_options),
            nn.Linear(width, width, bias=False),
            *_norm_relu(norm, width, norm_options),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.pool(x).flatten(1)))


def standardize_convs(model: nn.Module) -> int:
    """Replace every ``nn.Conv2d`` of ``model`` in place by a weight-standardized
    :class:`~normzoo.layers.WSConv2d` with the same weights; returns how many were replaced."""
    from normzoo.layers import WSConv2d

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                setattr(parent, name, WSConv2d.from_conv(child))
                replaced += 1
    return replaced


def build_model(
    backbone: str,
    norm: str,
    num_classes: int,
    in_channels: int = 3,
    norm_options: dict | None = None,
    conv: str = "plain",
    **backbone_options,
) -> nn.Module:
    """Build ``backbone`` with every norm layer made by ``normzoo.create(norm, C, **opts)``.

    ``timm:<name>`` builds ``timm.create_model(name, pretrained=False,
    norm_layer=normzoo.norm_layer(norm, **opts))``, ``torchvision:<name>``
    ``torchvision.models.get_model(name, weights=None, norm_layer=...)`` and
    ``package.module:factory`` calls ``factory(num_classes=..., in_channels=..., norm_layer=...,
    **backbone_options)``; norms a constructor makes without ``norm_layer`` are converted
    (:func:`normzoo.model_sources.build_library_model`). Nothing is downloaded. ``conv="ws"``
    weight-standardizes every ``nn.Conv2d`` (:func:`standardize_convs`).

    Raises:
        ValueError: unknown backbone, options the model rejects, or a model that holds no
            normalization layer (unless ``norm`` is ``none``).
    """
    check_backbone(backbone)
    if conv not in CONVS:
        raise ValueError(
            f"unknown conv {conv!r}; allowed: {', '.join(CONVS)} (model option 'conv')"
        )
    if is_library_backbone(backbone):
        model = build_library_model(
            backbone, norm, num_classes, in_channels, norm_options, **backbone_options
        )
    else:
        model = _build(backbone, norm, num_classes, in_channels, norm_options, **backbone_options)
    if canonical_name(norm) != "none" and describe(model)["norm_layers"] == 0:
        raise ValueError(
            f"backbone '{backbone}' holds no normalization layer, so norm '{norm}' has nothing "
            "to replace and every norm would train the same model; use a backbone with norm "
            "layers (e.g. torchvision:vgg11_bn, not vgg11) or a factory that uses its "
            "norm_layer argument"
        )
    if conv == "ws" and standardize_convs(model) == 0:
        raise ValueError(
            f"conv 'ws' standardizes convolution weights, but backbone '{backbone}' has no "
            "nn.Conv2d; use a convolutional backbone (small_cnn, resnet_tiny, timm:...)"
        )
    return model


def _build(
    backbone: str,
    norm: str,
    num_classes: int,
    in_channels: int,
    norm_options: dict | None,
    **backbone_options,
) -> nn.Module:
    norm_options = dict(norm_options or {})
    cls = {"small_cnn": SmallCNN, "resnet_tiny": ResNetTiny, "mlp": MLP}[backbone]
    for key in ("widths",):
        if key in backbone_options:
            backbone_options[key] = tuple(backbone_options[key])
    return cls(norm, num_classes, in_channels, norm_options, **backbone_options)


def has_batch_layers(model: nn.Module) -> bool:
    """Whether any layer normalizes with batch statistics (torch or zoo ``_BatchNorm``)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
