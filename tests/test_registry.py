"""Names, aliases, options and the errors users see for bad input."""

import pytest
import torch

import normzoo
from normzoo.registry import canonical_name


def test_available_is_sorted_and_complete():
    names = normzoo.available()
    assert names == sorted(names)
    assert {"batch", "layer", "instance", "group", "batch_renorm", "none"} <= set(names)


@pytest.mark.parametrize(
    "alias,name",
    [
        ("bn", "batch"),
        ("BatchNorm", "batch"),
        ("LN", "layer"),
        ("in", "instance"),
        ("gn", "group"),
        ("Group-Norm", "group"),
        ("brn", "batch_renorm"),
        ("batch-renorm", "batch_renorm"),
        ("BATCH_RENORM", "batch_renorm"),
    ],
)
def test_aliases(alias, name):
    assert canonical_name(alias) == name
    assert type(normzoo.create(alias, 32)) is type(normzoo.create(name, 32))


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(ValueError) as err:
        normzoo.create("grup", 8)
    msg = str(err.value)
    assert "'grup'" in msg and "Did you mean 'group'" in msg
    for name in normzoo.available():
        assert name in msg


def test_groups_not_dividing_lists_valid_values():
    with pytest.raises(
        ValueError, match=r"groups=5 does not divide num_features=12.*\[1, 2, 3, 4, 6, 12\]"
    ):
        normzoo.create("group", 12, groups=5)
    with pytest.raises(ValueError, match="group_size=5"):
        normzoo.create("group", 12, group_size=5)
    with pytest.raises(ValueError, match="not both"):
        normzoo.create("group", 12, groups=2, group_size=6)
    assert normzoo.create("group", 12, group_size=4).num_groups == 3


def test_unknown_option_names_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['momentum'\].*batch-independent"):
        normzoo.create("group", 32, momentum=0.1)
    with pytest.raises(TypeError, match="accepted options"):
        normzoo.create("batch", 32, groups=4)
    with pytest.raises(TypeError):
        normzoo.norm_layer("layer", rmax=3)


@pytest.mark.parametrize("name", ["batch", "batch_renorm"])
def test_one_value_per_channel_in_training(name):
    layer = normzoo.create(name, 4)
    with pytest.raises(ValueError, match="more than 1 value per channel.*batch size >= 2"):
        layer(torch.randn(1, 4))
    layer(torch.randn(1, 4, 3, 3))  # spatial positions count as values
    layer.eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)  # running statistics need no batch


@pytest.mark.parametrize("name", ["batch", "layer", "group", "batch_renorm", "none"])
def test_wrong_rank_and_channels(name):
    layer = normzoo.create(name, 4, **({"groups": 2} if name == "group" else {}))
    with pytest.raises(ValueError, match=r"channels-first input \(N, C, \*\)"):
        layer(torch.randn(4))
    with pytest.raises(ValueError, match="3 channels in dim 1.*num_features=4"):
        layer(torch.randn(2, 3, 5))


def test_instance_needs_spatial_dims():
    layer = normzoo.create("instance", 4)
    with pytest.raises(ValueError, match="at least one spatial dimension"):
        layer(torch.randn(8, 4))
    with pytest.raises(ValueError, match="single value"):
        layer(torch.randn(8, 4, 1, 1))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_num_features(bad):
    with pytest.raises(ValueError, match="num_features"):
        normzoo.create("batch", bad)


def test_register_new_norm():
    from torch import nn

    from normzoo.registry import _LOOKUP, _REGISTRY, register

    class Scale(nn.Module):
        def __init__(self, num_features, eps=1e-5, affine=True, device=None, dtype=None):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))

        def forward(self, x):
            return x * self.scale.view(1, -1, *([1] * (x.dim() - 2)))

    try:
        register("scale_only", Scale, aliases=("so",), batch_dependent=False)
        assert "scale_only" in normzoo.available()
        assert isinstance(normzoo.create("so", 3), Scale)
        with pytest.raises(ValueError, match="already registered"):
            register("other", Scale, aliases=("bn",), batch_dependent=False)
    finally:
        _REGISTRY.pop("scale_only", None)
        for key in ("scaleonly", "so"):
            _LOOKUP.pop(key, None)
