"""``normzoo evaluate``: the test-time analysis of one model trained outside normzoo.

A checkpoint is loaded into its architecture (`normzoo.bench.execute.checkpoint`), and the
benchmark's own evaluation (`normzoo.bench.execute.evaluate.evaluate_condition`) scores it under
every test condition of an ``EvalSection`` (test batch sizes, stats modes, mix priors, AdaBN, TENT,
shifts x severities, label-skewed and outlier batches), plus PreciseBN: running statistics
re-estimated on an unlabeled adaptation split (`normzoo.recompute_stats`). Nothing is trained and
the checkpoint file is hashed before and after.

Each `Outcome` keeps per-sample scores keyed by test image and, where the prediction depends on
its test batch, the batch of each sample: what `normzoo.report.checkpoint.interval_rows`
bootstraps (whole batches resampled, differences paired on the same test images).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

import normzoo
from normzoo.bench.execute.checkpoint import (
    build_checkpoint_model,
    check_checkpoint_file,
    load_weights,
    read_state_dict,
    sha256_file,
    to_zoo_batch_layers,
)
from normzoo.bench.execute.evaluate import (
    SampleScores,
    device_for_eval,
    evaluate_condition,
    expected_calibration_error,
    predict_samples,
)
from normzoo.bench.plan.config import Composition, EvalSection, StatsMode
from normzoo.bench.plan.grid import TestCondition, computed_condition, expand_test_conditions
from normzoo.bench.plan.schema import CLEAN, PER_SAMPLE_MODES
from normzoo.models import has_batch_layers

log = logging.getLogger(__name__)

PRECISEBN = "precisebn"  # the stats-mode label of running statistics re-estimated on the split
ADAPT_SPLITS = ("val", "train", "none")


@dataclasses.dataclass(frozen=True)
class EvaluateRequest:
    """What ``normzoo evaluate`` was asked: the checkpoint, its model, the data, the grid."""

    checkpoint: Path
    model: str
    dataset: str
    ev: EvalSection
    norm: str = "batch"
    norm_options: dict = dataclasses.field(default_factory=dict)
    num_classes: int | None = None  # None: the dataset's
    root: str | None = None
    dataset_options: dict = dataclasses.field(default_factory=dict)
    adapt_split: str = "val"  # unlabeled data for PreciseBN; "none" skips it
    val_fraction: float = 0.1
    resamples: int = 2000
    seed: int = 0  # of the bootstrap


@dataclasses.dataclass
class Prepared:
    """A request checked and loaded: model (zoo batch layers), data, checkpoint hash."""

    request: EvaluateRequest
    model: nn.Module
    datamodule: object
    sha256_before: str
    prefix: str  # key prefix stripped from the checkpoint (e.g. "model." of a Lightning .ckpt)
    converted: int  # torch batch norm layers swapped for zoo ones


def prepare(request: EvaluateRequest) -> Prepared:
    """Everything that can fail on bad input, before any evaluation: the checkpoint file, the
    data, the model spec, the keys. FileNotFoundError/ValueError with one line otherwise."""
    from normzoo.data import NormzooDataModule

    if request.adapt_split not in ADAPT_SPLITS:
        raise ValueError(f"--adapt-split {request.adapt_split!r}; use one of {ADAPT_SPLITS}")
    path = check_checkpoint_file(request.checkpoint)
    sha256_before = sha256_file(path)
    state = read_state_dict(path)
    val_fraction = request.val_fraction if request.adapt_split == "val" else 0.0
    datamodule = NormzooDataModule(
        request.dataset,
        root=request.root,
        train_batch_size=1,
        val_fraction=val_fraction,
        dataset_options=request.dataset_options,
    )
    datamodule.setup()
    num_classes = request.num_classes or datamodule.num_classes
    model = build_checkpoint_model(
        request.model, request.norm, num_classes, datamodule.in_channels, request.norm_options
    )
    prefix = load_weights(model, state, f"checkpoint '{path}'")
    converted = to_zoo_batch_layers(model)
    return Prepared(request, model.eval(), datamodule, sha256_before, prefix, converted)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One test condition's per-sample scores, keyed by test image."""

    condition: TestCondition
    stats_mode: str  # its label (``precisebn`` is not a benchmark stats mode)
    correct: np.ndarray  # bool per scored sample
    loss: np.ndarray
    sample: np.ndarray  # test image index of each scored sample
    cluster: np.ndarray | None  # test batch of each sample where predictions depend on it
    ece: float
    computed_as: str


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A test condition the model cannot be evaluated under, and why (e.g. batch statistics at
    test batch 1 where a layer sees one value per channel)."""

    condition: TestCondition
    stats_mode: str
    reason: str


def _sample_scorer():
    """A ``score`` for `evaluate_condition` that keeps each sample's test image index: the
    loader's index batches (its dataset's ``batches``, the label-skewed order included)."""

    def score(model: nn.Module, loader, device: torch.device) -> tuple[SampleScores, np.ndarray]:
        batches = loader.dataset.batches  # NormzooDataModule.test_loader's fixed index batches
        scores = predict_samples(model, loader, device)
        starts = np.cumsum([0, *(len(b) for b in batches[:-1])])
        flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
        sample = flat[starts[scores.batch.numpy()] + scores.position.numpy()]
        return scores, sample

    return score


def _outcome(condition, label, computed, scores: SampleScores, sample, per_sample) -> Outcome:
    return Outcome(
        condition=condition,
        stats_mode=label,
        correct=scores.correct.numpy(),
        loss=scores.loss.numpy(),
        sample=sample,
        cluster=None if per_sample else scores.batch.numpy(),
        ece=expected_calibration_error(scores.bins),
        computed_as=computed.label.replace(computed.stats_mode.label, label, 1),
    )


def evaluate_grid(prepared: Prepared) -> list[Outcome | Skipped]:
    """Every condition of the request's grid (identical computations once, as the benchmark's
    `computed_condition`), and PreciseBN on the adaptation split under every shift."""
    request, model, datamodule = prepared.request, prepared.model, prepared.datamodule
    ev = request.ev
    device = device_for_eval()
    model = model.to(device).eval()
    batch_dependent = has_batch_layers(model)
    largest = max(ev.test_batch_sizes)
    score = _sample_scorer()
    cache: dict[TestCondition, tuple[SampleScores, np.ndarray] | str] = {}
    outcomes = []
    for condition in expand_test_conditions(ev):
        computed = computed_condition(condition, batch_dependent, largest)
        if computed not in cache:
            log.info("evaluating %s", computed.label)
            try:
                cache[computed] = evaluate_condition(model, datamodule, computed, ev, device, score)
            except ValueError as error:  # e.g. batch statistics of one value per channel
                log.warning("%s cannot be evaluated: %s", computed.label, error)
                cache[computed] = str(error)
        label = condition.stats_mode.label
        if isinstance(cache[computed], str):
            outcomes.append(Skipped(condition, label, cache[computed]))
            continue
        per_sample = computed.stats_mode.name in PER_SAMPLE_MODES
        scores, sample = cache[computed]
        outcomes.append(_outcome(condition, label, computed, scores, sample, per_sample))
    if request.adapt_split != "none" and batch_dependent:
        outcomes += _precisebn(prepared, model, device, largest, score)
    return outcomes


def _precisebn(prepared: Prepared, model, device, largest: int, score) -> list[Outcome]:
    """Running statistics re-estimated exactly on the unlabeled adaptation split (PreciseBN,
    Wu & Johnson 2021), then each clean and shifted i.i.d. test set at the largest batch."""
    datamodule, ev = prepared.datamodule, prepared.request.ev
    split = prepared.request.adapt_split
    loader = datamodule.val_dataloader() if split == "val" else datamodule.train_dataloader()
    precise = copy.deepcopy(model)
    normzoo.recompute_stats(precise, ((x.to(device),) for x, _ in loader))
    precise.eval()
    iid = Composition()
    shifts = {(c.shift, c.severity) for c in expand_test_conditions(ev) if c.shift != "mixed"}
    outcomes = []
    for shift, severity in sorted(shifts, key=lambda s: (s[0] != CLEAN, s)):
        condition = TestCondition(largest, StatsMode("running"), shift, severity, iid)
        log.info("evaluating %s after PreciseBN on the %s split", condition.label, split)
        scores, sample = evaluate_condition(precise, datamodule, condition, ev, device, score)
        outcomes.append(_outcome(condition, PRECISEBN, condition, scores, sample, True))
    return outcomes


__all__ = [
    "PRECISEBN",
    "EvaluateRequest",
    "Outcome",
    "Prepared",
    "Skipped",
    "evaluate_grid",
    "prepare",
]
