"""Test batch 1 without a Python loop over samples (issue 27 item 4): `evaluate_condition`
maps the model over the samples of a chunk with vmap, each sample a batch of its own, and must
give the scores of the plain one-sample loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normzoo
from normzoo.bench.execute import evaluate as ev_module
from normzoo.bench.execute.evaluate import (
    Scores,
    evaluate_condition,
    predict,
    predict_samples,
)
from normzoo.bench.plan.config import Composition, EvalSection
from normzoo.bench.plan.grid import TestCondition
from normzoo.testtime import stats_mode

EV = EvalSection(mix_prior=16.0)
N_TEST = 300  # more than one chunk of PER_SAMPLE_CHUNK


class _Spy:
    """Records the results of `_score_per_sample` (None: the vectorized path gave up)."""

    def __init__(self, monkeypatch) -> None:
        self.results: list = []
        original = ev_module._score_per_sample

        def wrapped(*args, **kwargs):
            self.results.append(original(*args, **kwargs))
            return self.results[-1]

        monkeypatch.setattr(ev_module, "_score_per_sample", wrapped)


class _Data:
    """A fixed float64 test set, batched as asked (the datamodule's one method used here)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(27)
        self.x = torch.randn(N_TEST, 3, 6, 6, generator=generator, dtype=torch.float64) * 1.3
        self.y = torch.randint(0, 5, (N_TEST,), generator=generator)

    def test_loader(self, batch_size, **kwargs):
        return [
            (self.x[i : i + batch_size], self.y[i : i + batch_size])
            for i in range(0, N_TEST, batch_size)
        ]


def _model(norm: str, **options) -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        normzoo.create(norm, 8, **options) if norm != "torch" else nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).double()
    model.train()
    for _ in range(4):  # running statistics away from their initial values
        model(torch.randn(16, 3, 6, 6, dtype=torch.float64) + 0.5)
    return model.eval()


def _loop(model: nn.Module, data: _Data, mode: str) -> Scores:
    """The reference: one forward per sample under the stats mode."""
    with stats_mode(model, mode, prior=EV.mix_prior if mode == "mix" else None):
        return predict(model, data.test_loader(1), torch.device("cpu"))


NORMS = [
    ("batch", {}),
    ("torch", {}),
    ("batch_renorm", {}),
    ("ghost_batch", {"virtual_batch_size": 2}),
]


@pytest.mark.parametrize("norm,options", NORMS)
@pytest.mark.parametrize("mode", ["batch", "mix"])
@pytest.mark.parametrize("composition", ["iid", "mixed_corruption"])
def test_vectorized_batch_of_one_equals_the_sample_loop(
    norm, options, mode, composition, monkeypatch
):
    spy = _Spy(monkeypatch)
    model, data = _model(norm, **options), _Data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    condition = TestCondition(1, mode, "clean", 0, Composition(composition))
    got = evaluate_condition(model, data, condition, EV, torch.device("cpu"))
    assert len(spy.results) == 1 and spy.results[0] is not None  # the vectorized path ran
    expected = _loop(model, data, mode)
    assert got.accuracy == expected.accuracy  # identical predictions
    assert got.n == expected.n == N_TEST
    assert got.loss == pytest.approx(expected.loss, rel=1e-12)
    assert got.ece == pytest.approx(expected.ece, abs=1e-12)
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]), key


class _Branching(nn.Module):
    """A forward with data-dependent Python control flow, which vmap cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _model("batch")

    def forward(self, x):
        out = self.inner(x)
        return out if bool(out.sum() > -1e9) else -out


def test_a_model_vmap_cannot_trace_falls_back_to_the_loop(monkeypatch):
    spy = _Spy(monkeypatch)
    model, data = _Branching().eval(), _Data()
    condition = TestCondition(1, "batch", "clean", 0, Composition())
    got = evaluate_condition(model, data, condition, EV, torch.device("cpu"))
    assert spy.results == [None]
    assert got == _loop(model, data, "batch")


@pytest.mark.parametrize("mode,size", [("running", 1), ("online", 1), ("batch", 2)])
def test_other_conditions_keep_their_own_path(mode, size, monkeypatch):
    spy = _Spy(monkeypatch)
    condition = TestCondition(size, mode, "clean", 0, Composition())
    evaluate_condition(_model("batch"), _Data(), condition, EV, torch.device("cpu"))
    assert spy.results == []


def test_per_sample_scores_keep_one_cluster_per_sample(monkeypatch):
    """`predict_samples` (the bootstrap's input) through the vectorized path: the same outcomes
    as the loop, and each sample its own test batch (cluster), as at test batch size 1."""
    spy = _Spy(monkeypatch)
    model, data = _model("batch"), _Data()
    condition = TestCondition(1, "batch", "clean", 0, Composition())
    got = evaluate_condition(model, data, condition, EV, torch.device("cpu"), score=predict_samples)
    assert len(spy.results) == 1 and spy.results[0] is not None
    with stats_mode(model, "batch"):
        expected = predict_samples(model, data.test_loader(1), torch.device("cpu"))
    assert torch.equal(got.correct, expected.correct)
    assert torch.equal(got.batch, expected.batch) and torch.equal(got.position, expected.position)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-12, atol=1e-12)
