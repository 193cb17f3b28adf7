"""Backbones from torchvision, timm and a user's factory, built with zoo norms (issue 24 item 2).

References: torchvision's own resnet18 and VisionTransformer built with torch's norm layers
(state dicts load both ways and the outputs agree), and counts read off the architectures.
"""

import functools
import sqlite3

import pytest
import torch
import torchvision
import yaml
from torch import nn

import normzoo
from normzoo.bench.plan.config import load_config
from normzoo.models import build_model, describe, describe_line

FACTORY = f"{__name__}:tiny_factory"


def tiny_factory(num_classes, in_channels, norm_layer, width=16):
    """A user's model: conv-norm-relu twice, pooled, linear; its norms from ``norm_layer``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        norm_layer(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
        norm_layer(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def torch_norm_factory(num_classes, in_channels, norm_layer):
    """Ignores ``norm_layer``: its torch batch norm is converted to the zoo's."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(num_classes)
    )  # lazy: its parameters have no size yet, and `describe` counts them as 0


def no_norm_factory(num_classes, in_channels, norm_layer):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def raising_factory(num_classes, in_channels, norm_layer):
    raise RuntimeError("checkpoint file\nmissing")


def tuple_factory(num_classes, in_channels, norm_layer):
    return (num_classes, in_channels)


NOT_CALLABLE = 3


def _forward_backward(model, x):
    model.train()
    out = model(x)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize(
    ("norm", "options", "torch_norm"),
    [
        ("batch", {}, nn.BatchNorm2d),
        ("group", {"groups": 8}, functools.partial(nn.GroupNorm, 8)),
    ],
)
def test_torchvision_resnet18_matches_torchs_own(norm, options, torch_norm):
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", norm, 10, 3, options)
    info = describe(model)
    assert info["norm_kinds"] == {norm: 20} and info["foreign_norm_layers"] == {}
    # resnet18: 11.18M parameters with 1000 classes; the head here has 10
    reference = torchvision.models.resnet18(num_classes=10, norm_layer=torch_norm)
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    x = torch.randn(4, 3, 32, 32)
    assert _forward_backward(model, x).shape == (4, 10)
    model.eval()
    with torch.no_grad():  # trained-looking statistics, so eval is not the identity
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    reference.load_state_dict(model.state_dict())  # strict: torch's names, both ways
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


def test_torchvision_in_channels_replace_the_stem():
    model = build_model("torchvision:resnet18", "batch", 5, 1)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_torchvision_model_without_norm_layer_argument_is_converted():
    model = build_model("torchvision:vgg11_bn", "group", 3, 3, {"groups": 8})
    assert describe(model)["norm_kinds"] == {"group": 8}  # VGG takes no norm_layer
    assert not describe(model)["foreign_norm_layers"]


def _small_vit(norm_layer):
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
        norm_layer=norm_layer,
    )


@pytest.mark.parametrize(
    ("norm", "options"), [("layer", {}), ("group", {"groups": 8}), ("batch", {})]
)
def test_torchvision_vit_with_zoo_norms(norm, options):
    torch.manual_seed(0)
    model = _small_vit(normzoo.norm_layer(norm, **options))
    assert describe(model)["norm_kinds"] == {norm: 5}  # 2 per block + the final one
    out = _forward_backward(model, torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    if norm == "layer":  # token layer norm = nn.LayerNorm(C): same state dict, same output
        reference = _small_vit(functools.partial(nn.LayerNorm, eps=1e-5))
        reference.load_state_dict(model.state_dict())
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), reference.eval()(x))


