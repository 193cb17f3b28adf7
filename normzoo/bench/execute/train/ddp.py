"""One run on several processes: Lightning DDP with zoo batch layers synced (``ZooLayerSync``).

``execution.ddp_devices: N`` trains each run with ``Trainer(strategy="ddp", devices=N)`` (gloo on
CPU, NCCL on GPUs). The global batch stays the run's ``train_batch_size``: every process loads
the same batch and trains on its contiguous 1/N slice, batch layers normalize with the
statistics of the whole batch (:class:`normzoo.distributed.ZooLayerSync`), and DDP averages the
gradients, so one optimizer step equals the single-process step on the whole batch and the run
key stays the same. Validation runs on every process (same numbers); only rank 0 logs and
returns the result, so the store gets one row per run.

Processes are created like ``torchrun`` does (rank 0 is the calling process, the others are
subprocesses; MASTER_ADDR/PORT, WORLD_SIZE, RANK, LOCAL_RANK in the environment), so Lightning does
not re-execute the command line. On a SLURM node the same code runs in each process.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch

from normzoo._environ import scoped_environ

TIMEOUT_S = 300  # how long a rank waits for the others (rendezvous, each collective)
_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "RANK", "LOCAL_RANK")


def inside() -> bool:
    """Whether this process is already one rank of a DDP run (started by us or torchrun)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def trainer_options(devices: int) -> dict:
    """Trainer arguments for a DDP run over ``devices`` processes ({} for one process)."""
    if devices <= 1:
        return {}
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    from normzoo.distributed import ZooLayerSync

    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return {
        # DDP, gloo on CPU and NCCL on GPUs; a rank that dies fails the others after the timeout
        "strategy": DDPStrategy(timeout=timedelta(seconds=TIMEOUT_S)),
        "devices": devices,
        "accelerator": accelerator,
        # the ranks are ours (launch), also inside a SLURM job whose variables say 1 task
        "plugins": [ZooLayerSync(), LightningEnvironment()],
        "use_distributed_sampler": False,  # every rank loads the global batch, then shards it
    }


def shard(batch, rank: int, world_size: int):
    """Rank ``rank``'s contiguous slice of every tensor of ``batch`` (first dim = samples)."""
    if isinstance(batch, torch.Tensor):
        if len(batch) % world_size:
            raise ValueError(
                f"a batch of {len(batch)} cannot be split over {world_size} DDP processes; use "
                f"train batch sizes divisible by execution.ddp_devices={world_size}"
            )
        size = len(batch) // world_size
        return batch[rank * size : (rank + 1) * size]
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(b, rank, world_size) for b in batch)
    return batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(function: Callable, devices: int, *args, **rank0_kwargs):
    """Run ``function(*args)`` on ``devices`` processes; returns rank 0's (this process's) value.

    ``function`` (importable by name) must build its Trainer with :func:`trainer_options`. Only
    rank 0, this process, also gets ``rank0_kwargs`` (e.g. the loggers), so only rank 0 logs.
    The other ranks are plain subprocesses (a pool worker may not have multiprocessing
    children) that die with this process.
    """
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(devices),
        "NODE_RANK": "0",
    }
    with tempfile.TemporaryDirectory(prefix="normzoo-ddp-") as tmp:
        spec = Path(tmp) / "rank.pkl"
        spec.write_bytes(pickle.dumps((function, args)))
        child_env = {
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "NORMZOO_DDP_PARENT": str(os.getpid()),
        }
        others = [
            subprocess.Popen(
                [sys.executable, "-m", "normzoo.bench.execute.train.ddp", str(spec)],
                env={**child_env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            )
            for rank in range(1, devices)
        ]
        try:
            with scoped_environ({**env, "RANK": "0", "LOCAL_RANK": "0"}, restore=_ENV):
                result = function(*args, **rank0_kwargs)
        finally:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for process in others:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    failed = [p.returncode for p in others if p.returncode != 0]
    if failed:
        raise RuntimeError(f"DDP rank process(es) exited with {failed}; see their output above")
    return result


def _rank_main(spec: str) -> None:
    """A rank > 0: run the pickled function with RANK/LOCAL_RANK from the environment."""
    from normzoo.bench.execute.pool import die_with_parent

    die_with_parent(int(os.environ["NORMZOO_DDP_PARENT"]))
    torch.set_num_threads(1)
    function, args = pickle.loads(Path(spec).read_bytes())  # written by launch, just now
    function(*args)


if __name__ == "__main__":
    _rank_main(sys.argv[1])
