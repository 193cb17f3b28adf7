"""adapt(): AdaBN and TENT against statistics and gradient steps computed in the test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normzoo
from normzoo.testtime import Tent, adapt, stats_mode


def small_cnn(norm: str = "torch") -> nn.Module:
    torch.manual_seed(0)

    def bn(c):
        return nn.BatchNorm2d(c) if norm == "torch" else normzoo.create(norm, c)

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        bn(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        bn(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def shifted_batches(count: int, size: int = 16, seed: int = 0) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 6, 6, generator=gen) * 3 + 2, torch.zeros(size, dtype=torch.long))
        for _ in range(count)
    ]


def mean_entropy(logits: torch.Tensor) -> float:
    p = logits.softmax(1)
    return float(-(p * p.log()).sum(1).mean())


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("norm", ["torch", "batch", "batch_renorm"])
def test_adabn_sets_target_population_statistics(norm):
    model = small_cnn(norm)
    before = snapshot(model)
    batches = shifted_batches(3)
    adapted = adapt(model, batches, method="adabn")
    assert adapted is not model
    assert_state_equal(model, before)
    inputs = torch.cat([model[0](x).detach() for x, _ in batches])  # first layer's input
    flat = inputs.transpose(0, 1).reshape(8, -1).double()
    torch.testing.assert_close(adapted[1].running_mean.double(), flat.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adapted[1].running_var.double(), flat.var(1), rtol=1e-5, atol=1e-6)
    assert not adapted.training


def test_adabn_inplace_and_options():
    model = small_cnn()
    batches = shifted_batches(4)
    out = adapt(model, batches, method="adabn", inplace=True, num_batches=2)
    assert out is model
    flat = torch.cat([model[0](x).detach() for x, _ in batches[:2]]).transpose(0, 1)
    torch.testing.assert_close(
        model[1].running_mean, flat.reshape(8, -1).mean(1), rtol=1e-5, atol=1e-6
    )


def test_tent_step_matches_hand_computed_sgd_step():
    model = small_cnn()
    (x, _), lr = shifted_batches(1)[0], 0.5
    # reference: batch-statistics forward written out, entropy, one plain gradient step
    params = {
        name: p.detach().clone().requires_grad_(True)
        for name, p in model.named_parameters()
        if name.startswith(("1.", "4."))
    }

    def bn(h, index):
        flat = h.transpose(0, 1).reshape(h.shape[1], -1)
        mean, var = flat.mean(1).view(1, -1, 1, 1), flat.var(1, unbiased=False).view(1, -1, 1, 1)
        weight, bias = params[f"{index}.weight"], params[f"{index}.bias"]
        return (h - mean) / torch.sqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(
            1, -1, 1, 1
        )

    h = torch.relu(bn(model[0](x), 1))
    logits = model[8](torch.relu(bn(model[3](h), 4)).mean((2, 3)))
    p = logits.softmax(1)
    (-(p * p.log()).sum(1).mean()).backward()
    adapted = adapt(
        model, [x], method="tent", optimizer="sgd", lr=lr, nesterov=False
    )  # first SGD step: no momentum (with Nesterov, the default, the step is (1 + momentum) * g)
    for name, p in adapted.named_parameters():
        if name in params:
            torch.testing.assert_close(
                p, params[name] - lr * params[name].grad, rtol=1e-4, atol=1e-5
            )
        else:
            torch.testing.assert_close(p, dict(model.named_parameters())[name], rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_tent_reduces_entropy_on_a_shifted_stream(optimizer):
    model = small_cnn()
    model[0].bias.requires_grad_(False)
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    held_out = shifted_batches(1, size=64, seed=1)[0][0]
    with torch.no_grad(), stats_mode(model, "batch"):  # unadapted model, batch statistics
        entropy_before = mean_entropy(model(held_out))
    lr = 3e-2 if optimizer == "adam" else 0.5
    adapted = adapt(model, shifted_batches(30), method="tent", optimizer=optimizer, lr=lr)
    with torch.no_grad():
        entropy_after = mean_entropy(adapted(held_out))
    assert entropy_after < 0.9 * entropy_before
    # original untouched; only affine parameters of the batch layers changed
    assert_state_equal(model, before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [p.requires_grad for p in adapted.parameters()] == flags
    for name, p in adapted.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == name.startswith(("1.", "4.")), name
    # the adapted model normalizes with test-batch statistics, as in the TENT paper
    for layer in (adapted[1], adapted[4]):
        assert layer.running_mean is None and not layer.track_running_stats
    assert not adapted.training
    with torch.no_grad():
        assert not torch.allclose(adapted(held_out[:2]), adapted(held_out)[:2], atol=1e-4)


def test_tent_on_zoo_layers_changes_only_affine_parameters():
    model = small_cnn("batch")
    adapted = adapt(model, shifted_batches(2), method="tent", steps=2, inplace=True)
    assert adapted is model and model[1].running_var is None
    assert not torch.equal(model[1].weight, small_cnn("batch")[1].weight)
    assert torch.equal(model[0].weight, small_cnn("batch")[0].weight)


def test_adapt_errors():
    model = small_cnn()
    with pytest.raises(ValueError, match="adabn.*tent"):
        adapt(model, shifted_batches(1), method="memo")
    with pytest.raises(TypeError, match="unknown option.*allowed"):
        adapt(model, shifted_batches(1), method="tent", learning_rate=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        adapt(model, shifted_batches(1), method="tent", optimizer="lbfgs")
    with pytest.raises(ValueError, match="no batch layers"):
        adapt(nn.Sequential(nn.Linear(2, 2)), [torch.randn(3, 2)], method="tent")
    with pytest.raises(ValueError, match="no batches"):
        adapt(copy.deepcopy(model), [], method="tent")


# ------------------------------------------------------------------------------------------
# The official TENT code (DequanWang/tent: tent.py, and cifar10c.py's setup_optimizer with
# conf.py's defaults), transcribed literally except for shortened docstrings and
# softmax_entropy's @torch.jit.script decorator (same math, eager).


class OfficialTent(nn.Module):
    """Tent adapts a model by entropy minimization during testing.

    Once tented, a model adapts itself by updating on every forward.
    """

    def __init__(self, model, optimizer, steps=1, episodic=False):
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.steps = steps
        assert steps > 0, "tent requires >= 1 step(s) to forward and update"
        self.episodic = episodic

        self.model_state, self.optimizer_state = copy_model_and_optimizer(
            self.model, self.optimizer
        )

    def forward(self, x):
        if self.episodic:
            self.reset()

        for _ in range(self.steps):
            outputs = forward_and_adapt(x, self.model, self.optimizer)

        return outputs

    def reset(self):
        if self.model_state is None or self.optimizer_state is None:
            raise Exception("cannot reset without saved model/optimizer state")
        load_model_and_optimizer(self.model, self.optimizer, self.model_state, self.optimizer_state)


def softmax_entropy(x: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax distribution from logits."""
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


