"""normzoo.fold: batch norms folded into the layer before them give the eval model's outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import normzoo
from normzoo.export import plan_fold
from normzoo.models import build_model

RENORM = {"warmup": 0, "r_ramp": 0, "d_ramp": 0, "renorm_momentum": 0.3}


def trained(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> nn.Module:
    """``model`` in ``dtype`` with random norm affine parameters, after a few training-mode
    forwards on shifted data (non-trivial running statistics; batch renorm's r and d active),
    then in eval mode."""
    torch.manual_seed(0)
    model.to(dtype).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(*shape, dtype=dtype) * 3 + 1.5)
    return model.eval()


def reference_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def norm_count(model: nn.Module) -> int:
    """Norm layers left, counted by torch's and timm's base classes (independent of fold)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    return sum(isinstance(m, kinds) for m in model.modules())


def zoo(backbone: str, norm: str) -> nn.Module:
    return build_model(
        backbone,
        norm,
        10,
        norm_options=RENORM if norm == "batch_renorm" else None,
        **({"widths": (16, 32, 64, 64)} if backbone == "small_cnn" else {}),
    )


def torchvision_resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(weights=None, num_classes=10)


def timm_model(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=10)


# (factory, input shape, batch norms it holds, all of which fold)
MODELS = {
    "small_cnn-batch": (lambda: zoo("small_cnn", "batch"), (6, 3, 16, 16), 4),
    "small_cnn-batch_renorm": (lambda: zoo("small_cnn", "batch_renorm"), (6, 3, 16, 16), 4),
    "resnet_tiny-batch": (lambda: zoo("resnet_tiny", "batch"), (6, 3, 16, 16), 9),
    "resnet_tiny-batch_renorm": (lambda: zoo("resnet_tiny", "batch_renorm"), (6, 3, 16, 16), 9),
    "small_cnn-ghost_batch": (lambda: zoo("small_cnn", "ghost_batch"), (6, 3, 16, 16), 4),
    "mlp-batch": (lambda: zoo("mlp", "batch"), (6, 3, 16, 16), 2),
    "torchvision-resnet18": (torchvision_resnet18, (2, 3, 32, 32), 20),
    "timm-resnet18": (lambda: timm_model("resnet18"), (2, 3, 32, 32), 20),
    "timm-efficientnet_b0": (lambda: timm_model("efficientnet_b0"), (2, 3, 32, 32), 49),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_folded_outputs_equal_eval_model(name: str, dtype: torch.dtype) -> None:
    factory, shape, batch_norms = MODELS[name]
    model = trained(factory(), shape, dtype)
    assert norm_count(model) == batch_norms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(*shape, dtype=dtype) * 2 + 0.5
    expected = reference_eval(model, x)
    folded = normzoo.fold(model)
    actual = reference_eval(folded, x)
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert norm_count(folded) == 0
    assert len(plan_fold(model).folded) == batch_norms
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert norm_count(model) == batch_norms


def test_timm_norm_act_keeps_its_activation() -> None:
    timm = pytest.importorskip("timm")
    model = trained(timm_model("efficientnet_b0"), (2, 3, 32, 32), torch.float64)
    folded = normzoo.fold(model)
    assert isinstance(model.bn1, timm.layers.BatchNormAct2d)
    assert isinstance(model.bn1.act, nn.SiLU)
    assert isinstance(folded.bn1, nn.SiLU)


@pytest.mark.parametrize(
    "norm", ["group", "layer", "instance", "filter_response", "evonorm_b0", "evonorm_s0", "rms"]
)
def test_batch_independent_norms_stay(norm: str) -> None:
    opts = {"groups": 8} if norm in ("group", "evonorm_s0") else None
    built = build_model("small_cnn", norm, 10, norm_options=opts, widths=(16, 32, 64, 64))
    model = trained(built, (4, 3, 16, 16), torch.float64)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    folded = normzoo.fold(model)
    torch.testing.assert_close(reference_eval(folded, x), reference_eval(model, x))
    plan = plan_fold(model)
    assert plan.folded == ()
    assert [name for name, _ in plan.left] == [f"features.{i}" for i in plan_positions(model)]
    cls = type(normzoo.create(norm, 16, **(opts or {})))
    assert sum(isinstance(m, cls) for m in folded.modules()) == 4


def plan_positions(model: nn.Module) -> list[int]:
    return [i for i, m in enumerate(model.features) if not isinstance(m, (nn.Conv2d, nn.ReLU))]


def test_training_mode_raises() -> None:
    model = zoo("small_cnn", "batch")
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        normzoo.fold(model)


def test_norms_that_normalize_with_batch_statistics_stay() -> None:
    model = trained(zoo("small_cnn", "batch"), (4, 3, 8, 8), torch.float64)
    model.features[1].train()  # one layer in training mode inside an eval model
    model.features[4].running_mean = model.features[4].running_var = None
    plan = plan_fold(model)
    assert {name for name, _ in plan.left} == {"features.1", "features.4"}
    folded = normzoo.fold(model)
    assert norm_count(folded) == 2
    model.features[1].eval()  # compare in eval; the folded copy holds the layer as it was
    folded.features[1].eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(reference_eval(folded, x), reference_eval(model, x))


def test_inside_stats_mode_batch_norms_stay_and_the_copy_holds_no_hooks() -> None:
    model = trained(zoo("small_cnn", "batch"), (4, 3, 8, 8), torch.float64)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with normzoo.stats_mode(model, "batch"):
        folded = normzoo.fold(model)
        expected = reference_eval(model, x)
        assert len(plan_fold(model).left) == 4
    assert norm_count(folded) == 4
    assert all(not m._forward_pre_hooks for m in folded.modules())
    with normzoo.stats_mode(folded, "batch"):
        torch.testing.assert_close(reference_eval(folded, x), expected)


def test_pairs_not_proven_are_left() -> None:
    class Reused(nn.Module):  # the conv's output also feeds the residual: cannot fold
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = trained(Reused(), (4, 3, 5, 5), torch.float64)
    assert plan_fold(model).folded == ()
    seq = trained(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), (5, 4), torch.float64)
    # a linear layer's (N, C) output is not provable without a flatten(1) upstream
    assert plan_fold(seq).folded == ()
    flat = trained(
        nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)), (5, 2, 2), torch.float64
    )
    assert plan_fold(flat).folded == (("1", "2"),)
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(reference_eval(normzoo.fold(flat), x), reference_eval(flat, x))