@pytest.mark.parametrize(
    ("norm", "options"), [("layer", {}), ("group", {"groups": 8}), ("batch", {})]
)
def test_timm_vit_tiny_with_zoo_norms(norm, options):
    model = build_model("timm:vit_tiny_patch16_224", norm, 10, 3, options, img_size=32)
    info = describe(model)
    assert info["norm_kinds"] == {norm: 25} and not info["foreign_norm_layers"]  # 12 x 2 + 1
    assert _forward_backward(model, torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("backbone", "options"),
    [("timm:vit_tiny_patch16_224", {"img_size": 32}), ("torchvision:vit_b_16", {"image_size": 32})],
)
def test_instance_norm_on_tokens_is_refused_naming_the_norms_that_apply(backbone, options):
    with pytest.raises(ValueError) as error:
        build_model(backbone, "instance", 10, 3, **options)
    message = str(error.value)
    assert "\n" not in message and "normalizes token input" in message
    assert "norms that apply to tokens: batch, batch_renorm, group, layer, none, rms" in message


def test_user_factory_gets_classes_channels_norm_layer_and_options():
    model = build_model(FACTORY, "group", 7, 1, {"groups": 4}, width=8)
    info = describe(model)
    assert info["norm_kinds"] == {"group": 2} and info["norm_parameters"] == 2 * 2 * 8
    assert all(m.num_groups == 4 for m in model.modules() if isinstance(m, nn.GroupNorm))
    assert _forward_backward(model, torch.randn(4, 1, 16, 16)).shape == (4, 7)
    assert describe_line(info).startswith(f"{info['parameters']} parameters, 2 zoo norm layers")


def test_factory_that_ignores_norm_layer_has_its_norms_converted():
    model = build_model(f"{__name__}:torch_norm_factory", "batch_renorm", 3, 3)
    info = describe(model)
    assert info["norm_kinds"] == {"batch_renorm": 1} and not info["foreign_norm_layers"]
    assert info["parameters"] == 3 * 8 * 9 + 8 + 2 * 8  # conv (+bias) and the norm's affine


@pytest.mark.parametrize(
    ("backbone", "error", "match"),
    [
        (
            "no_such_pkg.models:build",
            ValueError,
            r"cannot import module 'no_such_pkg\.models'.*"
            r"ModuleNotFoundError.*PYTHONPATH",
        ),
        (f"{__name__}:nope", ValueError, "has no attribute 'nope'"),
        (f"{__name__}:NOT_CALLABLE", ValueError, r"is not callable \(a int\)"),
        (
            f"{__name__}:raising_factory",
            ValueError,
            r"raised RuntimeError: checkpoint file missing \(it is called as factory",
        ),
        (f"{__name__}:tuple_factory", TypeError, "returned tuple, not a torch.nn.Module"),
        (f"{__name__}:no_norm_factory", ValueError, "holds no normalization layer"),
        ("torchvision:vgg11", ValueError, "holds no normalization layer.*vgg11_bn"),
        ("torchvision:resnet81", ValueError, "unknown torchvision .*did you mean resnet18"),
        ("my-pkg:build", ValueError, "package.module:factory"),
    ],
)
def test_bad_backbones_fail_in_one_line(backbone, error, match):
    with pytest.raises(error, match=match) as raised:
        build_model(backbone, "batch", 10, 3)
    assert "\n" not in str(raised.value)


def test_no_norm_backbone_is_fine_with_norm_none():
    model = build_model(f"{__name__}:no_norm_factory", "none", 10, 3)
    assert describe(model)["norm_layers"] == 0


def _config(tmp_path, backbone, options=None, norms=("batch", "group(groups=4)")):
    raw = {
        "experiment": {"name": "sources"},
        "data": {
            "dataset": "synthetic",
            "options": {"train_size": 256, "test_size": 64, "image_size": 16},
        },
        "model": {"backbone": backbone, "options": options or {}},
        "norms": list(norms),
        "train": {"batch_sizes": [16], "max_steps": 4, "lr": 1.0e-3, "seeds": 1},
        "eval": {"test_batch_sizes": [16], "stats_modes": ["running"], "shifts": ["clean"]},
        "execution": {"workers": 1, "wandb": "disabled"},
    }
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("backbone", "options", "match"),
    [
        ("torchvision:resnet81", {}, "model.backbone: unknown torchvision"),
        (f"{__name__}:raising_factory", {}, "raised RuntimeError"),
        ("torchvision:vit_b_16", {}, "forward pass on 16x16 images .* image_size"),
        ("torchvision:vit_b_16", {"patch_size": 8}, "cannot be built with model.options: Type"),
        ("timm:vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8}, "instance"),
    ],
)
def test_config_validation_reports_bad_backbones_before_training(
    tmp_path, backbone, options, match
):
    norms = ("batch", "instance") if "timm" in backbone else ("batch",)
    with pytest.raises(ValueError, match=match):
        load_config(_config(tmp_path, backbone, options, norms))


