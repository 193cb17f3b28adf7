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
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap
from torch.utils.data import DataLoader

from normzoo.bench.plan.config import EvalSection, stable_hash
from normzoo.bench.plan.grid import TestCondition, computed_condition
from normzoo.bench.plan.schema import CLEAN
from normzoo.data import IGNORE_INDEX
from normzoo.models import has_batch_layers
from normzoo.testtime import Tent, adapt, stats_mode

log = logging.getLogger(__name__)
T = TypeVar("T")

# All test data (corruption noise, label-skewed order, outliers) uses this seed, so every run of
# the grid is evaluated on exactly the same test batches.
EVAL_SEED = 0

# Bump when a code change alters what an evaluation computes (test data, a stats mode, an
# adaptation method, the scoring): stored evaluations of an older version are recomputed.
# tests/bench/execute/test_evaluate_golden.py holds golden values next to this number, so a
# change of the numbers fails there until this is bumped with them. (Not the git SHA: that would
# void every store at every commit.)
# 2: corruptions quantised to uint8 as the reference and calibrated per resolution; ECE.
EVAL_SEMANTICS_VERSION = 2


def condition_fingerprint(condition: TestCondition, ev: EvalSection) -> str:
    """Hash of everything an evaluation's numbers depend on besides its run and key columns."""
    mode, prior = condition.stats_mode.name, condition.stats_mode.prior
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


# Confidence bins of the expected calibration error: 15 of equal width on [0, 1] (Guo et al. 2017).
ECE_BINS = 15


class Scores(NamedTuple):
    """What an evaluation measures over the scored test samples."""

    accuracy: float
    loss: float  # mean negative log-likelihood (cross-entropy of the softmax, nats)
    n: int  # samples scored (injected outliers carry no label and are not scored)
    ece: float  # expected calibration error, ECE_BINS equal-width confidence bins


def confidence_bins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per confidence bin (``ECE_BINS`` equal-width bins ``(k/B, (k+1)/B]`` of the top softmax
    probability): rows (samples, sum of confidence, correct predictions), float64. Bins of
    several batches add up; :func:`expected_calibration_error` reads them."""
    probs = logits.detach().float().softmax(1)
    confidence, predicted = probs.max(1)
    edges = torch.linspace(0.0, 1.0, ECE_BINS + 1, device=logits.device)[1:-1]
    index = torch.bucketize(confidence, edges)  # right-closed bins: edges[k-1] < c <= edges[k]
    values = torch.stack(
        [torch.ones_like(confidence), confidence, (predicted == labels).to(confidence.dtype)]
    ).to(torch.float64)
    bins = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=logits.device)
    return bins.index_add_(1, index, values)


def expected_calibration_error(bins: torch.Tensor) -> float:
    """``sum_b |acc_b - conf_b| * n_b / n`` over confidence bins (Guo et al. 2017, "On
    Calibration of Modern Neural Networks", Eq. 3) from :func:`confidence_bins`' sums."""
    count, confidence, correct = bins
    return float((correct - confidence).abs().sum() / count.sum())


def _scored_batches(model: nn.Module, batches: Iterable, device: torch.device):
    """``(logits, labels)`` of each ``(x, y)`` batch, both on ``device``; the one forward loop of
    :func:`predict` and :func:`predict_samples`."""
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        yield model(x), y


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device) -> Scores:
    """Accuracy, mean cross-entropy (NLL), n scored and ECE over ``(x, y)`` batches; label
    -100 = unscored (an injected outlier)."""
    correct, loss_sum, n = 0, 0.0, 0
    bins = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=device)
    for logits, y in _scored_batches(model, batches, device):
        scored = y != IGNORE_INDEX  # injected outliers have no label and are not scored
        loss_sum += F.cross_entropy(logits, y, reduction="sum", ignore_index=IGNORE_INDEX).item()
        correct += (logits.argmax(1)[scored] == y[scored]).sum().item()
        n += int(scored.sum())
        bins += confidence_bins(logits[scored], y[scored])
    _require_samples(n)
    return Scores(correct / n, loss_sum / n, n, expected_calibration_error(bins))


class SampleScores(NamedTuple):
    """Per scored test sample (injected outliers left out), in the loader's order."""

    correct: torch.Tensor  # bool: the top-1 prediction is the label
    loss: torch.Tensor  # float64: cross-entropy (NLL) of the sample
    batch: torch.Tensor  # int64: index of the test batch that held the sample
    position: torch.Tensor  # int64: the sample's place in its batch (outliers counted)
    bins: torch.Tensor  # confidence bins of all scored samples (`expected_calibration_error`)


@torch.no_grad()
def predict_samples(model: nn.Module, batches: Iterable, device: torch.device) -> SampleScores:
    """:func:`predict`, sample by sample: what a bootstrap over test samples (or over test
    batches, clustered by ``batch``) resamples. Label -100 = unscored (an injected outlier)."""
    parts: list[tuple[torch.Tensor, ...]] = []
    bins = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=device)
    for b, (logits, y) in enumerate(_scored_batches(model, batches, device)):
        scored = y != IGNORE_INDEX
        bins += confidence_bins(logits[scored], y[scored])
        loss = F.cross_entropy(logits.double(), y, reduction="none", ignore_index=IGNORE_INDEX)
        position = torch.arange(len(y), device=device)[scored]
        parts.append(
            (
                (logits.argmax(1) == y)[scored].cpu(),
                loss[scored].cpu(),
                torch.full((len(position),), b, dtype=torch.long),
                position.cpu(),
            )
        )
    _require_samples(sum(len(part[0]) for part in parts))
    columns = (torch.cat(column) for column in zip(*parts, strict=True))
    return SampleScores(*columns, bins.cpu())


