"""The grid on a cluster through submitit (``execution.executor: submitit``; SLURM or local).

The same interface as the local executor (`normzoo.bench.execute.worker`): tasks in, messages
(`Trained`, `Evaluated`, `Finished`, `TaskDone`, `WorkerDied`) out, and only the submitting
process writes the store. What makes every result reach the store exactly once:

- Each job (one task, or a chunk of ``runs_per_job`` tasks) writes each finished task's messages
  to ``<out>/submitit/results/<run_key>.pkl`` (atomic rename) before it moves on; weights go to
  ``<out>/weights/`` as with local workers. The parent yields messages only from these files and
  moves a file to ``collected/`` once the store holds them; the store's writes replace by key,
  so collecting a file twice (a parent killed in between, racing invocations) still leaves one
  row per run and per evaluation. A file whose task differs from the one planned now (e.g.
  ``--retry-failed``) is stale and ignored.
- Every submission is appended to ``<out>/submitit/jobs.jsonl`` (run keys -> job id). A rerun of
  the same command first collects result files left by jobs that finished after the submitting
  process died, then waits on the jobs of that file that still run, and submits only the rest.
- Preemption and time-outs: the job is :class:`submitit.helpers.Checkpointable`, so on SLURM's
  USR2 signal submitit requeues it; the requeued job skips tasks whose result file exists, and
  the run that was training continues from its last epoch checkpoint
  (`normzoo.bench.execute.train.checkpoint`).
- A run that raises is recorded ``failed`` with its error (by `execute_task`). A job that ends
  without a result (killed, out of memory, node failure) is reported as `WorkerDied` with the
  job's state and the end of its log: `run_grid` records it failed and retries it once.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import submitit

from normzoo.bench.execute.messages import Task
from normzoo.bench.execute.pool import TaskDone, WorkerDied
from normzoo.bench.execute.worker import execute_task
from normzoo.bench.plan.config import Config
from normzoo.bench.plan.schema import SUBMITIT_OPTIONS

log = logging.getLogger(__name__)
POLL_SECONDS = 5.0  # how often the parent looks for finished jobs


def make_executor(folder: Path, options: dict) -> submitit.Executor:
    """A submitit executor for ``options`` (keys: `schema.SUBMITIT_OPTIONS`); one task per job."""
    cluster = options.get("cluster", "auto")
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "auto" else cluster)
    parameters = {"name": "normzoo", "tasks_per_node": 1, "nodes": 1, "timeout_min": 60}
    for key, value in options.items():
        target = SUBMITIT_OPTIONS.get(key)
        if target is None:
            continue
        if target.startswith("slurm_") and executor.cluster != "slurm":
            continue  # SLURM-only options do nothing on the local executor
        parameters[target] = value
    executor.update_parameters(**parameters)
    return executor


class GridJob(submitit.helpers.Checkpointable):
    """One submitit job: run ``tasks`` in turn, one result file per task.

    Requeued after preemption or a time-out with the same arguments (``Checkpointable``); tasks
    whose result file exists are not repeated.
    """

    def __init__(
        self,
        tasks: list[Task],
        config: Config,
        out_dir: str,
        tracker=None,
        execute: Callable[..., Iterator] = execute_task,
    ) -> None:
        self.tasks = tasks
        self.config = config
        self.out_dir = str(out_dir)
        self.tracker = tracker
        self.execute = execute

    def __call__(self) -> list[str]:
        import torch

        torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        results = Path(self.out_dir) / "submitit" / "results"
        for task in self.tasks:
            path = result_path(results, task.run.key)
            if _read(path, task) is not None:
                continue
            messages = [*self.execute(task, self.config, self.out_dir, self.tracker)]
            write_result(path, task, [*messages, TaskDone(task)])
        return [task.run.key for task in self.tasks]


@dataclass(frozen=True)
class JobDied(WorkerDied):
    """A submitit job ended without writing its result (killed, out of memory, node failure)."""

    job_id: str = ""
    state: str = ""
    log_tail: str = ""

    @property
    def reason(self) -> str:
        message = f"submitit job {self.job_id} ended without a result (state {self.state})"
        return f"{message}: {self.log_tail}" if self.log_tail else message


def result_path(results_dir: Path, run_key: str) -> Path:
    return Path(results_dir) / f"{run_key}.pkl"


def write_result(path: Path, task: Task, messages: list) -> None:
    """Write a task's messages atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps({"task": task, "messages": messages}))
    os.replace(tmp, path)


def _read(path: Path, task: Task) -> list | None:
    """The messages of ``task`` in ``path``; None when missing or written for another task."""
    try:
        payload = pickle.loads(path.read_bytes())  # written by this package's own jobs
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    return payload["messages"] if payload["task"] == task else None


