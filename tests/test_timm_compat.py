"""normzoo/timm_compat.py: registration with timm's private norm+act sets fails loudly."""

import functools

import pytest
import timm
import timm.layers
import timm.layers.create_norm_act as create_norm_act
from torch import nn

import normzoo
from normzoo.interop import ZooNormFactory
from normzoo.layers.act import BatchNormAct
from normzoo.timm_compat import register_norm_act_type


@pytest.fixture
def fresh_registration():
    register_norm_act_type.cache_clear()
    yield
    register_norm_act_type.cache_clear()
    register_norm_act_type(ZooNormFactory)  # leave timm as the other tests expect it


def test_registration_makes_timm_build_zoo_norm_act_layers(fresh_registration):
    assert register_norm_act_type(ZooNormFactory) is True
    built = timm.layers.get_norm_act_layer(normzoo.norm_layer("batch"), act_layer=nn.SiLU)(8)
    assert type(built) is BatchNormAct and isinstance(built.act, nn.SiLU)


@pytest.mark.parametrize("private", ["_NORM_ACT_TYPES", "_NORM_ACT_REQUIRES_ARG"])
def test_missing_private_set_raises_naming_the_timm_version(
    fresh_registration, monkeypatch, private
):
    monkeypatch.delattr(create_norm_act, private)
    with pytest.raises(RuntimeError, match=rf"timm {timm.__version__} .*tested range.*pip install"):
        normzoo.norm_layer("batch")


def test_timm_ignoring_the_registration_raises(fresh_registration, monkeypatch):
    def timm_own_layer(norm_layer, act_layer=None):  # what a changed timm might do
        return functools.partial(timm.layers.BatchNormAct2d, act_layer=act_layer)

    monkeypatch.setattr(timm.layers, "get_norm_act_layer", timm_own_layer)
    with pytest.raises(RuntimeError, match="built BatchNormAct2d.*not a zoo layer"):
        register_norm_act_type(ZooNormFactory)