def _require_samples(n: int) -> None:
    if n == 0:
        raise ValueError(
            "the test loader yielded no samples; check the dataset and test batch size"
        )


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
    model: nn.Module,
    datamodule,
    condition: TestCondition,
    ev: EvalSection,
    device: torch.device,
    score: Callable[[nn.Module, DataLoader, torch.device], T] = predict,
) -> T:
    """``score(model, loader, device)`` of ``model`` under one test condition: :class:`Scores`
    by default (:func:`predict`), per-sample with :func:`predict_samples`; ``model`` is left
    unchanged."""
    loader = test_loader(datamodule, condition, ev)
    mode = condition.stats_mode.name
    model.eval()
    if mode == "adabn":
        # adapt() works on a copy: AdaBN re-estimates running statistics on this condition's test
        # data, then predicts with them.
        adapted = adapt(model, _inputs_on(loader, device), method="adabn")
        return score(adapted.eval(), loader, device)
    if mode == "tent":
        # TENT online, as the official code: a copy adapts on each batch (`tent_steps` updates)
        # and the batch is scored by the outputs of the forward pass that adapts on it.
        tent = Tent(copy.deepcopy(model), lr=ev.tent_lr, steps=ev.tent_steps)
        return score(tent, loader, device)
    prior = condition.stats_mode.prior  # a point of a mix prior sweep, else the configured one
    if mode == "mix" and prior is None:
        prior = ev.mix_prior
    with stats_mode(model, mode, prior=prior):
        if _vectorizable(condition):
            scores = _score_per_sample(model, datamodule, condition, ev, device, score)
            if scores is not None:
                return scores
        return score(model, loader, device)


# Test batches of one sample are scored this many at a time by `_score_per_sample`.
PER_SAMPLE_CHUNK = 256


def _vectorizable(condition: TestCondition) -> bool:
    """Whether a test-batch-1 condition can be computed as a vmap over samples: ``batch`` and
    ``mix`` normalize each one-sample batch with its own statistics only (no state carried from
    batch to batch), and the test images of an i.i.d. or mixed-corruption composition do not
    depend on the batch size (corruptions are drawn over the whole test set by seed)."""
    return (
        condition.test_batch_size == 1
        and condition.stats_mode.name in ("batch", "mix")
        and condition.composition.name in ("iid", "mixed_corruption")
    )


def _score_per_sample(
    model: nn.Module,
    datamodule,
    condition: TestCondition,
    ev: EvalSection,
    device: torch.device,
    score: Callable[[nn.Module, DataLoader, torch.device], T] = predict,
) -> T | None:
    """``score`` of ``condition`` (test batch size 1) without a Python loop over samples.

    The test set is read in chunks of `PER_SAMPLE_CHUNK` and ``torch.func.vmap`` maps the model
    over the chunk's samples, each seen as a batch of one: every batch layer computes that
    sample's own statistics, exactly as the one-sample loop does (same accuracies; logits equal
    within float tolerance, since batched kernels sum in another order). A model whose forward
    vmap cannot trace (data-dependent Python control flow) returns None: the caller loops.
    """
    chunked = dataclasses.replace(condition, test_batch_size=PER_SAMPLE_CHUNK)

    def one_by_one(x: torch.Tensor) -> torch.Tensor:
        return vmap(lambda sample: model(sample.unsqueeze(0)).squeeze(0))(x)

    try:
        result = score(one_by_one, test_loader(datamodule, chunked, ev), device)
    except (RuntimeError, ValueError, NotImplementedError) as error:
        log.debug("%s: vmap over samples failed (%s); looping over samples", condition.label, error)
        return None
    return _one_batch_per_sample(result)


def _one_batch_per_sample(result):
    """``result`` with every :class:`SampleScores` in it (itself, or an element of a tuple a
    scorer returns) recording each sample as a test batch of its own, as the test batch size 1
    it was computed for (the chunk was only how it was computed)."""
    if isinstance(result, SampleScores):
        n = len(result.correct)
        return result._replace(batch=torch.arange(n), position=torch.zeros(n, dtype=torch.long))
    if isinstance(result, tuple) and not hasattr(result, "_fields"):
        return tuple(_one_batch_per_sample(part) for part in result)
    return result


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
    cache: dict[TestCondition, Scores] = {}
    rows = []
    for condition in conditions:
        computed = computed_condition(condition, batch_dependent, largest)
        if computed not in cache:
            cache[computed] = evaluate_condition(model, datamodule, computed, ev, device)
            log.debug("%s: %s", computed.label, cache[computed])
        accuracy, loss, n, ece = cache[computed]
        rows.append(
            {
                **condition.columns(),
                "accuracy": accuracy,
                "loss": loss if math.isfinite(loss) else float("nan"),
                "n_test": n,
                "computed_as": computed.label,
                "ece": ece,
                "fingerprint": condition_fingerprint(condition, ev),
            }
        )
    return rows
