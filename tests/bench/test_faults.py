"""Fault injection: signals to the parent, one worker and the group; dead workers; two invocations
on one output dir; --fresh against a live run. Each case asserts the exit status, that no worker
outlives the invocation, and that the store lost and duplicated nothing.

Signals are sent from inside a training step (tests/bench/fault_inject/sitecustomize.py) once a
given number of runs is stored, so each case hits the same moment on a slow or a fast machine.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from normzoo.bench.record.outdir import LOCK_NAME, OutDirLock

ROOT = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "fault_inject"

pytestmark = pytest.mark.slow

# 4 runs (2 norms x 2 seeds) of a few steps on tiny images, one test condition each.
FAULT_GRID = {
    "experiment": {"name": "faults"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 96, "test_size": 32, "image_size": 8},
    },
    "model": {"backbone": "small_cnn"},
    "norms": ["batch", {"name": "group", "options": {"groups": 8}}],
    "train": {"batch_sizes": [16], "max_steps": 4, "optimizer": "adamw", "lr": 2.0e-3, "seeds": 2},
    "eval": {
        "test_batch_sizes": [32],
        "stats_modes": ["running"],
        "shifts": ["clean"],
        "severities": [1],
        "compositions": ["iid"],
    },
    "execution": {"wandb": "disabled"},
}
RUNS = 4


@pytest.fixture
def grid(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(FAULT_GRID))
    return path


def _tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (the invocation and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def _compare(grid: Path, out: Path, workers: int, faults: str = "", *extra: str):
    """Run compare.py as a new session; returns (completed process, pids left after it)."""
    tag = f"NORMZOO_FAULT_TAG={uuid.uuid4().hex}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(INJECT), str(ROOT)]),
        "NORMZOO_FAULTS": faults,
        "NORMZOO_FAULTS_DIR": str(out.parent),
        "NORMZOO_FAULTS_OUT": str(out),
        "NORMZOO_FAULT_TAG": tag,
        "WANDB_MODE": "disabled",
    }
    command = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), str(grid)]
    command += ["--out", str(out), "--workers", str(workers), *extra]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=480)  # seconds each when the machine is idle
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 5  # the parent-death signal and the watchdog act within a second
    left = _tagged_pids(tag)
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = _tagged_pids(tag)
    for pid in left:  # never leave processes behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, output, None), left


def _text(done: subprocess.CompletedProcess) -> str:
    """The output with line wraps undone."""
    return " ".join(done.stdout.split())


def _store(out: Path) -> dict:
    """run_key -> (status, error, number of evaluations); asserts keys are unique."""
    with sqlite3.connect(out / "results.sqlite") as conn:
        runs = conn.execute("SELECT run_key, status, error FROM runs ORDER BY run_key").fetchall()
        evals = dict(
            conn.execute("SELECT run_key, COUNT(*) FROM evaluations GROUP BY run_key").fetchall()
        )
        pairs = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT run_key || test_batch_size || stats_mode || shift"
            " || severity || test_composition) FROM evaluations"
        ).fetchone()
    assert len({r[0] for r in runs}) == len(runs) and pairs[0] == pairs[1]
    return {key: (status, error, evals.get(key, 0)) for key, status, error in runs}


def _norms(out: Path) -> list[str]:
    """The norm of each stored run, in `_store`'s order."""
    with sqlite3.connect(out / "results.sqlite") as conn:
        return [r[0] for r in conn.execute("SELECT norm FROM runs ORDER BY run_key")]


def _complete(state: dict) -> bool:
    return len(state) == RUNS and all(s == ("ok", None, 1) for s in state.values())


def _consistent(out: Path) -> dict:
    """Every stored ok run has its weights; nothing half-written."""
    state = _store(out)
    for key, (status, _, _) in state.items():
        if status == "ok":
            assert (out / "weights" / f"{key}.safetensors").exists()
    assert not list((out / "weights").glob("*.partial"))
    return state


