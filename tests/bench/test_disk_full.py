"""Out of space (issue 28.4): a full disk during a run gives one line and a non-zero exit with
finished work kept, and the rerun after space returns resumes. Tested through an injected
``OSError(ENOSPC)`` / SQLite's "database or disk is full", and on a real tmpfs when root."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest
import yaml

import normzoo.bench.execute.worker as worker
from normzoo.bench.record.store import Store
from tests.bench.test_eval_keys import GRID

TWO = {**GRID, "train": {**GRID["train"], "seeds": 2}}
TWO["eval"] = {**GRID["eval"], "stats_modes": ["running"], "shifts": ["clean"]}
TWO["eval"]["compositions"] = ["iid"]


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(TWO))
    return path


def _statuses(out) -> dict:
    with Store(out, read_only=True) as store:
        return store.statuses()


def _full_then_resume(compare, capsys, grid, out, monkeypatch, inject) -> None:
    """Run with ``inject`` active: exit non-zero with one 'no space' line, the first run kept;
    without it: the rerun trains only the missing run and exits 0."""
    trained = []
    real_save = worker.save_weights

    def counting_save(model, path, run_key=None):
        trained.append(run_key)
        return real_save(model, path, run_key)

    monkeypatch.setattr(worker, "save_weights", counting_save)
    with inject():
        status = compare.main([str(grid), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status != 0 and "Traceback" not in printed
    assert printed.count("no space left") == 1, printed
    statuses = _statuses(out)
    assert list(statuses.values()) == ["ok"]  # the finished run kept, nothing recorded failed
    trained.clear()
    assert compare.main([str(grid), "--out", str(out)]) == 0
    assert len(trained) == 1 and trained[0] not in statuses  # only the missing run trained
    assert set(_statuses(out).values()) == {"ok"} and len(_statuses(out)) == 2


def test_enospc_saving_weights_stops_the_grid_and_the_rerun_resumes(
    compare, capsys, grid, tmp_path, monkeypatch
):
    import contextlib

    @contextlib.contextmanager
    def inject():
        real = worker.save_weights
        calls = []

        def full(model, path, run_key=None):
            calls.append(run_key)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(model, path, run_key)

        worker.save_weights = full
        try:
            yield
        finally:
            worker.save_weights = real

    _full_then_resume(compare, capsys, grid, tmp_path / "out", monkeypatch, inject)


def test_a_full_store_stops_the_grid_and_the_rerun_resumes(
    compare, capsys, grid, tmp_path, monkeypatch
):
    import contextlib

    @contextlib.contextmanager
    def inject():
        real = Store.write_run
        calls = []

        def full(self, row, *args, **kwargs):
            calls.append(row["run_key"])
            if len(calls) == 2:
                raise sqlite3.OperationalError("database or disk is full")
            return real(self, row, *args, **kwargs)

        Store.write_run = full
        try:
            yield
        finally:
            Store.write_run = real

    _full_then_resume(compare, capsys, grid, tmp_path / "out", monkeypatch, inject)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs_during_a_run(compare, capsys, grid, tmp_path, monkeypatch):
    import contextlib

    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=8m tmpfs '{mount}' 2>/dev/null") != 0:
        pytest.skip("tmpfs cannot be mounted here")
    filler = mount / "filler"

    @contextlib.contextmanager
    def inject():
        real = worker.save_weights

        calls = []

        def fill_before_second(model, path, run_key=None):
            calls.append(run_key)
            if len(calls) == 2:  # the disk fills up while the grid runs: the real save fails
                with open(filler, "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            return real(model, path, run_key)

        worker.save_weights = fill_before_second
        try:
            yield
        finally:
            worker.save_weights = real
            filler.unlink(missing_ok=True)  # space returns

    try:
        _full_then_resume(compare, capsys, grid, mount / "out", monkeypatch, inject)
    finally:
        os.system(f"umount '{mount}'")
