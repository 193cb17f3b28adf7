"""Evaluate a trained model under every test condition, without retraining, in plain torch.

Every stored evaluation carries the fingerprint of all it depends on besides its run and its
condition's key columns (`condition_fingerprint`): the mix prior, TENT's settings, the
composition's parameters, the corruption source, the test data seed and
`EVAL_SEMANTICS_VERSION`. A stored row whose fingerprint differs from the current config's is
stale and evaluated again.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from normzoo.bench.plan.config import EvalSection, stable_hash
from normzoo.bench.plan.grid import TestCondition, computed_condition
from normzoo.bench.plan.schema import CLEAN
from normzoo.data import IGNORE_INDEX
from normzoo.models import has_batch_layers
from normzoo.testtime import Tent, adapt, stats_mode

log = logging.getLogger(__name__)

# All test data (corruption noise, label-skewed order, outliers) uses this seed, so every run of
# the grid is evaluated on exactly the same test batches.
EVAL_SEED = 0

# Bump when a code change alters what an evaluation computes (test data, a stats mode, an
# adaptation method, the scoring): stored evaluations of an older version are recomputed.
# tests/bench/execute/test_evaluate_golden.py holds golden values next to this number, so a
# change of the numbers fails there until this is bumped with them. (Not the git SHA: that would
# void every store at every commit.)
EVAL_SEMANTICS_VERSION = 1


def condition_fingerprint(condition: TestCondition, ev: EvalSection) -> str:
    """Hash of everything an evaluation's numbers depend on besides its run and key columns."""
    mode, prior = parse_stats_mode(condition.stats_mode)
    settings: dict = {}
    if mode == "mix":
        settings["mix_prior"] = prior if prior is not None else ev.mix_prior
    if mode == "tent":
        settings.update(tent_lr=ev.tent_lr, tent_steps=ev.tent_steps)
    if condition.shift != CLEAN:
        settings["shift_source"] = ev.shift_source
        if ev.shift_source == "cifar10c":
            settings["shift_root"] = ev.shift_root
    return stable_hash(
        {
            "version": EVAL_SEMANTICS_VERSION,
            "seed": EVAL_SEED,
            "condition": {**condition.columns(), **dataclasses.asdict(condition.composition)},
            "settings": settings,
        }
    )


def device_for_eval() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, device: torch.device) -> tuple[float, float, int]:
    """(accuracy, mean cross-entropy, n scored) over ``(x, y)`` batches; label -100 = unscored."""
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        scored = y != IGNORE_INDEX  # injected outliers have no label and are not scored
        loss_sum += F.cross_entropy(logits, y, reduction="sum", ignore_index=IGNORE_INDEX).item()
        correct += (logits.argmax(1)[scored] == y[scored]).sum().item()
        n += int(scored.sum())
    if n == 0:
        raise ValueError(
            "the test loader yielded no samples; check the dataset and test batch size"
        )
    return correct / n, loss_sum / n, n


def test_loader(datamodule, condition: TestCondition, ev: EvalSection | None = None):
    """Test batches of one condition from the datamodule: corrupted on the fly, or read from the
    CIFAR-10-C files when ``ev.shift_source`` is ``cifar10c`` (same batching either way)."""
    composition = condition.composition
    source = {}
    if ev is not None and ev.shift_source == "cifar10c":
        source = {"source": "cifar10c", "source_root": ev.shift_root}
    return datamodule.test_loader(
        batch_size=condition.test_batch_size,
        corruption="none" if condition.shift == CLEAN else condition.shift,  # or "mixed"
        severity=condition.severity,
        composition=composition.name,
        alpha=composition.alpha,
        outliers=composition.k or 0,
        seed=EVAL_SEED,
        **source,
    )


def evaluate_condition(
    model: nn.Module, datamodule, condition: TestCondition, ev: EvalSection, device: torch.device
) -> tuple[float, float, int]:
    """(accuracy, loss, n) of ``model`` under one test condition; ``model`` is left unchanged."""
    loader = test_loader(datamodule, condition, ev)
    mode = condition.stats_mode.name
    model.eval()
    if mode == "adabn":
        # adapt() works on a copy: AdaBN re-estimates running statistics on this condition's test
        # data, then predicts with them.
        adapted = adapt(model, _inputs_on(loader, device), method="adabn")
        return predict(adapted.eval(), loader, device)
    if mode == "tent":
        # TENT online, as the official code: a copy adapts on each batch (`tent_steps` updates)
        # and the batch is scored by the outputs of the forward pass that adapts on it.
        tent = Tent(copy.deepcopy(model), lr=ev.tent_lr, steps=ev.tent_steps)
        return predict(tent, loader, device)
    prior = condition.stats_mode.prior  # a point of a mix prior sweep, else the configured one
    if mode == "mix" and prior is None:
        prior = ev.mix_prior
    with stats_mode(model, mode, prior=prior):
        return predict(model, loader, device)


def _inputs_on(loader, device: torch.device):
    for x, _ in loader:
        yield x.to(device)


def evaluate_run(
    model: nn.Module, datamodule, conditions: list[TestCondition], ev: EvalSection
) -> list[dict]:
    """One result row per condition; identical computations (see `computed_condition`) run once."""
    device = device_for_eval()
    model = model.to(device).eval()
    batch_dependent = has_batch_layers(model)
    largest = max(ev.test_batch_sizes)
    cache: dict[TestCondition, tuple[float, float, int]] = {}
    rows = []
    for condition in conditions:
        computed = computed_condition(condition, batch_dependent, largest)
        if computed not in cache:
            cache[computed] = evaluate_condition(model, datamodule, computed, ev, device)
            accuracy, loss, _ = cache[computed]
            log.debug("%s: accuracy %.4f loss %.4f", computed.label, accuracy, loss)
        accuracy, loss, n = cache[computed]
        rows.append(
            {
                **condition.columns(),
                "accuracy": accuracy,
                "loss": loss if math.isfinite(loss) else float("nan"),
                "n_test": n,
                "computed_as": computed.label,
                "fingerprint": condition_fingerprint(condition, ev),
            }
        )
    return rows
