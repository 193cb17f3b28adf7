"""Cost estimate of a grid (nothing is trained).

Calibrated from the output dir's own store when it holds finished runs of the same data, model
and device: seconds per training step per (norm, train batch size), and evaluation seconds per
run per norm when the test conditions are the same. Everything else comes from a few timed steps
of the backbone (`RUN_OVERHEAD_SECONDS`, `EVAL_FACTOR`, `TRAIN_FACTOR` calibrated on the
presets; ``benchmarks/estimate_check.py`` compares estimate and measured time).
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import computed_condition, expand_conditions, expand_runs
from normzoo.data import dataset_info, fit_size

# Calibrated on configs/quick.yaml (2 CPU cores): data setup, Lightning start-up and W&B per run,
# and the statistics hooks, loaders and corruptions around each evaluation forward pass.
RUN_OVERHEAD_SECONDS = 3.0
EVAL_FACTOR = 1.5
TRAIN_FACTOR = 1.25  # validation passes, data loading and the optimizer around each timed step


def _seconds(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _linear_fit(small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(per-call overhead, per-sample cost) through two (batch size, seconds) points."""
    (b1, t1), (b2, t2) = small, large
    per_sample = max((t2 - t1) / (b2 - b1), 0.0)
    return max(t1 - per_sample * b1, 0.0), per_sample


def timing_key(norm: str, options: dict, train_batch_size: int) -> tuple[str, str, int]:
    """The key of `estimate_seconds`' ``timings``: norm name, options as stored JSON, batch."""
    return (norm, json.dumps(options, sort_keys=True), train_batch_size)


def estimate_seconds(config: Config, workers: int, timings: dict | None = None) -> dict:
    """Estimated wall seconds of the grid on this machine with ``workers`` one-thread workers.

    ``timings`` (`normzoo.bench.record.timings.stored_timings`): measured seconds per training
    step per `timing_key` (``"train"``) and evaluation seconds per run per (norm, options)
    (``"eval"``); what they cover is used as measured, the rest comes from timed steps of the
    backbone. Returns train, eval and wall seconds and ``basis``, what the estimate rests on.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker trains; restored below
    try:
        return _estimate(config, workers, timings)
    finally:
        torch.set_num_threads(threads)


def _estimate(config: Config, workers: int, timings: dict | None = None) -> dict:
    from normzoo.models import build_model
    from normzoo.registry import is_batch_dependent

    info = dataset_info(config.data.dataset, config.data.options, config.data.root)
    channels, size = info.channels, info.image_size
    n_fit = fit_size(info, config.data.val_fraction)
    n_test = info.test_size
    conditions = expand_conditions(config)
    largest = max(config.eval.test_batch_sizes)
    # One backbone (first norm) is timed; the norms differ far less in cost than the grid cells.
    norm = config.norms[0]
    model = build_model(
        config.model.backbone, norm.name, 10, channels, norm.options, **config.model.options
    )
    points_train, points_eval = [], []
    for b in (2, 32):
        x = torch.randn(b, channels, size, size)
        y = torch.zeros(b, dtype=torch.long)

        def step(model=model, x=x, y=y):
            model.zero_grad()
            F.cross_entropy(model.train()(x), y).backward()

        def forward(model=model, x=x):
            with torch.no_grad():
                model.eval()(x)

        points_train.append((b, _seconds(step)))
        points_eval.append((b, _seconds(forward)))
    train_overhead, train_sample = _linear_fit(*points_train)
    eval_overhead, eval_sample = _linear_fit(*points_eval)
    timings = timings or {"train": {}, "eval": {}}
    train_total = eval_total = 0.0
    calibrated = 0
    runs = expand_runs(config)
    for run in runs:
        b = run.train_batch_size
        steps = config.train.max_steps or config.train.epochs * max(1, n_fit // b)
        key = timing_key(run.norm.name, run.norm.options, b)
        per_step = timings["train"].get(key)
        calibrated += per_step is not None
        if per_step is None:
            per_step = (train_overhead + train_sample * b) * TRAIN_FACTOR
        train_total += steps * per_step
        if key[:2] in timings["eval"]:
            eval_total += timings["eval"][key[:2]]
            continue
        computed = {
            computed_condition(c, is_batch_dependent(run.norm.name), largest) for c in conditions
        }
        eval_total += RUN_OVERHEAD_SECONDS + EVAL_FACTOR * sum(
            n_test / c.test_batch_size * eval_overhead + n_test * eval_sample for c in computed
        )
    basis = "from timed steps of the backbone"
    if calibrated:
        basis = f"{calibrated} of {len(runs)} runs from the store's own timings, the rest {basis}"
    return {
        "train_seconds": train_total,
        "eval_seconds": eval_total,
        "wall_seconds": (train_total + eval_total) / max(1, workers),
        "basis": basis,
    }