class _Journal:
    """``jobs.jsonl``: one line per submitted job (its run keys, job id, executor)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip().endswith("}")]

    def append(self, job_id: str, cluster: str, run_keys: list[str]) -> None:
        line = json.dumps({"job_id": job_id, "cluster": cluster, "run_keys": run_keys})
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def _job_finished(job: submitit.Job) -> bool:
    """Whether a job (possibly from an earlier, dead process) has ended."""
    if isinstance(job, submitit.LocalJob) and job._process is None:
        return not _local_job_alive(job.job_id)
    try:
        return job.done(force_check=True)
    except Exception:  # scheduler unreachable: ask again at the next poll
        return False


def _local_job_alive(job_id: str) -> bool:
    """A local job's id is its controller's pid; alive while that process runs submitit."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline


def _died(task: Task, job: submitit.Job) -> JobDied:
    tail = ""
    try:
        tail = " | ".join(job.paths.stderr.read_text().strip().splitlines()[-3:])
    except OSError:
        pass
    return JobDied(task, None, job_id=str(job.job_id), state=str(job.state), log_tail=tail)


def submitit_results(tasks: list[Task], config: Config, out_dir: str, tracker=None) -> Iterator:
    """Run ``tasks`` as submitit jobs and yield their messages once a job has written them.

    Move-after-yield: a result file leaves ``results/`` only after the caller has stored its
    messages, so a parent killed at any point loses nothing; the next invocation collects or
    resubmits what is missing.
    """
    execute = execute_task  # looked up at call time (tests replace it)
    options = dict(config.execution.submitit)
    folder = Path(out_dir) / "submitit"
    results_dir = folder / "results"
    collected_dir = folder / "collected"  # results already stored, kept for racing invocations
    results_dir.mkdir(parents=True, exist_ok=True)
    collected_dir.mkdir(parents=True, exist_ok=True)
    journal = _Journal(folder / "jobs.jsonl")
    executor = make_executor(folder / "jobs", options)
    chunk = options.get("runs_per_job", 1)
    by_key = {task.run.key: task for task in tasks}
    pending: dict[str, submitit.Job | None] = dict.fromkeys(by_key)  # run key -> its job
    submitted: list[submitit.Job] = []  # the jobs of this invocation

    def collect(key: str, ended: bool = False) -> list | None:
        messages = _read(result_path(results_dir, key), by_key[key])
        if messages is None and ended:  # a racing invocation may have collected it already
            messages = _read(result_path(collected_dir, key), by_key[key])
        return messages

    def submit(keys: list[str]) -> None:
        groups = [keys[i : i + chunk] for i in range(0, len(keys), chunk)]
        functions = [
            GridJob([by_key[k] for k in group], config, out_dir, tracker, execute)
            for group in groups
        ]
        with executor.batch():  # one SLURM array; array_parallelism caps it
            jobs = [executor.submit(function) for function in functions]
        for group, job in zip(groups, jobs, strict=True):
            journal.append(job.job_id, executor.cluster, group)
            submitted.append(job)
            for key in group:
                pending[key] = job
        log.info("submitted %d task(s) as %d %s job(s)", len(keys), len(jobs), executor.cluster)

    # jobs of earlier invocations that still run (their submitter may have died): wait on them
    for entry in journal.entries():
        job_class = submitit.LocalJob if entry["cluster"] == "local" else submitit.SlurmJob
        for key in entry["run_keys"]:
            if key in pending and entry["cluster"] == executor.cluster:
                pending[key] = job_class(folder / "jobs", entry["job_id"])
    fresh = [
        key
        for key, job in pending.items()
        if collect(key) is None and (job is None or _job_finished(job))
    ]
    waiting = len(pending) - len(fresh)
    if waiting:
        log.info("collecting %d task(s) of jobs submitted earlier", waiting)
    if fresh:
        submit(fresh)
    while pending:
        progressed = False
        for key in list(pending):
            messages = collect(key)
            job = pending[key]
            if messages is None and _job_finished(job):
                messages = collect(key, ended=True)  # written just before the job ended?
                if messages is None:
                    messages = [_died(by_key[key], job)]
            if messages is None:
                continue
            del pending[key]
            progressed = True
            yield from messages  # the caller stores each before the generator resumes
            _file_collected(results_dir, collected_dir, key)
        if pending and not progressed:
            time.sleep(POLL_SECONDS)
    # Racing invocations each submit a job for a run that neither has a result for yet; the
    # one that collects a result first stores it, the other may find it among the collected.
    # Its own job then still trains and writes a result nobody collects: wait for the jobs of
    # this invocation to end and file what they wrote as collected (already stored).
    for job in submitted:
        while not _job_finished(job):
            time.sleep(POLL_SECONDS)
    for key in by_key:
        _file_collected(results_dir, collected_dir, key)


def _file_collected(results_dir: Path, collected_dir: Path, key: str) -> None:
    """Move a stored run's result file to ``collected/`` (a racing invocation may move it
    first)."""
    try:
        os.replace(result_path(results_dir, key), result_path(collected_dir, key))
    except FileNotFoundError:
        pass
