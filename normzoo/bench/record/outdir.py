"""The output dir: checked before any work, locked by one invocation, and `--fresh` that deletes
exactly what normzoo created there.

The lock is ``fcntl.flock`` on ``<out>/.normzoo.lock`` (released by the kernel when the holder
dies, however it dies); the file holds the holder's PID and command for the message a second
invocation prints. What normzoo creates in the dir is listed in ``<out>/.normzoo-created``:
top-level names, and single files inside the shared folders (``weights/<run key>.safetensors``),
so a user's ``weights/pretrained.pt`` next to them is never touched. Lock and manifest are
opened with ``O_NOFOLLOW`` and nothing is deleted through a symbolic link: the dir is
normzoo's alone to touch.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
from pathlib import Path

from normzoo.bench.record.store import STORE_NAME, check_store

LOCK_NAME = ".normzoo.lock"
CREATED_NAME = ".normzoo-created"
# Folders whose files normzoo claims one by one (a user may keep files of their own there):
# --fresh removes the claimed files, then the folder only if it is empty.
SHARED_DIRS = ("weights", "checkpoints")
# Entries an output dir needs as folders (a file of that name makes it unusable).
REQUIRED_DIRS = SHARED_DIRS
MIN_FREE_BYTES = 1 << 20  # below this nothing can be stored: refused before training


class OutDirError(ValueError):
    """The output dir cannot be used (not a dir, not writable, locked by another invocation)."""


class OutOfSpaceError(OutDirError):
    """The disk under the output dir is full; what is stored is kept."""


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def check_out_dir(out_dir: str | Path, store: bool = True) -> None:
    """Raise `OutDirError` (or `StoreError`, when ``store``) unless ``out_dir`` can hold results;
    creates and modifies nothing. Refused: a file, a symbolic link that leads nowhere (dangling
    or a loop), a file where a folder must be (``weights``), an unwritable or full disk."""
    out_dir = Path(out_dir)
    if os.path.islink(out_dir) and not os.path.isdir(out_dir):
        raise OutDirError(
            f"--out {out_dir} is a symbolic link that leads nowhere (dangling, or a loop);"
            " remove the link or choose another --out"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutDirError(f"--out {out_dir} is a file, not a directory; choose another --out")
    existing = out_dir
    while not os.path.lexists(existing):  # the dir will be created: its first existing ancestor
        existing = existing.parent
    if not existing.is_dir():
        raise OutDirError(f"--out {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutDirError(f"--out {out_dir}: {existing} is not writable; choose another --out")
    for name in (LOCK_NAME, CREATED_NAME):
        if (out_dir / name).is_symlink():
            raise OutDirError(
                f"--out {out_dir}: '{name}' is a symbolic link; normzoo writes only its own files"
                " in the output dir: remove the link"
            )
    for name in REQUIRED_DIRS:
        entry = out_dir / name
        if os.path.lexists(entry) and (entry.is_symlink() or not entry.is_dir()):
            raise OutDirError(
                f"--out {out_dir}: '{name}' must be a folder normzoo can write into, but it is"
                f" {'a symbolic link' if entry.is_symlink() else 'a file'}; move it away or"
                " choose another --out"
            )
    if _free_bytes(existing) < MIN_FREE_BYTES:
        raise OutOfSpaceError(
            f"--out {out_dir}: no space left on the device of {existing}; free some space or"
            " choose another --out"
        )
    if store:
        check_store(out_dir / STORE_NAME)


def _open_nofollow(path: Path, flags: int) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (OutDirError)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutDirError(
                f"{path} is a symbolic link; normzoo writes only its own files in the output"
                " dir: remove the link"
            ) from None
        raise


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
            fd = _open_nofollow(self.path, os.O_RDONLY)
        except (OSError, OutDirError):
            return "unknown"
        with os.fdopen(fd) as f:
            return f.read().strip() or "unknown"

    def acquire(self) -> OutDirLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        file = os.fdopen(_open_nofollow(self.path, os.O_RDWR | os.O_CREAT), "r+")
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


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
        return False
    return len(parts) == 1 or (len(parts) == 2 and parts[0] in SHARED_DIRS)


def created(out_dir: str | Path) -> set[str]:
    """What normzoo created in ``out_dir`` (from its manifest): top-level names and files inside
    `SHARED_DIRS` (``weights/<run key>.safetensors``)."""
    try:
        fd = _open_nofollow(Path(out_dir) / CREATED_NAME, os.O_RDONLY)
    except (OSError, OutDirError):
        return set()
    with os.fdopen(fd) as f:
        lines = f.read().splitlines()
    return {line for line in lines if _safe_name(line)}


def claim(out_dir: str | Path, names) -> None:
    """Add ``names`` (entries of ``out_dir`` that normzoo created: top-level names, or files
    inside `SHARED_DIRS` as ``weights/<name>``) to the manifest."""
    out_dir = Path(out_dir)
    new = sorted(set(names) - created(out_dir) - {LOCK_NAME, CREATED_NAME})
    new = [name for name in new if _safe_name(name)]
    if new:
        fd = _open_nofollow(out_dir / CREATED_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a") as f:
            f.write("".join(f"{name}\n" for name in new))


def listing(out_dir: str | Path) -> set[str]:
    """Top-level names in ``out_dir`` now (to claim what a step creates: after - before)."""
    try:
        return {p.name for p in Path(out_dir).iterdir()}
    except OSError:
        return set()


def _remove(path: Path, shared: bool) -> bool:
    """Remove one claimed entry without following links; a shared folder only when empty."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if not path.is_dir():
        return False
    if shared:
        try:
            path.rmdir()  # a user's own files inside keep it
        except OSError:
            return False
        return True
    shutil.rmtree(path)
    return True


def fresh(out_dir: str | Path) -> list[str]:
    """Delete exactly what the manifest lists in ``out_dir`` (hold its lock); returns the names
    deleted. A user's files (``weights/pretrained.pt``, a ``wandb/`` normzoo did not create,
    notes, data) are kept; nothing is deleted through a symbolic link."""
    out_dir = Path(out_dir)
    names = created(out_dir) - {LOCK_NAME}
    deleted = []
    # files inside shared folders first, so that the folders can then go when empty
    for name in sorted(names, key=lambda n: (-n.count("/"), n)):
        parent = out_dir / name.split("/")[0]
        if "/" in name and (parent.is_symlink() or not parent.is_dir()):
            continue  # never through a link
        if _remove(out_dir / name, shared=name in SHARED_DIRS):
            deleted.append(name)
    (out_dir / CREATED_NAME).unlink(missing_ok=True)
    return deleted
