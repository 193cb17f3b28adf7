"""The grid through submitit's LocalExecutor (real job processes): every result once.

A crash, a killed job, a preempted job, a dead submitting process and two racing invocations
each end with one row per run in the store.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

submitit = pytest.importorskip("submitit", reason="the cluster extra: pip install -e '.[cluster]'")
import cloudpickle  # noqa: E402  (submitit's dependency)

from normzoo.bench.execute import cluster  # noqa: E402
from normzoo.bench.execute.worker import execute_task  # noqa: E402
from normzoo.bench.plan.config import load_config  # noqa: E402
from normzoo.bench.plan.config.validate import check_submitit_options  # noqa: E402
from normzoo.bench.plan.grid import expand_conditions, expand_runs  # noqa: E402
from normzoo.bench.record.store import Store  # noqa: E402
from normzoo.bench.run import run_grid  # noqa: E402

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job processes cannot import tests

SMALL = {
    "experiment": {"name": "cluster"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 192, "test_size": 64, "image_size": 8},
    },
    "model": {"backbone": "small_cnn"},
    "norms": ["batch", {"name": "group", "options": {"groups": 8}}],
    "train": {"batch_sizes": [16], "max_steps": 3, "seeds": 2},
    "eval": {"test_batch_sizes": [32], "stats_modes": ["running", "batch"]},
    "execution": {
        "executor": "submitit",
        "wandb": "disabled",
        "submitit": {"cluster": "local"},
    },
}


@pytest.fixture
def config(tmp_path):
    """4 runs (2 norms x 2 seeds), written to cluster.yaml."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return load_config(path)


