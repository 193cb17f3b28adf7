"""Evaluation of a trained model: the mix prior sweep's ends are batch and running statistics."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from normzoo.bench.execute.evaluate import evaluate_condition
from normzoo.bench.plan.config import Composition, EvalSection, StatsMode, load_config
from normzoo.bench.plan.grid import TestCondition, expand_conditions
from normzoo.models import build_model


class _Data:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 3, 16, 16, generator=g) * 3 + 1  # far from the running stats
        self.y = torch.randint(0, 4, (40,), generator=g)

    def test_loader(self, batch_size, corruption, severity, composition, alpha, outliers, seed):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=batch_size)


def test_prior_sweep_expands_mix_once_per_prior(tiny_config_path):
    config = load_config(
        tiny_config_path,
        [
            "eval.stats_modes=[running, mix]",
            "eval.mix_prior=[0, 1, 16, .inf]",
            "eval.shifts=[clean]",
        ],
    )
    modes = {c.stats_mode.label for c in expand_conditions(config)}
    assert modes == {"running", "mix(prior=0)", "mix(prior=1)", "mix(prior=16)", "mix(prior=inf)"}
    with pytest.raises(ValueError, match="eval.mix_prior"):
        load_config(tiny_config_path, ["eval.mix_prior=[0, 0]"])
    with pytest.raises(ValueError, match="eval.mix_prior"):
        load_config(tiny_config_path, ["eval.mix_prior=[]"])


@pytest.mark.parametrize(
    "end, same_as", [(StatsMode("mix", 0.0), "batch"), (StatsMode("mix", float("inf")), "running")]
)
def test_prior_sweep_ends(end, same_as):
    torch.manual_seed(0)
    model = build_model("small_cnn", "batch", 4, 3, {})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16))
    data, ev = _Data(), EvalSection(mix_prior=(0.0, float("inf")))

    def accuracy_and_loss(mode):
        condition = TestCondition(8, mode, "clean", 0, Composition())
        return evaluate_condition(model, data, condition, ev, torch.device("cpu"))

    sweep, reference = accuracy_and_loss(end), accuracy_and_loss(same_as)
    assert sweep[0] == reference[0] and sweep[1] == pytest.approx(reference[1], rel=1e-5)
    assert accuracy_and_loss(StatsMode("mix", 1.0))[1] != pytest.approx(reference[1], rel=1e-6)
