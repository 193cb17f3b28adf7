"""The dry-run cost model: its arithmetic, checked with timings replaced by a known function."""

import pytest

from normzoo.bench.plan import cost
from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.grid import computed_condition, expand_conditions, expand_runs
from normzoo.data import dataset_info
from normzoo.registry import is_batch_dependent


def test_linear_fit_through_two_points():
    overhead, per_sample = cost._linear_fit((2, 1.0), (32, 4.0))
    assert per_sample == pytest.approx(0.1) and overhead == pytest.approx(0.8)
    # a larger batch that is not slower gives no negative per-sample cost
    assert cost._linear_fit((2, 1.0), (32, 0.5)) == (1.0, 0.0)


def test_estimate_is_the_model_formula(tiny_raw, monkeypatch):
    """With every timed call made to cost `a + b * batch`, the estimate is the closed form."""
    train_fit = {2: 0.010, 32: 0.040}  # -> overhead 0.008 s, 0.001 s per sample
    eval_fit = {2: 0.004, 32: 0.010}  # -> overhead 0.0036 s, 0.0002 s per sample
    calls = []

    def fake_seconds(fn, repeats=2):
        batch = _input_shape(fn)[0]
        calls.append((fn.__name__, batch))
        return (train_fit if fn.__name__ == "step" else eval_fit)[batch]

    monkeypatch.setattr(cost, "_seconds", fake_seconds)
    tiny_raw["train"]["batch_sizes"] = [8, 16]
    tiny_raw["train"]["max_steps"] = 40
    config = parse_config(tiny_raw)
    estimate = cost.estimate_seconds(config, workers=2)
    assert sorted(calls) == [("forward", 2), ("forward", 32), ("step", 2), ("step", 32)]

    info = dataset_info(config.data.dataset, config.data.options)
    largest = max(config.eval.test_batch_sizes)
    train_total = eval_total = 0.0
    for run in expand_runs(config):
        b = run.train_batch_size
        train_total += 40 * (0.008 + 0.001 * b) * 1.25
        computed = {
            computed_condition(c, is_batch_dependent(run.norm.name), largest)
            for c in expand_conditions(config)
        }
        eval_total += cost.RUN_OVERHEAD_SECONDS + cost.EVAL_FACTOR * sum(
            info.test_size / c.test_batch_size * 0.0036 + info.test_size * 0.0002 for c in computed
        )
    assert estimate["train_seconds"] == pytest.approx(train_total)
    assert estimate["eval_seconds"] == pytest.approx(eval_total)
    assert estimate["wall_seconds"] == pytest.approx((train_total + eval_total) / 2)


def test_estimate_uses_the_dataset_table_for_shapes(tiny_raw, monkeypatch):
    shapes = []
    monkeypatch.setattr(
        cost, "_seconds", lambda fn, repeats=2: shapes.append(_input_shape(fn)) or 0.01
    )
    tiny_raw["data"]["options"]["image_size"] = 24
    cost.estimate_seconds(parse_config(tiny_raw), workers=1)
    assert {s[1:] for s in shapes} == {(3, 24, 24)}


def _input_shape(fn):
    return tuple(next(d for d in fn.__defaults__ if hasattr(d, "ndim") and d.ndim == 4).shape)
