"""Evaluations keyed by all they depend on (issue 28.1): a stored row whose mix prior, TENT
settings, corruption source, composition or evaluation semantics differ from the config's is
stale and evaluated again; prior 0 then equals batch statistics, as it must."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import yaml

import normzoo.bench.execute.evaluate as evaluate
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_conditions
from normzoo.bench.record.store import Store
from normzoo.bench.run import plan_grid, run_grid

GRID = {
    "experiment": {"name": "keys"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 96, "test_size": 32, "image_size": 8},
    },
    "model": {"backbone": "small_cnn"},
    "norms": ["batch"],
    "train": {"batch_sizes": [16], "max_steps": 4, "optimizer": "adamw", "lr": 2.0e-3, "seeds": 1},
    "eval": {
        "test_batch_sizes": [16],
        "stats_modes": ["running", "batch", "mix", "tent"],
        "mix_prior": 16,
        "shifts": ["clean", "gaussian_noise"],
        "severities": [1],
        "compositions": ["iid", {"name": "label_skew", "alpha": 0.5}],
    },
    "execution": {"wandb": "disabled", "workers": 1},
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The grid trained and evaluated once: (config path, output dir)."""
    root = tmp_path_factory.mktemp("keys")
    path = root / "keys.yaml"
    path.write_text(yaml.safe_dump(GRID))
    out = root / "out"
    summary = run_grid(load_config(path), out, workers=1, show_progress=False)
    assert summary.exit_status == 0
    return path, out


def _pending(path, out, overrides=()) -> int:
    with Store(out, read_only=True) as store:
        plan = plan_grid(load_config(path, list(overrides)), out, store)
    assert plan.to_train == 0  # evaluation parameters never retrain
    return plan.evaluations_pending


def _count(path, mode=None, shifted=None, composition=None) -> int:
    conditions = expand_conditions(load_config(path))
    return sum(
        (mode is None or c.stats_mode.name == mode)
        and (shifted is None or (c.shift != "clean") == shifted)
        and (composition is None or c.composition.name == composition)
        for c in conditions
    )


@pytest.mark.parametrize(
    "override, affected",
    [
        ("eval.mix_prior=0", {"mode": "mix"}),
        ("eval.mix_prior=4", {"mode": "mix"}),
        ("eval.tent_lr=0.01", {"mode": "tent"}),
        ("eval.tent_steps=2", {"mode": "tent"}),
        ("eval.compositions=[iid, {name: label_skew, alpha: 0.1}]", {"composition": "label_skew"}),
    ],
)
def test_a_changed_evaluation_parameter_makes_exactly_its_rows_pending(stored, override, affected):
    path, out = stored
    assert _pending(path, out) == 0
    assert _pending(path, out, [override]) == _count(path, **affected) > 0


def test_an_evaluation_semantics_bump_makes_every_row_pending(stored, monkeypatch):
    path, out = stored
    monkeypatch.setattr(evaluate, "EVAL_SEMANTICS_VERSION", evaluate.EVAL_SEMANTICS_VERSION + 1)
    assert _pending(path, out) == len(expand_conditions(load_config(path)))


def test_the_corruption_source_is_in_the_fingerprint_of_shifted_rows_only(stored):
    path, _ = stored
    config = load_config(path)
    other = dataclasses.replace(config.eval, shift_source="cifar10c", shift_root="/data/c10c")
    for condition in expand_conditions(config):
        same = evaluate.condition_fingerprint(condition, config.eval) == (
            evaluate.condition_fingerprint(condition, other)
        )
        assert same == (condition.shift == "clean"), condition.label


def test_mix_prior_16_then_0_is_recomputed_and_equals_batch_statistics(stored, tmp_path):
    path, stored_out = stored
    out = tmp_path / "out"

    shutil.copytree(stored_out, out)
    key = ["run_key", "test_batch_size", "shift", "severity", "test_composition"]

    def rows(mode):
        with Store(out, read_only=True) as store:
            ev = store.evaluations_frame()
        return ev[ev["stats_mode"] == mode].sort_values(key).reset_index(drop=True)

    assert not (rows("mix")["loss"].to_numpy() == rows("batch")["loss"].to_numpy()).all()
    summary = run_grid(load_config(path, ["eval.mix_prior=0"]), out, workers=1, show_progress=False)
    assert summary.exit_status == 0 and summary.evaluations == _count(path, mode="mix")
    mix, batch = rows("mix"), rows("batch")
    assert len(mix) == len(batch) == _count(path, mode="mix")
    assert (mix["accuracy"].to_numpy() == batch["accuracy"].to_numpy()).all()
    assert mix["loss"].to_numpy() == pytest.approx(batch["loss"].to_numpy(), rel=1e-6)
