"""Fault injection for tests/bench/test_faults.py (imported at start-up when on PYTHONPATH).

``NORMZOO_FAULTS`` is a comma-separated list of ``target:SIGNAL:after:norm:repeat``: during a
training step of a run of ``norm`` (``*``: any), once at least ``after`` runs are in the store,
send SIGNAL to ``target`` (``self``: the process training, ``parent``: its parent, ``group``:
its process group). ``repeat`` is ``once`` (a marker file in ``NORMZOO_FAULTS_DIR``) or
``always``. Nothing happens without ``NORMZOO_FAULTS``.
"""

import os

_SPECS = os.environ.get("NORMZOO_FAULTS")

if _SPECS:
    import signal
    import sqlite3
    from pathlib import Path

    import normzoo.bench.execute.train.module as _module
    import normzoo.bench.execute.worker as _worker

    _DIR = Path(os.environ["NORMZOO_FAULTS_DIR"])
    _OUT = Path(os.environ["NORMZOO_FAULTS_OUT"])
    _current = {"norm": None}
    _execute = _worker.execute_task
    _step = _module.Classifier.train_batch

    def _stored_runs() -> int:
        try:
            uri = f"{(_OUT / 'results.sqlite').resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True)
            try:
                return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            return 0

    def _fire(index: int, target: str, name: str, repeat: str) -> None:
        if repeat == "once":
            try:
                os.close(os.open(_DIR / f"fired-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        signum = getattr(signal, f"SIG{name}")
        if target == "self":
            os.kill(os.getpid(), signum)
        elif target == "parent":
            os.kill(os.getppid(), signum)
        else:
            os.killpg(os.getpgid(0), signum)

    def execute_task(task, *args, **kwargs):
        _current["norm"] = task.run.norm.name
        yield from _execute(task, *args, **kwargs)

    def train_batch(self, batch, batch_idx):
        for index, spec in enumerate(_SPECS.split(",")):
            target, name, after, norm, repeat = spec.strip().split(":")
            if norm in ("*", _current["norm"]) and _stored_runs() >= int(after):
                _fire(index, target, name, repeat)
        return _step(self, batch, batch_idx)

    _worker.execute_task = execute_task
    _module.Classifier.train_batch = train_batch