def test_weight_standardized_conv_is_not_folded_into() -> None:
    model = trained(build_model("small_cnn", "batch", 10, conv="ws"), (4, 3, 8, 8), torch.float64)
    assert plan_fold(model).folded == ()


def test_inference_benchmark_writes_a_row_per_variant_and_batch(tmp_path: Path) -> None:
    """benchmarks/inference.py: its section's structure (no timing is asserted)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("inference", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "perf.md"
    out.write_text("# kept\n")
    argv = ["--norms", "batch", "group", "--batch-sizes", "1", "3", "--repeats", "1"]
    assert bench.main([*argv, "--min-run", "0.001", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# kept\n")
    assert "| batch 1 ms | batch 1 ratio | batch 3 ms | batch 3 ratio |" in text
    for label in ("batch", "batch folded", "group"):
        assert f"| {label} |" in text
    assert "| batch folded | " in text and "1.00x" in text
    bench.main([*argv, "--min-run", "0.001", "--markdown", str(out)])
    assert out.read_text().count(bench.START) == 1  # rewritten in place, not appended twice


def test_untraceable_model_folds_its_sequential_pairs_only() -> None:
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return self.bn(self.conv(y)) if bool(y.sum() > 0) else y

    model = trained(Branchy(), (4, 3, 6, 6), torch.float64)
    plan = plan_fold(model)
    assert plan.folded == (("body.0", "body.1"),)
    assert [name for name, _ in plan.left] == ["bn"]
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64) + 1
    torch.testing.assert_close(reference_eval(normzoo.fold(model), x), reference_eval(model, x))
