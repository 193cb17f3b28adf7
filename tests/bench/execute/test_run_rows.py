"""A run's row and curves as the worker yields them: convergence columns, NULLs on failure."""

import pytest

import normzoo.bench.execute.train.module as bench_module
from normzoo.bench.execute.messages import Finished, Task, Trained
from normzoo.bench.execute.worker import execute_task
from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.plan.schema import CONVERGENCE_COLUMNS, RUN_COLUMNS
from normzoo.bench.record.store import Store


def _config(tiny_raw, **train):
    raw = dict(tiny_raw)
    raw["norms"] = ["batch"]
    raw["train"] = {**raw["train"], "seeds": [0], "epochs": 2, **train}
    return parse_config(raw)


def test_a_trained_run_records_fit_lr_role_and_a_validation_curve_per_epoch(tiny_raw, tmp_path):
    config = _config(tiny_raw, lr=3e-3)
    (run,) = expand_runs(config)
    messages = list(execute_task(Task(run, ()), config, str(tmp_path)))
    trained = next(m for m in messages if isinstance(m, Trained))
    row = trained.row
    assert set(CONVERGENCE_COLUMNS) <= set(RUN_COLUMNS) <= set(row)
    assert row["lr"] == 3e-3 and row["role"] == "compare"
    assert 0 <= row["train_accuracy"] <= 1 and row["train_loss"] > 0
    assert 0 <= row["train_accuracy_train_mode"] <= 1  # batch norm: batch statistics too
    curve = [c for c in trained.curves if c["metric"] == "val/acc"]
    assert [c["epoch"] for c in curve] == [0, 1]
    assert curve[-1]["value"] == pytest.approx(row["val_accuracy"])
    assert [c["epoch"] for c in trained.curves if c["metric"] == "val/loss"] == [0, 1]
    with Store(tmp_path) as store:  # the store keeps all of it
        store.write_run(row, (), trained.curves)
        stored = store.run_row(run.key)
        assert {c: stored[c] for c in CONVERGENCE_COLUMNS} == {
            c: row[c] for c in CONVERGENCE_COLUMNS
        }
        curves = store.curves_frame([run.key])
        assert len(curves[curves["metric"] == "val/acc"]) == 2


def test_a_diverged_run_records_nulls_but_its_lr(tiny_raw, tmp_path, monkeypatch):
    config = _config(tiny_raw, lr_scaling="linear", lr=0.1, lr_reference_batch_size=32)
    (run,) = expand_runs(config)

    def diverge(*args, **kwargs):
        raise bench_module.DivergedError("loss became nan")

    monkeypatch.setattr(bench_module, "train_run", diverge)
    messages = list(execute_task(Task(run, ()), config, str(tmp_path)))
    (trained,) = [m for m in messages if isinstance(m, Trained)]
    assert not any(isinstance(m, Finished) for m in messages)
    row = trained.row
    assert row["status"] == "diverged"
    assert row["train_accuracy"] is None and row["train_loss"] is None
    assert row["train_accuracy_train_mode"] is None
    assert row["lr"] == pytest.approx(0.1 * 16 / 32)  # Goyal et al.'s linear rule, batch 16
    with Store(tmp_path) as store:
        store.write_run(row)
        assert store.run_row(run.key)["train_accuracy"] is None


def test_a_failing_evaluation_group_leaves_the_others_stored_and_retry_completes_it(
    tiny_raw, tmp_path, monkeypatch
):
    """One condition group raising fails the run (error names the condition and how many
    failed) but every other group is evaluated and stored; --retry-failed re-evaluates only the
    missing conditions from the stored weights (no retraining) and the run ends ok."""
    import normzoo.bench.execute.worker as worker
    from normzoo.bench.run import run_grid

    config = _config(tiny_raw, epochs=1)
    evaluate_run = worker.evaluate_run
    calls = {"failed": 0, "retrained": 0}

    def flaky(model, datamodule, group, eval_section):
        if group[0].shift != "clean" and calls["failed"] == 0:
            calls["failed"] += 1
            raise RuntimeError("corruption broke")
        return evaluate_run(model, datamodule, group, eval_section)

    monkeypatch.setattr(worker, "evaluate_run", flaky)
    run_grid(config, tmp_path, show_progress=False)
    with Store(tmp_path) as store:
        (row,) = store.runs_frame().to_dict("records")
        stored = len(store.evaluated()[row["run_key"]])  # of a failed run: kept, not reported
    assert row["status"] == "failed"
    assert "RuntimeError: corruption broke" in row["error"]
    assert "conditions failed, the others are stored" in row["error"]
    assert "gaussian_noise" in row["error"]
    total = 2 * 2 * 2 * 2  # test batch sizes x stats modes x shifts x compositions
    failed = int(row["error"].split(" of ")[0].rsplit("; ", 1)[1])
    assert 0 < failed < total and stored == total - failed
    train_run = bench_module.train_run

    def counting(*args, **kwargs):
        calls["retrained"] += 1
        return train_run(*args, **kwargs)

    monkeypatch.setattr(bench_module, "train_run", counting)
    run_grid(config, tmp_path, show_progress=False, retry_failed=True)
    with Store(tmp_path) as store:
        (row,) = store.runs_frame().to_dict("records")
        assert len(store.evaluations_frame()) == total
    assert row["status"] == "ok" and calls["retrained"] == 0
