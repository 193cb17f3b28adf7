"""Rough cost estimate of a grid from a few timed steps of its backbone (nothing is trained)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from normzoo.bench.plan.config import Config
from normzoo.bench.plan.grid import computed_condition, expand_conditions, expand_runs
from normzoo.data import dataset_info

# Calibrated on configs/quick.yaml (2 CPU cores): data setup, Lightning start-up and W&B per run,
# and the statistics hooks, loaders and corruptions around each evaluation forward pass.
RUN_OVERHEAD_SECONDS = 3.0
EVAL_FACTOR = 1.5


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


def estimate_seconds(config: Config, workers: int) -> dict:
    """Estimated wall seconds of the grid on this machine with ``workers`` one-thread workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker trains; restored below
    try:
        return _estimate(config, workers)
    finally:
        torch.set_num_threads(threads)


def _estimate(config: Config, workers: int) -> dict:
    from normzoo.models import build_model
    from normzoo.registry import is_batch_dependent

    info = dataset_info(config.data.dataset, config.data.options)
    channels, size = info.channels, info.image_size
    n_fit = int(info.train_size * (1 - config.data.val_fraction))
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
    train_total = eval_total = 0.0
    for run in expand_runs(config):
        b = run.train_batch_size
        steps = config.train.max_steps or config.train.epochs * max(1, n_fit // b)
        train_total += steps * (train_overhead + train_sample * b) * 1.25  # + val, data, optim
        computed = {
            computed_condition(c, is_batch_dependent(run.norm.name), largest) for c in conditions
        }
        eval_total += RUN_OVERHEAD_SECONDS + EVAL_FACTOR * sum(
            n_test / c.test_batch_size * eval_overhead + n_test * eval_sample for c in computed
        )
    return {
        "train_seconds": train_total,
        "eval_seconds": eval_total,
        "wall_seconds": (train_total + eval_total) / max(1, workers),
    }
