"""A small process pool that survives its workers: one dead worker costs only its own task.

``concurrent.futures.ProcessPoolExecutor`` breaks as a whole when one worker dies. Here each
worker is a spawned process with its own pipe: the parent sends a task, the worker streams the
task's messages back (``execute(task)`` is a generator) and then `TaskDone`. A worker that dies
(killed, out of memory, a crash in C) is reported as `WorkerDied` for its task and replaced.

Workers never outlive the parent, whatever kills it: ``PR_SET_PDEATHSIG`` (Linux) plus a thread
that watches the parent's PID. They ignore SIGINT (Ctrl-C reaches the whole foreground process
group; the parent alone decides what stops) and die by SIGTERM even inside Lightning, whose own
SIGTERM handler would otherwise end the process with status 0.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TaskDone:
    """Sent by a worker after the last message of a task."""

    task: object


@dataclass(frozen=True)
class WorkerDied:
    """The worker running ``task`` ended without finishing it (``exitcode`` < 0: -signal)."""

    task: object
    exitcode: int | None

    @property
    def reason(self) -> str:
        if self.exitcode is not None and self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = "unknown"
            return f"worker died (signal {-self.exitcode}, {name})"
        return f"worker died (exit status {self.exitcode})"


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when ``parent_pid`` does (however the parent dies)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog thread below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _die_by_sigterm(signum, frame) -> None:
    # Composed after Lightning's notifier: the worker ends by the signal itself, so the parent
    # sees "killed by SIGTERM" instead of Lightning's SystemExit(0).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(conn, parent_pid: int, setup, setup_args: tuple, execute, execute_args: tuple):
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _die_by_sigterm)
    if setup is not None:
        setup(*setup_args)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent closed the pipe: no more work
            return
        if task is None:
            return
        for message in execute(task, *execute_args):
            conn.send(message)
        conn.send(TaskDone(task))


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object
    task: object = None


def pool_results(
    tasks: Iterable,
    execute: Callable[..., Iterator],
    execute_args: tuple = (),
    slots: list = (None,),
    setup: Callable | None = None,
) -> Iterator:
    """Run ``execute(task, *execute_args)`` (a generator) for every task in spawned workers.

    Yields every message the tasks produce, `TaskDone` after each task, and `WorkerDied` for a
    task whose worker died (its slot gets a fresh worker; the task is not retried here). One
    worker per entry of ``slots``; worker i first calls ``setup(slots[i])``. Closing the
    generator (or an exception in the consumer, e.g. an interrupt) terminates every worker.
    """
    context = multiprocessing.get_context("spawn")
    queue = deque(tasks)
    workers: dict[int, _Worker] = {}

    def start(slot: int) -> _Worker:
        parent_conn, child_conn = context.Pipe()
        args = (child_conn, os.getpid(), setup, (slots[slot],), execute, execute_args)
        process = context.Process(target=_worker_main, args=args, daemon=True)
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def assign(slot: int) -> None:
        worker = workers[slot]
        if queue:
            worker.task = queue.popleft()
            worker.conn.send(worker.task)
        else:
            worker.task = None
            _stop(worker)
            del workers[slot]

    try:
        for slot in range(min(len(slots), len(queue))):
            workers[slot] = start(slot)
            assign(slot)
        while workers:
            waitables = {}
            for slot, worker in workers.items():
                waitables[worker.conn] = slot
                waitables[worker.process.sentinel] = slot
            ready = wait(list(waitables))
            for slot in sorted({waitables[r] for r in ready}):
                worker = workers[slot]
                messages, dead = _drain(worker)
                for message in messages:
                    if isinstance(message, TaskDone):
                        yield message
                        assign(slot)
                    else:
                        yield message
                if dead and slot in workers:
                    worker.process.join()
                    died = WorkerDied(worker.task, worker.process.exitcode)
                    worker.conn.close()
                    del workers[slot]
                    if worker.task is not None:
                        yield died
                    if queue:
                        workers[slot] = start(slot)
                        assign(slot)
    finally:
        for worker in workers.values():
            _stop(worker, kill=True)


def _drain(worker: _Worker) -> tuple[list, bool]:
    """Every message the worker has sent so far, and whether it is dead."""
    messages = []
    try:
        while worker.conn.poll():
            messages.append(worker.conn.recv())
    except (EOFError, OSError):  # died mid-message: the partial message is dropped
        return messages, True
    return messages, not worker.process.is_alive()


def _stop(worker: _Worker, kill: bool = False) -> None:
    """End a worker: politely when idle, by SIGTERM then SIGKILL when ``kill``."""
    try:
        if not kill:
            worker.conn.send(None)
    except OSError:
        pass
    if kill and worker.process.is_alive():
        worker.process.terminate()
    worker.process.join(timeout=5)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
    worker.conn.close()
