"""Run execution: failures never stop the grid; train once, evaluate many; provenance; devices."""

import os

import pandas as pd
import pytest
import torch
from torch import nn

import normzoo.models
from normzoo.bench.execute.devices import assign_devices, default_workers
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_conditions, expand_runs
from normzoo.bench.record.store import Store
from normzoo.bench.record.track import resolve_mode
from normzoo.bench.run import plan_grid, run_grid


class _Exploding(nn.Module):
    """A model whose outputs become non-finite on the first forward pass."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3))) * float("inf")


def test_failed_and_diverged_runs_are_recorded_and_the_grid_goes_on(
    tiny_config_path, tmp_path, monkeypatch
):
    real_build = normzoo.models.build_model

    def build(backbone, norm, num_classes, in_channels=3, norm_options=None, **options):
        if norm == "group":
            raise RuntimeError("simulated crash while building")
        if norm == "layer":
            return _Exploding(num_classes)
        return real_build(backbone, norm, num_classes, in_channels, norm_options, **options)

    config = load_config(tiny_config_path, ["norms=[batch, group, layer]", "train.seeds=1"])
    monkeypatch.setattr(normzoo.models, "build_model", build)  # after validation built them
    summary = run_grid(config, tmp_path, workers=1, show_progress=False)
    assert (summary.ok, summary.failed, summary.diverged, summary.skipped) == (1, 1, 1, 0)
    with Store(tmp_path) as store:
        runs = store.runs_frame().set_index("norm")
        ev = store.evaluations_frame()
    assert runs.loc["batch", "status"] == "ok"
    assert runs.loc["group", "status"] == "failed"
    assert "RuntimeError: simulated crash" in runs.loc["group", "error"]
    assert runs.loc["layer", "status"] == "diverged"
    assert "loss became" in runs.loc["layer", "error"]
    assert set(ev["norm"]) == {"batch"}  # only ok runs have evaluations

    # resume: nothing is retried by default; --retry-failed reruns both (still failing here)
    again = run_grid(config, tmp_path, workers=1, show_progress=False)
    assert (again.skipped, again.ok + again.failed + again.diverged) == (3, 0)
    retried = run_grid(config, tmp_path, workers=1, show_progress=False, retry_failed=True)
    assert (retried.skipped, retried.failed, retried.diverged) == (1, 1, 1)
    with Store(tmp_path) as store:
        assert len(store.runs_frame()) == len(expand_runs(config)) == 3


def test_wandb_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the user's WANDB_MODE would win over auto
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="allowed"):
        resolve_mode("cloud")


SMALL = ["train.seeds=1", "train.max_steps=5"]


class _Tracker:
    """Records what the runner hands to W&B; fails on the runs named in ``broken``."""

    enabled = True

    def __init__(self, broken=()):
        self.logged, self.broken = [], set(broken)

    def log_run(self, result):
        if result.run.norm.name in self.broken:
            raise OSError("W&B dir not writable")
        self.logged.append((result.run.key, len(result.evaluations)))


def test_train_once_evaluate_many(tiny_config_path, tmp_path, monkeypatch):
    import normzoo.bench.execute.train.module

    trained = []
    real_train = normzoo.bench.execute.train.module.train_run

    def counting_train(run, *args, **kwargs):
        trained.append(run.key)
        return real_train(run, *args, **kwargs)

    monkeypatch.setattr(normzoo.bench.execute.train.module, "train_run", counting_train)
    config = load_config(tiny_config_path, SMALL)
    tracker = _Tracker(broken={"group"})
    first = run_grid(config, tmp_path, workers=1, tracker=tracker, show_progress=False)
    assert first.exit_status == 0 and len(trained) == 2
    with Store(tmp_path) as store:
        before = store.evaluations_frame()
        runs = store.runs_frame().set_index("norm")
        assert store.not_in_wandb() == [runs.loc["group", "run_key"]]  # W&B failed, grid went on
    assert [k for k, _ in tracker.logged] == [runs.loc["batch", "run_key"]]
    assert set(runs["torch_version"]) == {torch.__version__} and set(runs["device"]) == {"cpu"}
    assert runs["git_sha"].notna().all() and runs["normzoo_version"].notna().all()

    # one more shift: evaluates the stored weights, trains nothing, keeps the old rows
    more = load_config(tiny_config_path, [*SMALL, "eval.shifts=[clean, gaussian_noise, fog]"])
    assert {r.key for r in expand_runs(more)} == {r.key for r in expand_runs(config)}
    with Store(tmp_path, read_only=True) as store:
        plan = plan_grid(more, tmp_path, store)
    assert (plan.to_train, plan.to_evaluate) == (0, 2)
    assert plan.evaluations_pending == 2 * len(expand_conditions(more)) - len(before)
    tracker = _Tracker()
    second = run_grid(more, tmp_path, workers=1, tracker=tracker, show_progress=False)
    assert len(trained) == 2 and second.trained == set() and second.exit_status == 0
    assert second.evaluations == plan.evaluations_pending
    with Store(tmp_path) as store:
        after = store.evaluations_frame()
        assert store.not_in_wandb() == []  # both runs logged again with their new evaluations
    assert len(after) == 2 * len(expand_conditions(more))
    key = ["run_key", "test_batch_size", "stats_mode", "shift", "severity", "test_composition"]
    kept = after.merge(before, on=key, suffixes=("", "_before"))
    assert len(kept) == len(before) and (kept["accuracy"] == kept["accuracy_before"]).all()

    # weights round-trip exactly: re-evaluating deleted rows from the stored weights gives them back
    with Store(tmp_path) as store:
        store._conn.execute("DELETE FROM evaluations WHERE shift = 'clean'")
        store._conn.commit()
    run_grid(more, tmp_path, workers=1, show_progress=False)
    with Store(tmp_path) as store:
        again = store.evaluations_frame()
    assert len(trained) == 2
    pd.testing.assert_frame_equal(
        again.sort_values(key).reset_index(drop=True)[key + ["accuracy", "loss", "n_test"]],
        after.sort_values(key).reset_index(drop=True)[key + ["accuracy", "loss", "n_test"]],
    )

    # results of other code versions are kept and counted; the switch retrains them only
    with Store(tmp_path) as store:
        store._conn.execute(
            "UPDATE runs SET torch_version = '0.0' WHERE run_key = ?",
            (runs.loc["group", "run_key"],),
        )
        store._conn.commit()
        plan = plan_grid(more, tmp_path, store)
        assert (len(plan.tasks), plan.other_versions) == (0, 1)
        plan = plan_grid(more, tmp_path, store, rerun_other_versions=True)
        assert [t.run.key for t in plan.tasks if t.train] == [runs.loc["group", "run_key"]]


def test_devices_round_robin_over_visible_gpus(monkeypatch):
    assert assign_devices(4, 2) == ["0", "1", "0", "1"]
    assert assign_devices(3, 2, visible="3,5") == ["3", "5", "3"]
    assert assign_devices(2, 0) == [None, None]
    assert default_workers(gpus=2, workers_per_gpu=3) == 6
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert default_workers(gpus=0) == 7