@torch.enable_grad()  # ensure grads in possible no grad context for testing
def forward_and_adapt(x, model, optimizer):
    """Forward and adapt model on batch of data."""
    # forward
    outputs = model(x)
    # adapt
    loss = softmax_entropy(outputs).mean(0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return outputs


def collect_params(model):
    """Collect the affine scale + shift parameters from batch norms."""
    params = []
    names = []
    for nm, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            for np, p in m.named_parameters():
                if np in ["weight", "bias"]:  # weight is scale, bias is shift
                    params.append(p)
                    names.append(f"{nm}.{np}")
    return params, names


def copy_model_and_optimizer(model, optimizer):
    """Copy the model and optimizer states for resetting after adaptation."""
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    return model_state, optimizer_state


def load_model_and_optimizer(model, optimizer, model_state, optimizer_state):
    """Restore the model and optimizer states from copies."""
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(optimizer_state)


def configure_model(model):
    """Configure model for use with tent."""
    # train mode, because tent optimizes the model to minimize entropy
    model.train()
    # disable grad, to (re-)enable only what tent updates
    model.requires_grad_(False)
    # configure norm for tent updates: enable grad + force batch statisics
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            # force use of batch stats in train and eval modes
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    return model


def setup_optimizer(params, method, lr):
    """cifar10c.py's setup_optimizer with conf.py's defaults (BETA 0.9, MOMENTUM 0.9,
    DAMPENING 0, NESTEROV True, WD 0)."""
    if method == "Adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    elif method == "SGD":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True
        )
    raise NotImplementedError


def dropout_cnn() -> nn.Module:
    """small_cnn with a dropout layer: train mode (dropout on) is part of the protocol."""
    model = small_cnn()
    return nn.Sequential(*model[:7], nn.Dropout(0.3), *model[7:]).eval()


def official_run(model, batches, method, lr, steps, episodic):
    model = configure_model(copy.deepcopy(model))
    params, _ = collect_params(model)
    tented = OfficialTent(model, setup_optimizer(params, method, lr), steps, episodic)
    torch.manual_seed(7)  # the same dropout masks for both runs
    with torch.no_grad():  # as an evaluation loop calls it
        outputs = [tented(x).detach() for x, _ in batches]
    return outputs, model