@pytest.fixture
def two_runs(tmp_path):
    """2 runs (2 norms x 1 seed), written to cluster.yaml (fewer job processes to start)."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "train": {**SMALL["train"], "seeds": 1}}))
    return load_config(path)


def _faulty_execute(task, config, out_dir, tracker=None):
    """execute_task, but the first attempt of chosen runs crashes, gets killed or preempted."""
    run = task.run
    control = Path(os.environ["NORMZOO_TEST_CONTROL"])
    plan = json.loads((control / "plan.json").read_text())
    attempt = len(list(control.glob(f"{run.key}.attempt*"))) + 1
    (control / f"{run.key}.attempt{attempt}").write_text(str(os.getpid()))
    what = plan.get(run.key)
    if what == "crash":  # the job process dies hard on every attempt
        os._exit(3)
    if what in ("kill", "preempt") and attempt == 1:
        (control / f"{run.key}.{what}").write_text(str(os.getpid()))
        time.sleep(120)  # the test signals this process now
    yield from execute_task(task, config, out_dir, tracker)


def _signal_when_ready(control: Path, stop: threading.Event) -> None:
    sent = set()
    while not stop.is_set():
        for what, signum in (("kill", signal.SIGKILL), ("preempt", signal.SIGUSR2)):
            for marker in control.glob(f"*.{what}"):
                if marker not in sent:
                    os.kill(int(marker.read_text()), signum)
                    sent.add(marker)
        time.sleep(0.2)


def _journal(out: Path) -> list[dict]:
    lines = (out / "submitit" / "jobs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _submissions(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in _journal(out):
        for key in entry["run_keys"]:
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_crash_kill_and_preemption_each_leave_one_row(config, tmp_path, monkeypatch):
    runs = expand_runs(config)
    crash, kill, preempt, plain = (r.key for r in runs)
    control = tmp_path / "control"
    control.mkdir()
    (control / "plan.json").write_text(
        json.dumps({crash: "crash", kill: "kill", preempt: "preempt"})
    )
    monkeypatch.setenv("NORMZOO_TEST_CONTROL", str(control))
    monkeypatch.setattr(cluster, "execute_task", _faulty_execute)
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.3)
    stop = threading.Event()
    signaller = threading.Thread(target=_signal_when_ready, args=(control, stop), daemon=True)
    signaller.start()
    out = tmp_path / "out"
    try:
        summary = run_grid(config, out, show_progress=False)
    finally:
        stop.set()
    assert (summary.ok, summary.failed, summary.not_finished) == (3, 1, 0)
    with Store(out) as store:
        rows = store.runs_frame().set_index("run_key")
        evaluations = store.evaluations_frame()
    assert sorted(rows.index) == sorted(r.key for r in runs)
    assert rows.loc[crash, "status"] == "failed"
    assert "ended without a result" in rows.loc[crash, "error"]
    assert (rows.drop(index=crash)["status"] == "ok").all()
    per_run = evaluations.groupby("run_key").size()
    assert (per_run == len(expand_conditions(config))).all() and len(per_run) == 3
    # the crash is resubmitted once (run_grid retries a dead worker once), the killed job once;
    # the preempted job is
    # requeued by submitit itself (same job, second attempt), the plain run runs once
    assert _submissions(out) == {crash: 2, kill: 2, preempt: 1, plain: 1}
    attempts = {r.key: len(list(control.glob(f"{r.key}.attempt*"))) for r in runs}
    assert attempts == {crash: 2, kill: 2, preempt: 2, plain: 1}
    assert not list((out / "submitit" / "results").glob("*.pkl"))  # all moved to collected/

    again = run_grid(config, out, show_progress=False)  # nothing left to do
    assert (again.skipped, again.ok + again.failed) == (4, 0)
    assert _submissions(out) == {crash: 2, kill: 2, preempt: 1, plain: 1}


PARENT = """
import sys
from normzoo.bench.execute import cluster
from normzoo.bench.plan.config import load_config
from normzoo.bench.run import run_grid
cluster.POLL_SECONDS = 0.3
summary = run_grid(load_config(sys.argv[1]), sys.argv[2], show_progress=False)
print(summary.line())
"""


def _parent(config_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PARENT, str(config_path), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_dead_parent_rerun_collects_and_submits_nothing_again(two_runs, tmp_path, monkeypatch):
    config = two_runs
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.3)
    config_path = tmp_path / "cluster.yaml"
    out = tmp_path / "out"
    parent = _parent(config_path, out)
    journal = out / "submitit" / "jobs.jsonl"
    deadline = time.monotonic() + 300  # start-up is slow on a loaded 2-core machine
    while sum(len(e["run_keys"]) for e in (_journal(out) if journal.exists() else [])) < 2:
        assert time.monotonic() < deadline and parent.poll() is None, parent.stdout.read()
        time.sleep(0.05)
    parent.kill()  # between submission and collection
    parent.wait()
    with Store(out) as store:
        assert len(store.runs_frame()) == 0
    summary = run_grid(config, out, show_progress=False)  # the same command again
    assert (summary.ok, summary.skipped) == (2, 0)
    assert _submissions(out) == {r.key: 1 for r in expand_runs(config)}  # none resubmitted
    with Store(out) as store:
        assert len(store.runs_frame()) == 2 and (store.runs_frame()["status"] == "ok").all()


def test_two_racing_invocations_store_each_run_once(two_runs, tmp_path):
    config = two_runs
    config_path = tmp_path / "cluster.yaml"
    out = tmp_path / "out"
    first, second = _parent(config_path, out), _parent(config_path, out)
    outputs = [p.communicate(timeout=240)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    with Store(out) as store:
        rows = store.runs_frame()
        evaluations = store.evaluations_frame()
    assert sorted(rows["run_key"]) == sorted(r.key for r in expand_runs(config))
    assert (rows["status"] == "ok").all()
    assert len(evaluations) == 2 * len(expand_conditions(config))
    assert not list((out / "submitit" / "results").glob("*.pkl"))


def test_submitit_options_are_validated(tmp_path):
    raw = {
        **SMALL,
        "execution": {
            "executor": "submitit",
            "submitit": {"partiton": "gpu", "time_min": 0, "cluster": "kubernetes", "mem_gb": 16},
        },
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as error:
        load_config(path)
    message = str(error.value)
    assert "unknown key 'execution.submitit.partiton'" in message and "partition" in message
    assert "time_min=0 must be an integer >= 1" in message
    assert "cluster='kubernetes'" in message
    assert message.count("execution.submitit") == 3  # mem_gb=16 is fine


def test_slurm_options_reach_sbatch(tmp_path, monkeypatch):
    """The SLURM options become the sbatch lines of the submission file (no cluster needed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")  # submitit looks for srun to detect SLURM
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = {
        "cluster": "slurm",
        "partition": "gpu",
        "time_min": 120,
        "mem_gb": 32,
        "cpus_per_task": 4,
        "gpus_per_task": 1,
        "array_parallelism": 8,
        "account": "proj1",
        "qos": "high",
        "additional": {"constraint": "a100"},
        "setup": ["module load cuda"],
        "runs_per_job": 3,
    }
    assert check_submitit_options(options) == []
    executor = cluster.make_executor(tmp_path, options)
    assert executor.cluster == "slurm"
    slurm = executor._executor
    text = slurm._make_submission_file_text("python job.py", "uid")
    for line in (
        "--partition=gpu",
        "--time=120",
        "--mem=32GB",
        "--cpus-per-task=4",
        "--gpus-per-node=1",
        "--account=proj1",
        "--qos=high",
        "--constraint=a100",
        "--ntasks-per-node=1",
        "--signal=USR2@",
    ):
        assert f"#SBATCH {line}" in text, text
    assert "module load cuda" in text
    assert slurm.parameters["array_parallelism"] == 8
