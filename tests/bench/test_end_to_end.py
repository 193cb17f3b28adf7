"""End to end: compare.py on a tiny config -> store, W&B offline files, report; kill and resume."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from wandb_offline import wandb_run

from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_conditions, expand_runs
from normzoo.bench.plan.identity import experiment_identity
from normzoo.bench.record.store import Store
from normzoo.bench.record.track import offline_run_dirs
from normzoo.bench.record.wandb_layout import setting

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_compare_produces_store_wandb_runs_and_report(compare, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        str(tiny_config_path),
        "--out",
        str(out),
        "--wandb",
        "offline",
        "--workers",
        "1",
        "--set",
        "eval.stats_modes=[running, batch, mix, online, adabn, tent]",
        "--set",
        "eval.compositions=[iid, {name: outliers, k: 2}, mixed_corruption]",
    ]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    config = load_config(tiny_config_path, argv[8::2])
    runs, conditions = expand_runs(config), expand_conditions(config)
    with Store(out) as store:
        run_frame, ev = store.runs_frame(), store.evaluations_frame()
    assert list(run_frame["status"]) == ["ok"] * 4
    assert len(ev) == len(runs) * len(conditions)
    assert not ev.duplicated(
        ["run_key", "test_batch_size", "stats_mode", "shift", "severity", "test_composition"]
    ).any()
    assert ev["accuracy"].between(0, 1).all()
    mixed = ev[ev["test_composition"] == "mixed_corruption"]
    assert set(mixed["shift"]) == {"mixed"} and len(mixed) == 4 * 2 * 6
    outliers = ev[ev["test_composition"] == "outliers(k=2)"]
    assert (outliers["n_test"] < 96).all() and (
        ev[ev["test_composition"] == "iid"]["n_test"] == 96
    ).all()
    # group norm has no batch statistics: every stats mode is the running computation
    group = ev[ev["norm"] == "group"]
    spread = group.groupby(["run_key", "test_batch_size", "shift", "test_composition"])[
        "accuracy"
    ].nunique()
    assert (spread == 1).all()
    assert set(group["computed_as"].str.split("/").str[1]) == {"running"}
    # batch norm: test-batch statistics are a different computation from running statistics
    batch = ev[
        (ev["norm"] == "batch")
        & (ev["test_batch_size"] == 32)
        & (ev["shift"] == "clean")
        & (ev["test_composition"] == "iid")
    ].set_index(["run_key", "stats_mode"])["loss"]
    assert (batch.xs("running", level=1) != batch.xs("batch", level=1)).all()
    assert (out / "report.md").exists() and (out / "evaluations.csv").exists()
    assert "headline" in printed and str(out / "report.md") in printed

    dirs = offline_run_dirs(out)
    logged = [wandb_run(d) for d in dirs]
    train = [w for w in logged if w["run"].job_type == "train"]
    summary = [w for w in logged if w["run"].job_type == "summary"]
    assert len(train) == 4 and len(summary) == 1
    by_key = {w["config"]["run_key"]: w for w in train}
    assert set(by_key) == {r.key for r in runs}
    identity = experiment_identity(config, load_config(tiny_config_path))  # --set changed it
    for run in runs:
        w = by_key[run.key]
        assert w["run"].display_name == f"{identity}-{run.name}"
        # issue 14: the group is the setting (seeds are its members), not the experiment, and
        # the config is flat inputs (no nested experiment_config)
        assert w["run"].run_group == setting(identity, run)
        assert {run.norm.label, "bs=16"} <= set(w["run"].tags)
        assert w["config"]["norm"] == run.norm.name and w["config"]["seed"] == run.seed
        assert w["config"]["epochs"] == 1 and "experiment_config" not in w["config"]
        assert any("val/acc" in h for h in w["history"]) and any(
            "train/loss" in h for h in w["history"]
        )
    for d in dirs:
        for table in (d / "files" / "media" / "table").glob("evaluations_*.table.json"):
            content = json.loads(table.read_text())
            assert len(content["data"]) == len(conditions)
            columns = content["columns"]
            assert {"stats_mode", "accuracy", "test_batch_size", "shift"} <= set(columns)
            key = content["data"][0][columns.index("run_key")]
            stored = ev[ev["run_key"] == key].set_index(
                ["test_batch_size", "stats_mode", "shift", "test_composition"]
            )["accuracy"]
            for row in content["data"]:
                r = dict(zip(columns, row, strict=True))
                assert (
                    stored[
                        (r["test_batch_size"], r["stats_mode"], r["shift"], r["test_composition"])
                    ]
                    == r["accuracy"]
                )
    tables = list(out.glob("wandb/offline-run-*/files/media/table/evaluations_*.table.json"))
    assert len(tables) == 4


def _compare_cmd(config: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "benchmarks" / "compare.py"),
        str(config),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--wandb",
        "disabled",
    ]


def _ok_runs(out: Path) -> int:
    try:
        with sqlite3.connect(out / "results.sqlite", timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status='ok'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_and_resume_gives_the_uninterrupted_table(tiny_config_path, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _compare_cmd(tiny_config_path, killed, 2),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 150
        while _ok_runs(killed) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the grid finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, mid-grid
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished_before = _ok_runs(killed)
    assert 1 <= finished_before < 4
    resumed = subprocess.run(
        _compare_cmd(tiny_config_path, killed, 1),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # train once: only the runs the store lacked are trained; a run killed while it was being
    # evaluated keeps its stored weights and gets only its missing evaluations
    assert f"({4 - finished_before} trained," in resumed.stdout.replace("\n", " ")

    reference = tmp_path / "reference"
    full = subprocess.run(
        _compare_cmd(tiny_config_path, reference, 1),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr[-2000:]
    with Store(killed) as a, Store(reference) as b:
        ev_a, ev_b = a.evaluations_frame(), b.evaluations_frame()
        assert len(a.runs_frame()) == len(b.runs_frame()) == 4
    assert len(ev_a) == len(ev_b) > 0
    assert not ev_a.duplicated(
        ["run_key", "test_batch_size", "stats_mode", "shift", "test_composition"]
    ).any()
    columns = [c for c in ev_a.columns if c not in ("train_seconds",)]
    pd.testing.assert_frame_equal(ev_a[columns], ev_b[columns], check_exact=True)
