"""The dry-run cost model: its arithmetic, checked with timings replaced by a known function."""

import copy

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


def _store_run(store, config, run, train_seconds, last_step, eval_seconds):
    from normzoo.bench.execute.worker import run_row

    row = run_row(run, config) | {"train_seconds": train_seconds, "eval_seconds": eval_seconds}
    curves = [
        {"step": step, "epoch": 0, "metric": "train/loss", "value": 1.0}
        for step in (last_step // 2, last_step)
    ]
    store.write_run(row, (), curves)


def test_the_stores_own_timings_replace_the_model_where_they_exist(tiny_raw, tmp_path, monkeypatch):
    """Seconds per step per (norm, train batch size) and eval seconds per run, as stored, for the
    runs of the same data and model; the model for the rest."""
    from normzoo.bench.record.store import Store
    from normzoo.bench.record.timings import stored_timings

    monkeypatch.setattr(cost, "_seconds", lambda fn, repeats=2: 0.01 * _input_shape(fn)[0])
    tiny_raw["train"]["batch_sizes"] = [8, 16]
    tiny_raw["train"]["max_steps"] = 40
    config = parse_config(tiny_raw)
    other = copy.deepcopy(tiny_raw)
    other["data"]["options"]["image_size"] = 32  # another setup: its timings do not apply
    other_config = parse_config(other)
    batch8 = next(
        r for r in expand_runs(config) if (r.norm.name, r.train_batch_size) == ("batch", 8)
    )
    with Store(tmp_path) as store:
        _store_run(store, config, batch8, train_seconds=2.0, last_step=20, eval_seconds=5.0)
        group8 = next(r for r in expand_runs(config) if r.norm.name == "group" and r.seed == 0)
        # trained, then killed before its evaluation finished: no eval seconds yet
        _store_run(store, config, group8, train_seconds=1.0, last_step=40, eval_seconds=None)
        for run in expand_runs(other_config):
            _store_run(
                store, other_config, run, train_seconds=99.0, last_step=10, eval_seconds=99.0
            )
    timings = stored_timings(config, tmp_path)
    key = cost.timing_key("batch", {}, 8)
    group_key = cost.timing_key("group", {"groups": 8}, group8.train_batch_size)
    assert timings == {"train": {key: 0.1, group_key: 0.025}, "eval": {key[:2]: 5.0}}
    assert stored_timings(config, tmp_path / "no store") == {"train": {}, "eval": {}}

    estimate = cost.estimate_seconds(config, workers=1, timings=timings)
    # the closed form: timed calls cost 0.01 s per sample (no per-call overhead)
    info = dataset_info(config.data.dataset, config.data.options)
    largest = max(config.eval.test_batch_sizes)
    train_total = eval_total = 0.0
    for run in expand_runs(config):
        b, stored = run.train_batch_size, run.norm.name == "batch"
        measured = {("batch", 8): 0.1, ("group", 8): 0.025}.get((run.norm.name, b))
        train_total += 40 * (measured or 0.01 * b * cost.TRAIN_FACTOR)
        computed = {
            computed_condition(c, is_batch_dependent(run.norm.name), largest)
            for c in expand_conditions(config)
        }
        model_eval = cost.RUN_OVERHEAD_SECONDS + cost.EVAL_FACTOR * sum(
            info.test_size * 0.01 for _ in computed
        )
        eval_total += 5.0 if stored else model_eval
    assert estimate["train_seconds"] == pytest.approx(train_total)
    assert estimate["eval_seconds"] == pytest.approx(eval_total)
    seeds = len(config.train.seeds)
    assert estimate["basis"].startswith(
        f"{2 * seeds} of {len(expand_runs(config))} runs from the store"
    )
    assert cost.estimate_seconds(config, 1)["basis"] == "from timed steps of the backbone"
