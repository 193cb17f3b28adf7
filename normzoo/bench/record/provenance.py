"""Provenance: which code, libraries, machine and command produced a result.

One module answers it for every consumer: the store's run rows (`VERSION_COLUMNS`), W&B run
configs, checkpoint and weights metadata, the report and the README figures. The git SHA is the
one of the normzoo *checkout* this module was imported from (``-dirty`` with uncommitted tracked
changes), or ``not a checkout`` when normzoo is installed from a wheel, never the SHA of some
repository that merely contains site-packages.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

NOT_A_CHECKOUT = "not a checkout"


@functools.cache
def checkout_root() -> Path | None:
    """The root of the normzoo git checkout this package was imported from, else None."""
    root = Path(__file__).resolve().parents[3]  # normzoo/bench/record/provenance.py
    if (root / ".git").exists() and (root / "normzoo" / "__init__.py").is_file():
        return root
    return None


@functools.cache
def git_sha() -> str:
    """``git rev-parse HEAD`` of the normzoo checkout (``-dirty`` with uncommitted changes to
    tracked files), or ``not a checkout``."""
    root = checkout_root()
    if root is None:
        return NOT_A_CHECKOUT
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        sha = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return NOT_A_CHECKOUT
    return f"{sha}-dirty" if dirty else sha


@functools.cache
def code_versions() -> dict[str, str]:
    """The store's `VERSION_COLUMNS`: normzoo version and git SHA, torch, lightning, timm."""
    import lightning
    import timm
    import torch

    import normzoo

    return {
        "normzoo_version": normzoo.__version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "lightning_version": lightning.__version__,
        "timm_version": timm.__version__,
    }


@functools.cache
def versions() -> dict[str, str]:
    """`code_versions` plus Python and wandb: what W&B configs and reports show."""
    import wandb

    return {
        **code_versions(),
        "wandb_version": wandb.__version__,
        "python_version": platform.python_version(),
    }


def device_name() -> str:
    """Where this process computes: ``cpu`` or ``cuda:<visible index> (<GPU name>)``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    index = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[index] if visible else str(index)
    return f"cuda:{physical} ({torch.cuda.get_device_name(index)})"


@functools.cache
def machine() -> str:
    """The machine in words: usable cores, CPU model, memory and OS, e.g. ``2 cores (Intel(R)
    Xeon(R) ...), 24 GiB RAM, Linux 6.1``; the one description every report and README figure
    uses."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores ({cpu}){memory}, {platform.system()} {platform.release()}"


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, quoted so that it can be pasted into a shell."""
    args = sys.argv if argv is None else argv
    return shlex.join(args)


def benchmark_command(env: tuple[str, ...] = ("PYTHONPATH", "OMP_NUM_THREADS")) -> str:
    """A benchmark's command as a report prints it: the environment variables of ``env`` that
    are set (they change what is measured), ``python`` and the command line."""
    assigned = [f"{k}={shlex.quote(os.environ[k])}" for k in env if k in os.environ]
    return " ".join([*assigned, "python", command_line()])
