"""The output dir: checked before any work, locked by one invocation, and `--fresh` that deletes
only what normzoo created there.

The lock is ``fcntl.flock`` on ``<out>/.normzoo.lock`` (released by the kernel when the holder
dies, however it dies); the file holds the holder's PID and command for the message a second
invocation prints. What normzoo creates in the dir is listed in ``<out>/.normzoo-created``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

from normzoo.bench.record.store import STORE_NAME, check_store

LOCK_NAME = ".normzoo.lock"
CREATED_NAME = ".normzoo-created"
# What normzoo writes in every output dir; deleted by --fresh even without a manifest.
KNOWN_FILES = (
    STORE_NAME,
    f"{STORE_NAME}-wal",
    f"{STORE_NAME}-shm",
    f"{STORE_NAME}-journal",
    "runs.csv",
    "evaluations.csv",
    "weights",
    "checkpoints",
)


class OutDirError(ValueError):
    """The output dir cannot be used (not a dir, not writable, locked by another invocation)."""


def check_out_dir(out_dir: str | Path, store: bool = True) -> None:
    """Raise `OutDirError` (or `StoreError`, when ``store``) unless ``out_dir`` can hold results;
    creates and modifies nothing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"--out {out_dir} is a file, not a directory; choose another --out")
    existing = out_dir
    while not existing.exists():  # the dir will be created: its first existing ancestor counts
        existing = existing.parent
    if not existing.is_dir():
        raise OutDirError(f"--out {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutDirError(f"--out {out_dir}: {existing} is not writable; choose another --out")
    if store:
        check_store(out_dir / STORE_NAME)


class OutDirLock:
    """Exclusive lock of one output dir for one invocation (a context manager).

    ``wait=False`` raises `OutDirError` naming the holder when another invocation holds it.
    """

    def __init__(self, out_dir: str | Path, wait: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.wait = wait
        self._file = None

    def holder(self) -> str:
        """What the lock file says about its holder ('pid N: command')."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> OutDirLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+")
        try:
            flags = fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB
            fcntl.flock(file, flags)
        except BlockingIOError:
            file.close()
            raise OutDirError(
                f"{self.out_dir} is in use by another normzoo invocation ({self.holder()});"
                " wait for it to finish, stop it, pass --wait to queue behind it, or choose"
                " another --out"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def created(out_dir: str | Path) -> set[str]:
    """Top-level names in ``out_dir`` that normzoo created (from its manifest)."""
    try:
        lines = (Path(out_dir) / CREATED_NAME).read_text().splitlines()
    except OSError:
        return set()
    return {line for line in lines if line and "/" not in line and line not in (".", "..")}


def claim(out_dir: str | Path, names) -> None:
    """Add ``names`` (top-level entries of ``out_dir`` that normzoo created) to the manifest."""
    out_dir = Path(out_dir)
    new = sorted(set(names) - created(out_dir) - {LOCK_NAME, CREATED_NAME})
    if new:
        with (out_dir / CREATED_NAME).open("a") as f:
            f.write("".join(f"{name}\n" for name in new))


def listing(out_dir: str | Path) -> set[str]:
    """Top-level names in ``out_dir`` now (to claim what a step creates: after - before)."""
    try:
        return {p.name for p in Path(out_dir).iterdir()}
    except OSError:
        return set()


def fresh(out_dir: str | Path) -> list[str]:
    """Delete what normzoo created in ``out_dir`` (hold its lock); returns the names deleted.

    A user's files (a ``wandb/`` normzoo did not create, notes, data) are kept.
    """
    out_dir = Path(out_dir)
    names = (created(out_dir) | set(KNOWN_FILES)) - {LOCK_NAME}
    deleted = []
    for name in sorted(names):
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(name)
    (out_dir / CREATED_NAME).unlink(missing_ok=True)
    return deleted