def test_config_validation_accepts_the_new_forms(tmp_path):
    for backbone, options in [
        (FACTORY, {"width": 8}),
        ("torchvision:resnet18", {}),
        ("torchvision:vit_b_16", {"image_size": 16}),
    ]:
        config = load_config(_config(tmp_path, backbone, options, ("batch",)))
        assert config.model.backbone == backbone


def test_stats_modes_impossible_at_test_batch_1_are_refused_before_training(tmp_path):
    """torchvision's resnet18 on 16x16 images feeds layer3 1x1 maps: one sample has one value
    per channel there, so batch statistics at test batch 1 cannot exist (batch, adabn, tent, an
    unbiased or zero-prior mix); running statistics and mix with a prior can. The config names
    each impossible mode for the batch-dependent norm only, before any run trains."""
    path = _config(tmp_path, "torchvision:resnet18", norms=("batch", "group(groups=4)"))
    raw = yaml.safe_load(path.read_text())
    raw["eval"].update(
        test_batch_sizes=[1, 16], stats_modes=["running", "batch", "mix", "adabn", "tent"]
    )
    raw["eval"]["mix_prior"] = [0, 16]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as raised:
        load_config(path)
    problems = [line for line in str(raised.value).splitlines() if line.startswith("  - ")]
    refused = sorted(line.split("stats mode '")[1].split("'")[0] for line in problems)
    assert refused == ["adabn", "batch", "mix(prior=0)", "tent"], problems
    assert all(line.startswith("  - norms[0] 'batch'") for line in problems)
    assert all("(1, 256, 1, 1)" in line for line in problems)
    assert all("'layer3.0.bn1'" in line for line in problems if "'tent'" not in line)
    assert all("drop 1 from eval.test_batch_sizes" in line for line in problems)
    raw["eval"]["test_batch_sizes"] = [2, 16]  # two samples: batch statistics exist everywhere
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).eval.test_batch_sizes == (2, 16)


def test_cli_exits_2_on_a_bad_backbone(tmp_path, capsys):
    from normzoo import cli

    path = _config(tmp_path, "no_such_pkg.models:build")
    assert cli.main(["compare", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    out = capsys.readouterr()
    assert "cannot import module 'no_such_pkg.models'" in out.err + out.out
    assert "Traceback" not in out.err + out.out


@pytest.mark.slow
def test_compare_end_to_end_with_a_user_factory(tmp_path, capsys):
    from normzoo import cli

    path = _config(tmp_path, FACTORY, {"width": 8})
    out = tmp_path / "out"
    assert cli.main(["compare", str(path), "--out", str(out)]) == 0
    with sqlite3.connect(out / "results.sqlite") as conn:
        rows = conn.execute("SELECT backbone, norm, status FROM runs ORDER BY norm").fetchall()
        evaluations = conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    assert rows == [(FACTORY, "batch", "ok"), (FACTORY, "group", "ok")]
    assert evaluations == 2


def test_what_was_built_goes_to_the_wandb_config_as_flat_keys():
    from normzoo.bench.record.wandb_layout import built_config

    model = build_model(f"{__name__}:torch_norm_factory", "group", 3, 3, {"groups": 2})
    model[1] = nn.Sequential(model[1], nn.LayerNorm(4))  # a foreign norm left in the model
    assert built_config(describe(model)) == {
        "built_parameters": 3 * 8 * 9 + 8 + 2 * 8 + 2 * 4,
        "built_norm_layers": 1,
        "built_norm_parameters": 16,
        "built_norm_group": 1,
        "built_other_LayerNorm": 1,
    }
