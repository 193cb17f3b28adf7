"""Where workers run: visible GPUs, the default number of workers, one GPU per worker
(round-robin) and each worker's threads.
"""

from __future__ import annotations

import logging
import os

import torch


def gpu_count() -> int:
    """Visible CUDA devices (0 without CUDA); does not initialize CUDA in this process."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(gpus: int | None = None, workers_per_gpu: int = 1) -> int:
    """``workers_per_gpu`` per visible GPU on a GPU machine, else one worker per CPU core."""
    gpus = gpu_count() if gpus is None else gpus
    if gpus:
        return gpus * workers_per_gpu
    return os.cpu_count() or 1


def assign_devices(workers: int, gpus: int, visible: str | None = None) -> list[str | None]:
    """The GPU of each worker, round-robin over the visible ones (None: CPU).

    ``visible`` is the parent's ``CUDA_VISIBLE_DEVICES``; a worker's value is one of its entries,
    so worker i sees exactly one GPU as ``cuda:0``.
    """
    if gpus <= 0:
        return [None] * workers
    ids = (
        [v.strip() for v in visible.split(",")][:gpus] if visible else [str(i) for i in range(gpus)]
    )
    return [ids[i % len(ids)] for i in range(workers)]


def setup_worker(slot: tuple[str | None, int]) -> None:
    """Per-worker set-up from its slot ``(gpu, threads)``: its one GPU (set before CUDA starts),
    its torch threads, quiet logging."""
    gpu, threads = slot
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
