"""Token models: channels-last variants of the norms that apply to (N, L, C) input, picked by
``norm_layer`` and ``convert``; checked against the channels-first layers on the permuted or
flattened input and against torch's own token norms, and on timm's and torchvision's ViTs."""

import pytest
import torch
from torch import nn

import normzoo
from normzoo.layers.channels_last import _ChannelsLast, channels_last_of
from normzoo.registry import create_layout, get_spec, token_norms

C, L = 8, 5
TOKEN_NORMS = ["batch", "batch_renorm", "group", "layer", "rms"]
OPTIONS = {"group": {"groups": 4}, "batch_renorm": {"warmup": 0, "r_ramp": 0, "d_ramp": 0}}


def _tokens(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, L, C, generator=g, dtype=torch.float64) * 3 + 1


def _pair(name, layout="channels_last"):
    """(channels-last variant, channels-first layer) with the same random affine parameters."""
    opts = OPTIONS.get(name, {})
    last = create_layout(name, C, layout, dtype=torch.float64, **opts)
    first = normzoo.create(name, C, dtype=torch.float64, **opts)
    with torch.no_grad():
        for p in last.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    first.load_state_dict(last.state_dict())  # torch's names both ways
    return last, first


def test_token_norms_are_the_ones_with_a_variant_and_none():
    assert token_norms() == sorted([*TOKEN_NORMS, "none"])
    for name in ("instance", "filter_response", "evonorm_s0", "evonorm_b0", "ghost_batch"):
        assert channels_last_of(get_spec(name).cls) is None
        with pytest.raises(ValueError, match=f"norm '{name}' has no channels-last variant"):
            normzoo.norm_layer(name, layout="channels_last")


