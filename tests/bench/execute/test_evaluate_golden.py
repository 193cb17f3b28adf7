"""Golden outputs of evaluation (issue 28): a tiny fixed model on fixed data under each stats
mode, checked against an independent recomputation and against literal numbers kept next to
`EVAL_SEMANTICS_VERSION`. A code change that alters what an evaluation computes changes these
numbers: update them together with a bump of the version, which makes stored evaluations of the
old semantics stale (they are recomputed, never reused)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normzoo.bench.execute.evaluate import EVAL_SEMANTICS_VERSION, evaluate_condition
from normzoo.bench.plan.config import Composition, EvalSection
from normzoo.bench.plan.grid import TestCondition

MODES = ("running", "batch", "mix", "online", "adabn", "tent")
EV = EvalSection(mix_prior=16.0, tent_lr=1e-2, tent_steps=1)
EPS, MOMENTUM = 1e-5, 0.1

# (accuracy, loss) per stats mode for EVAL_SEMANTICS_VERSION 2, from the data and model below.
# Version 2: corruptions quantised to uint8 and calibrated per resolution, and the ECE column;
# these clean-data values did not move.
GOLDEN_VERSION = 2
GOLDEN = {
    "running": (0.25, 7.382682),
    "batch": (0.291667, 3.684189),
    "mix": (0.25, 5.271088),
    "online": (0.25, 6.079327),
    "adabn": (0.25, 3.727045),
    "tent": (0.291667, 3.702421),
}


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(28)
    batches = []
    for _ in range(3):
        x = 1.5 * torch.randn(8, 3, 2, 2, generator=generator, dtype=torch.float64) + 0.7
        batches.append((x, torch.randint(0, 4, (8,), generator=generator)))
    return batches


def _model() -> nn.Module:
    generator = torch.Generator().manual_seed(7)
    bn = nn.BatchNorm2d(3, eps=EPS, momentum=MOMENTUM).double()
    linear = nn.Linear(12, 4).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.8, 1.3, 2.0]))
        bn.weight.copy_(torch.tensor([1.1, 0.9, 1.2]))
        bn.bias.copy_(torch.tensor([0.05, -0.1, 0.0]))
        linear.weight.copy_(torch.randn(4, 12, generator=generator, dtype=torch.float64))
        linear.bias.copy_(torch.randn(4, generator=generator, dtype=torch.float64) * 0.1)
    return nn.Sequential(bn, nn.Flatten(), linear).eval()


class _Data:
    """The one method of the datamodule that evaluation calls."""

    def test_loader(self, **kwargs):
        return _data()


# ---- the independent recomputation: the equations, written out ------------------------------


def _head(model: nn.Module, x, mean, var, weight=None, bias=None):
    bn, linear = model[0], model[2]
    weight = bn.weight if weight is None else weight
    bias = bn.bias if bias is None else bias
    shape = (1, -1, 1, 1)
    y = (x - mean.view(shape)) / (var.view(shape) + EPS).sqrt() * weight.view(shape)
    return (y + bias.view(shape)).flatten(1) @ linear.weight.T + linear.bias


def _moments(x, unbiased=False):
    flat = x.transpose(0, 1).flatten(1)
    return flat.mean(1), flat.var(1, unbiased=unbiased)


def _reference(mode: str) -> tuple[float, float]:
    model, data = _model(), _data()
    bn = model[0]
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    if mode == "adabn":  # population mean and unbiased variance over all the test data
        mean, var = _moments(torch.cat([x for x, _ in data]), unbiased=True)
    weight, bias = bn.weight.detach().clone(), bn.bias.detach().clone()
    state = {
        "m": torch.zeros(2, 3, dtype=torch.float64),
        "v": torch.zeros(2, 3, dtype=torch.float64),
    }
    logits_all, labels = [], []
    for step, (x, y) in enumerate(data, start=1):
        batch_mean, batch_var = _moments(x)
        n = len(x)
        if mode in ("running", "adabn"):
            logits = _head(model, x, mean, var)
        elif mode == "batch":
            logits = _head(model, x, batch_mean, batch_var)
        elif mode == "mix":  # Schneider et al. 2020, N = prior pseudo-samples, n = batch samples
            prior = EV.mix_prior
            logits = _head(
                model,
                x,
                (prior * mean + n * batch_mean) / (prior + n),
                (prior * var + n * batch_var) / (prior + n),
            )
        elif mode == "online":  # EMA with unbiased batch variance, then normalize with it
            mean = (1 - MOMENTUM) * mean + MOMENTUM * batch_mean
            var = (1 - MOMENTUM) * var + MOMENTUM * _moments(x, unbiased=True)[1]
            logits = _head(model, x, mean, var)
        else:  # tent: batch statistics, entropy of the outputs, one Adam step on (weight, bias)
            params = torch.stack([weight, bias]).requires_grad_(True)
            with torch.enable_grad():
                logits = _head(model, x, batch_mean, batch_var, params[0], params[1])
                probabilities = logits.softmax(1)
                loss = -(probabilities * logits.log_softmax(1)).sum(1).mean()
                (grad,) = torch.autograd.grad(loss, params)
            beta1, beta2, lr = 0.9, 0.999, EV.tent_lr
            state["m"] = beta1 * state["m"] + (1 - beta1) * grad
            state["v"] = beta2 * state["v"] + (1 - beta2) * grad**2
            m_hat = state["m"] / (1 - beta1**step)
            v_hat = state["v"] / (1 - beta2**step)
            new = params.detach() - lr * m_hat / (v_hat.sqrt() + 1e-8)
            weight, bias = new[0], new[1]
            logits = logits.detach()
        logits_all.append(logits.detach())
        labels.append(y)
    logits, labels = torch.cat(logits_all), torch.cat(labels)
    accuracy = (logits.argmax(1) == labels).double().mean().item()
    return accuracy, F.cross_entropy(logits, labels).item()


def _evaluate(mode: str) -> tuple[float, float]:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    condition = TestCondition(8, mode, "clean", 0, Composition())
    accuracy, loss, n, _ = evaluate_condition(model, _Data(), condition, EV, torch.device("cpu"))
    assert n == 24
    for key, value in before.items():  # evaluation leaves the stored model as it was
        assert torch.equal(value, model.state_dict()[key]), (mode, key)
    return accuracy, loss


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_equals_the_independent_recomputation(mode):
    accuracy, loss = _evaluate(mode)
    expected_accuracy, expected_loss = _reference(mode)
    assert accuracy == pytest.approx(expected_accuracy, abs=1e-12)
    assert loss == pytest.approx(expected_loss, rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_golden_numbers_of_this_evaluation_semantics_version(mode):
    """Changing these numbers means evaluation computes something else: bump
    EVAL_SEMANTICS_VERSION in normzoo/bench/execute/evaluate.py with them."""
    assert EVAL_SEMANTICS_VERSION == GOLDEN_VERSION
    accuracy, loss = _evaluate(mode)
    assert (round(accuracy, 6), round(loss, 6)) == GOLDEN[mode]