@pytest.mark.parametrize(
    ("workers", "faults", "status"),
    [
        (2, "parent:TERM:1:*:once", 143),  # SIGTERM to the parent (SLURM preemption, timeout)
        (1, "self:INT:1:*:once", 130),  # Ctrl-C while the parent itself trains
        (2, "group:TERM:1:*:once", 143),  # SIGTERM to the whole process group
    ],
    ids=["sigterm-parent", "sigint-in-process", "sigterm-group"],
)
def test_a_signal_stops_the_invocation_cleanly(grid, tmp_path, workers, faults, status):
    out = tmp_path / "out"
    done, left = _compare(grid, out, workers, faults)
    assert done.returncode == status, _text(done)[-3000:]
    assert left == []
    assert "Rerun the same command to resume" in _text(done)
    assert "Traceback" not in done.stdout
    before = _consistent(out)
    assert 1 <= len(before) < RUNS
    if faults.startswith("parent:TERM"):  # resume: only what is missing, nothing lost
        again, left = _compare(grid, out, 1)
        assert again.returncode == 0, again.stdout[-3000:]
        after = _store(out)
        assert _complete(after) and left == []
        finished = {k for k, s in before.items() if s == ("ok", None, 1)}
        assert f"({RUNS - len(before)} trained," in _text(again)
        assert finished <= set(after)


def test_sigkill_to_the_parent_leaves_no_orphans(grid, tmp_path):
    out = tmp_path / "out"
    done, left = _compare(grid, out, 2, "parent:KILL:1:*:once")
    assert done.returncode == -signal.SIGKILL
    assert left == []  # the workers died with their parent
    assert 1 <= len(_consistent(out)) < RUNS


def test_dead_workers_cost_only_their_runs(grid, tmp_path):
    """SIGINT to a worker is ignored (Ctrl-C is the parent's); a worker killed by SIGTERM once
    (inside Lightning's fit) costs one retry; a run that SIGKILLs its worker every time is
    recorded failed after its retry; the other run finishes and the status says 1."""
    out = tmp_path / "out"
    faults = "self:INT:0:*:once,self:TERM:0:batch:once,self:KILL:0:group:always"
    done, left = _compare(grid, out, 2, faults, "--set", "train.seeds=1")
    text = _text(done)
    assert done.returncode == 1, text[-3000:]
    assert left == []
    state = _consistent(out)
    assert len(state) == 2
    for (status, error, evaluations), norm in zip(state.values(), _norms(out), strict=True):
        if norm == "batch":  # died by SIGTERM once, then finished in a fresh worker
            assert (status, error, evaluations) == ("ok", None, 1)
        else:
            assert (status, error) == ("failed", "worker died (signal 9, SIGKILL)")
    assert "worker died (signal 15, SIGTERM)" in text
    assert "retrying 2 run(s) whose worker died" in text
    assert "exit status 1: 1 run(s) failed" in text


def test_a_second_invocation_on_a_locked_dir_exits_at_once(compare, grid, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"")
    with OutDirLock(out):  # a live invocation holds the dir
        assert compare.main([str(grid), "--out", str(out), "--workers", "1"]) == 2
        printed = " ".join(capsys.readouterr().out.split())
        assert f"pid {os.getpid()}" in printed and "--wait" in printed
        # --fresh refuses too, and deletes nothing
        (out / "wandb").mkdir()
        assert compare.main([str(grid), "--out", str(out), "--fresh"]) == 2
        assert (out / "results.sqlite").exists() and (out / "wandb").exists()


def test_wait_queues_behind_the_holder_and_fresh_keeps_user_files(compare, grid, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "wandb").mkdir()  # the user's, not normzoo's
    (out / "notes.txt").write_text("mine")
    lock = OutDirLock(out).acquire()
    timer = threading.Timer(1.0, lock.release)
    timer.start()
    argv = [str(grid), "--out", str(out), "--workers", "1", "--set", "train.seeds=1"]
    try:
        assert compare.main([*argv, "--wait"]) == 0
    finally:
        timer.cancel()
        lock.release()
    assert (out / "weights").is_dir() and (out / LOCK_NAME).exists()
    assert compare.main([*argv, "--fresh", "--set", "eval.test_batch_sizes=[8]"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "wandb").is_dir()
    with sqlite3.connect(out / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 2
