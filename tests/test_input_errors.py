"""Channels-first layers fed the wrong layout say what the input looks like and how to fix it."""

from __future__ import annotations

import pytest
import timm
import torch

import normzoo
from normzoo.functional import check_input


def test_token_input_names_tokens_and_channels_not_197_features():
    """A ViT-Tiny block's (N, 197, 192): 197 tokens, 192 channels; never "num_features=197"."""
    with pytest.raises(ValueError) as info:
        check_input(torch.randn(2, 197, 192), 192, "GroupNorm")
    message = str(info.value)
    assert "(N, L, C) tokens with C=192 channels last (L=197 tokens)" in message
    assert "need (N, C, *)" in message
    assert "num_features=197" not in message


def test_channels_last_images_are_named_as_such():
    with pytest.raises(ValueError, match=r"channels-last \(N, \*, C\) with C=3 channels"):
        check_input(torch.randn(2, 8, 8, 3), 3, "BatchNorm")


def test_plain_channel_mismatch_keeps_its_message():
    with pytest.raises(ValueError, match="input has 3 channels in dim 1.*num_features=4"):
        check_input(torch.randn(2, 3, 5), 4, "BatchNorm")


def test_vit_built_with_a_zoo_norm_layer_gets_the_token_hint():
    """The issue's case, at a small image size, with the layout forced to channels first (the
    default ``layout="auto"`` builds token variants that normalize it): timm's ViT calls
    norm_layer(embed_dim), and the error names channels, not tokens."""
    layer = normzoo.norm_layer("group", groups=8, layout="channels_first")  # "auto" handles it
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, norm_layer=layer)
    tokens = (32 // 16) ** 2 + 1  # patches + class token
    with pytest.raises(ValueError, match=rf"C=192 channels last \(L={tokens} tokens\)"):
        model(torch.randn(1, 3, 32, 32))
