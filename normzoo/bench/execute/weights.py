"""A run's files: weights kept as safetensors (loading executes no code) and resumable checkpoints.

A weights file holds its run key in its metadata and the store records its sha256;
`verify_weights` checks both before a model is evaluated, so a damaged, truncated or foreign
file is never evaluated. A full disk (`no_space`) is not a failure of the run.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

WEIGHTS_DIR = "weights"


CHECKPOINTS_DIR = "checkpoints"  # of runs in training (normzoo.bench.execute.train.checkpoint)


def weights_path(out_dir: str | Path, run_key: str) -> Path:
    """Where a finished run's weights live (safetensors: loading executes no code)."""
    return Path(out_dir) / WEIGHTS_DIR / f"{run_key}.safetensors"


def checkpoint_path(out_dir: str | Path, run_key: str) -> Path:
    """Where a run in training keeps its latest resumable checkpoint."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"{run_key}.ckpt"


class WeightsError(ValueError):
    """A weights file that cannot be trusted: unreadable, truncated, damaged or another run's."""


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model, path: Path, run_key: str | None = None) -> str:
    """Write ``model``'s state dict atomically (a kill leaves the old file or none), with
    ``run_key`` in the safetensors metadata; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        save_file(state, str(partial), metadata={"run_key": run_key} if run_key else None)
        digest = file_sha256(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk keeps no half-written file
        raise
    return digest


def _running(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: alive as far as we can tell
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_orphaned_partials(out_dir: Path) -> list[Path]:
    """Delete the half-written files (``<name>.<pid>.partial``, see :func:`save_weights` and
    the checkpoint writers) of weights and checkpoints whose writer is no longer running: a
    worker killed by a signal mid-write leaves one behind. A live writer's (another
    invocation's) is kept. Returns what was deleted."""
    removed = []
    for directory in (WEIGHTS_DIR, CHECKPOINTS_DIR):
        for path in Path(out_dir, directory).glob("*.partial"):
            pid = path.suffixes[-2][1:] if len(path.suffixes) >= 2 else ""
            if pid.isdigit() and not _running(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def verify_weights(path: Path, run_key: str, sha256: str | None) -> None:
    """Raise `WeightsError` unless ``path`` is run ``run_key``'s intact weights file: its sha256
    equals the recorded one (when recorded) and its metadata names the run (when it has any:
    files of older normzoo versions carry none)."""
    try:
        digest = file_sha256(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # missing, truncated, not safetensors
        raise WeightsError(
            f"weights of run {run_key} ({path}) are unreadable ({type(error).__name__}: {error})"
        ) from None
    if sha256 is not None and digest != sha256:
        raise WeightsError(
            f"weights of run {run_key} ({path}) are damaged or replaced: sha256 {digest[:12]}..."
            f" differs from the recorded {sha256[:12]}..."
        )
    if "run_key" in metadata and metadata["run_key"] != run_key:
        raise WeightsError(
            f"weights file {path} holds run {metadata['run_key']}, not run {run_key}"
        )


def no_space(error: BaseException) -> bool:
    """True for a full disk (or quota) anywhere in ``error``'s chain."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False
