"""The command line a benchmark report prints: pasteable, with the environment that shaped it."""

import shlex
import sys

from normzoo.bench.record.provenance import benchmark_command, command_line


def test_benchmark_command_names_the_set_environment_then_python_and_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/throughput.py", "--steps", "100", "a b"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    command = benchmark_command()
    assert command == "OMP_NUM_THREADS=1 python benchmarks/throughput.py --steps 100 'a b'"
    assert shlex.split(command)[2:] == sys.argv  # pasteable: the quoting round-trips
    monkeypatch.setenv("PYTHONPATH", "x y")
    assert benchmark_command().startswith("PYTHONPATH='x y' OMP_NUM_THREADS=1 python ")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("PYTHONPATH")
    assert benchmark_command() == "python " + command_line()
