"""Half-written weights and checkpoints of a writer killed mid-write are removed; a live
writer's are kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from normzoo.bench.execute.weights import (
    CHECKPOINTS_DIR,
    WEIGHTS_DIR,
    remove_orphaned_partials,
)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


def test_partials_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)  # exited and reaped
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while _state(zombie.pid) != "Z":  # exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    files = {
        "dead weights": tmp_path / WEIGHTS_DIR / f"abc.{dead_pid}.partial",
        "zombie checkpoint": tmp_path / CHECKPOINTS_DIR / f"abc.{zombie.pid}.partial",
        "live weights": tmp_path / WEIGHTS_DIR / f"def.{os.getpid()}.partial",
        "finished weights": tmp_path / WEIGHTS_DIR / "abc.safetensors",
        "not ours": tmp_path / WEIGHTS_DIR / "notes.partial",
    }
    for path in files.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    removed = remove_orphaned_partials(tmp_path)
    zombie.wait()
    assert sorted(removed) == sorted([files["dead weights"], files["zombie checkpoint"]])
    assert {name for name, path in files.items() if path.exists()} == {
        "live weights",
        "finished weights",
        "not ours",
    }
    assert remove_orphaned_partials(tmp_path / "missing") == []