@pytest.mark.parametrize("name", TOKEN_NORMS)
def test_channels_last_is_the_channels_first_layer_on_flattened_tokens(name):
    """Train mode, two steps (running statistics too), forward and backward: the variant on
    (N, L, C) equals the channels-first layer on (N * L, C), to the last bit."""
    last, first = _pair(name)
    for step in range(2):
        x = _tokens(step)
        xa, xb = x.clone().requires_grad_(), x.reshape(-1, C).clone().requires_grad_()
        ya, yb = last(xa), first(xb)
        assert torch.equal(ya, yb.reshape(x.shape))
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g.reshape(-1, C))
        assert torch.equal(xa.grad, xb.grad.reshape(x.shape))
    for a, b in zip(last.state_dict().values(), first.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    last.eval(), first.eval()
    assert torch.equal(last(_tokens(5)), first(_tokens(5).reshape(-1, C)).reshape(3, L, C))


@pytest.mark.parametrize("name", ["batch", "batch_renorm"])
def test_batch_norms_over_tokens_are_the_channels_first_layer_on_permuted_input(name):
    """Batch norm per channel over the N * L tokens = the channels-first layer on (N, C, L)."""
    last, first = _pair(name)
    x = _tokens(1)
    expected = first(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(last(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last.running_mean, first.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last.running_var, first.running_var, rtol=1e-12, atol=1e-12)


def test_layer_and_rms_over_tokens_are_torchs_token_norms():
    x = _tokens(2)
    layer, _ = _pair("layer")
    ref = nn.LayerNorm(C, dtype=torch.float64)
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-12, atol=1e-12)
    rms, _ = _pair("rms")
    ref = nn.RMSNorm(C, eps=rms.eps, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(rms.weight)
    torch.testing.assert_close(rms(x), ref(x), rtol=1e-12, atol=1e-12)
    group, _ = _pair("group")
    ref = nn.GroupNorm(4, C, dtype=torch.float64)
    ref.load_state_dict(group.state_dict())
    torch.testing.assert_close(group(x), ref(x.reshape(-1, C)).reshape(x.shape), rtol=0, atol=0)


@pytest.mark.parametrize("name", TOKEN_NORMS)
def test_auto_layout_reads_channels_first_input_as_the_plain_layer(name):
    auto, first = _pair(name, layout="auto")
    image = torch.randn(2, C, 3, 3, dtype=torch.float64)
    assert torch.equal(auto(image), first(image))
    tokens = _tokens(3)
    torch.testing.assert_close(auto(tokens), first(tokens.reshape(-1, C)).reshape(tokens.shape))
    assert "layout='auto'" in repr(auto) and isinstance(auto, type(first))


def test_timm_vit_holds_zoo_token_layers_and_trains():
    timm = pytest.importorskip("timm")
    for name, opts in (("group", {"groups": 8}), ("batch", {}), ("layer", {})):
        torch.manual_seed(0)
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            num_classes=10,
            img_size=32,
            patch_size=8,
            depth=2,
            norm_layer=normzoo.norm_layer(name, **opts),
        )
        zoo = [m for m in model.modules() if isinstance(m, _ChannelsLast)]
        assert len(zoo) == 2 * 2 + 1  # norm1 and norm2 per block, and the final norm
        assert not any(type(m) is nn.LayerNorm for m in model.modules())
        x = torch.randn(4, 3, 32, 32)
        y = model(x)
        y.sum().backward()
        assert y.shape == (4, 10) and torch.isfinite(y).all()
        assert all(p.grad is not None for p in zoo[0].parameters())


def test_the_issues_vit_tiny_command():
    """timm.create_model('vit_tiny_patch16_224', norm_layer=normzoo.norm_layer('group',
    groups=8)) failed with "input has 197 channels in dim 1"; random weights, no download."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, norm_layer=normzoo.norm_layer("group", groups=8)
    )
    y = model(torch.randn(1, 3, 224, 224))
    y.sum().backward()
    assert y.shape == (1, 1000)
    assert sum(isinstance(m, _ChannelsLast) for m in model.modules()) == 2 * 12 + 1


@pytest.mark.parametrize("name", ["batch", "group", "rms", "batch_renorm"])
def test_torchvision_vit_by_norm_layer_and_by_convert(name):
    from torchvision.models import VisionTransformer

    small = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32)
    torch.manual_seed(0)
    opts = OPTIONS.get(name, {})
    built = VisionTransformer(**small, mlp_dim=64, norm_layer=normzoo.norm_layer(name, **opts))
    torch.manual_seed(0)
    converted = normzoo.convert(VisionTransformer(**small, mlp_dim=64), name, **opts)
    x = torch.randn(4, 3, 32, 32)
    for model in (built, converted):
        zoo = [m for m in model.modules() if isinstance(m, _ChannelsLast)]
        assert len(zoo) == 2 * 2 + 1  # ln_1, ln_2 per encoder block, and the encoder's ln
        assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
        y = model(x)
        y.sum().backward()
        assert y.shape == (4, 1000) and torch.isfinite(y).all()
    # the same initial weights, the same norms: convert and norm_layer build the same model
    assert built.state_dict().keys() == converted.state_dict().keys()
    built.eval(), converted.eval()
    torch.testing.assert_close(built(x), converted(x))


def test_convert_keeps_layernorm_parameters_and_refuses_other_norms():
    ln = nn.LayerNorm(C, eps=1e-6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-1, 1)
    x = torch.randn(2, L, C)
    expected = ln(x)
    new = normzoo.convert(ln, "layer")
    assert new.layout == "channels_last" and new.eps == 1e-6
    torch.testing.assert_close(new(x), expected)
    assert set(new.state_dict()) == {"weight", "bias"}
    model = nn.Sequential(nn.Linear(C, C), nn.LayerNorm(C))
    with pytest.raises(ValueError, match="'filter_response' has no channels-last.*group, layer"):
        normzoo.convert(model, "filter_response")
    assert type(model[1]) is nn.LayerNorm  # refused before anything was replaced


@pytest.mark.parametrize("name", ["batch", "batch_renorm"])
def test_sync_batch_stats_keeps_the_token_layout(name):
    """sync_batch_stats rebuilds the token variants as their sync classes (and back), so DDP
    works for models built with norm_layer; outside a process group they compute the same."""
    import pickle

    from normzoo.distributed import sync_batch_stats, unsync_batch_stats

    layer, _ = _pair(name, layout="auto")
    model = nn.Sequential(layer)
    x = _tokens(4)
    expected = copy_of(model)(x)
    sync_batch_stats(model)
    assert type(model[0]).__name__.startswith("Sync") and model[0].layout == "auto"
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    pickle.loads(pickle.dumps(model))
    unsync_batch_stats(model)
    assert type(model[0]) is type(layer)


def copy_of(module):
    import copy

    return copy.deepcopy(module)