@pytest.mark.parametrize(
    ("method", "lr", "steps", "episodic"),
    [
        ("Adam", 1e-3, 1, False),
        ("Adam", 3e-2, 2, False),
        ("SGD", 0.3, 1, False),
        ("SGD", 0.3, 2, True),
    ],
)
def test_tent_equals_the_official_code(method, lr, steps, episodic):
    model = dropout_cnn()
    batches = shifted_batches(4)
    expect_outputs, expect_model = official_run(model, batches, method, lr, steps, episodic)

    tent = Tent(
        copy.deepcopy(model), lr=lr, steps=steps, optimizer=method.lower(), episodic=episodic
    )
    torch.manual_seed(7)
    with torch.no_grad():
        outputs = [tent(x) for x, _ in batches]
    assert tent.model.training and tent.model[7].training  # dropout on, as the official code
    for out, expect in zip(outputs, expect_outputs, strict=True):  # online predictions
        torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    expect_params = dict(expect_model.named_parameters())
    for name, p in tent.model.named_parameters():
        torch.testing.assert_close(p, expect_params[name], rtol=1e-5, atol=1e-6)
        assert p.requires_grad == expect_params[name].requires_grad

    # adapt() runs the same pass and returns the model after the last batch
    torch.manual_seed(7)
    adapted = adapt(
        model,
        batches,
        method="tent",
        lr=lr,
        steps=steps,
        optimizer=method.lower(),
        episodic=episodic,
    )
    for name, p in adapted.named_parameters():
        torch.testing.assert_close(p, expect_params[name], rtol=1e-5, atol=1e-6)


def test_tent_online_scores_each_batch_before_adapting_on_it():
    """Online: batch k's outputs come from the parameters adapted on batches 0..k-1 only; the
    two-pass (offline) score of the final model differs."""
    model = small_cnn()
    batches = shifted_batches(3)
    tent = Tent(copy.deepcopy(model), lr=5e-2)
    with torch.no_grad():
        online = [tent(x) for x, _ in batches]
        first = configure_and_forward(model, batches[0][0])
    torch.testing.assert_close(online[0], first)  # the unadapted model's batch-stats outputs
    with torch.no_grad():
        offline = tent.model.eval()(batches[0][0])
    assert not torch.allclose(offline, online[0], atol=1e-4)


def configure_and_forward(model, x):
    """Outputs of the unadapted model with batch statistics (TENT's first forward pass)."""
    with stats_mode(model, "batch"):
        return model(x)


def test_tent_options_errors():
    model = small_cnn()
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        Tent(copy.deepcopy(model), optimizer="sgd", momentum=0)
    with pytest.raises(ValueError, match="weight_decay"):
        Tent(copy.deepcopy(model), weight_decay=-1)
    with pytest.raises(ValueError, match="no batch layers"):
        Tent(nn.Sequential(nn.Linear(2, 2)))


def test_benchmark_tent_mode_scores_online():
    """bench.evaluate's ``tent`` condition: accuracy and loss of the online outputs (each batch
    scored by the pass that adapts on it), computed here from the transcribed official code."""
    from normzoo.bench.execute.evaluate import evaluate_condition
    from normzoo.bench.plan.config import Composition, EvalSection
    from normzoo.bench.plan.grid import TestCondition

    model = small_cnn()
    gen = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(16, 3, 6, 6, generator=gen) * 3 + 2, torch.randint(0, 4, (16,), generator=gen))
        for _ in range(4)
    ]

    class DataModule:
        def test_loader(self, **kwargs):
            return batches

    ev = EvalSection(tent_lr=0.05, tent_steps=1)
    condition = TestCondition(16, "tent", "clean", 3, Composition())
    cpu = torch.device("cpu")
    accuracy, loss, n, _ = evaluate_condition(model, DataModule(), condition, ev, cpu)
    outputs, _ = official_run(model, batches, "Adam", 0.05, 1, False)
    logits, labels = torch.cat(outputs), torch.cat([y for _, y in batches])
    assert n == 64
    assert accuracy == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    offline = adapt(model, batches, "tent", lr=0.05)
    with torch.no_grad():
        offline_logits = torch.cat([offline(x) for x, _ in batches])
    offline_loss = float(nn.functional.cross_entropy(offline_logits, labels))
    assert loss != pytest.approx(offline_loss, rel=1e-3)  # the two-pass score is another number
