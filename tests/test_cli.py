"""The ``normzoo`` command: subcommands and their doors, W&B modes, one console, identity."""

import importlib.util
import os
import pty
import re
import select
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import normzoo
from normzoo import cli
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.record.wandb_layout import setting

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "experiment": {"name": "tiny"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 192, "test_size": 64, "image_size": 8},
    },
    "norms": ["batch", {"name": "group", "options": {"groups": 4}}],
    "train": {"batch_sizes": [16], "max_steps": 3, "seeds": 1},
    "eval": {"test_batch_sizes": [32], "stats_modes": ["running"], "shifts": ["clean"]},
    "execution": {"workers": 1, "wandb": "disabled"},
}


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _env(tmp_path: Path, **extra) -> dict:
    """A process environment logged in to nothing: empty HOME, no W&B key or mode, this
    checkout's normzoo first on the path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    return env | {"HOME": str(home), "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"} | extra


def test_version_and_help_per_command(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"normzoo {normzoo.__version__}"
    own_options = {
        "compare": "--quiet",
        "report": "--config",
        "presets": "show",
        "dashboard": "ENTITY/PROJECT",
    }
    for command, option in own_options.items():
        assert cli.main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: normzoo {command}") and option in text, command
    assert cli.main(["nonsense"]) == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
    assert cli.main([]) == 2  # no command: the usage, on stderr


def test_presets_list_and_show_print_the_shipped_files(capsys):
    shipped = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    for argv in (["presets"], ["presets", "list"]):
        assert cli.main(argv) == 0
        assert capsys.readouterr().out.split() == shipped
    assert cli.main(["presets", "show", "quick"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs" / "quick.yaml").read_text()
    assert cli.main(["presets", "show", "no_such"]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no preset 'no_such'" in out and "quick" in out


def test_the_doors_call_the_same_command(tmp_path, tiny, capsys):
    """benchmarks/compare.py without a subcommand is compare; with one, the same command."""
    env = _env(tmp_path)
    door = [sys.executable, str(ROOT / "benchmarks" / "compare.py")]
    listed = subprocess.run([*door, "presets"], env=env, capture_output=True, text=True)
    module = [sys.executable, "-m", "normzoo", "--version"]
    version = subprocess.run(module, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == version.returncode == 0, listed.stderr + version.stderr
    assert "quick" in listed.stdout.split()
    assert version.stdout.strip() == f"normzoo {normzoo.__version__}"
    spec = importlib.util.spec_from_file_location("door", ROOT / "benchmarks" / "compare.py")
    door_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(door_module)
    assert door_module.main([str(tiny), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    via_door = capsys.readouterr().out
    assert cli.main(["compare", str(tiny), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out == via_door and "2 runs" in via_door


def test_wandb_online_without_a_login_exits_2_with_one_line(tmp_path, tiny):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "normzoo", "compare", str(tiny), "--wandb", "online"]
    done = subprocess.run(
        [*command, "--out", str(out)],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: W&B online needs a login")
    assert "`wandb login`" in lines[0] and "--wandb offline" in lines[0]
    assert not out.exists()  # nothing was trained or created


def test_auto_says_which_mode_at_start(tmp_path, tiny, monkeypatch, capsys):
    for name in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["compare", str(tiny), "--wandb", "auto", "--dry-run", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 0
    assert "W&B mode: offline (auto: not logged in to W&B" in capsys.readouterr().out
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert cli.main(argv) == 0
    assert "W&B mode: online (auto: logged in to W&B)" in capsys.readouterr().out


def test_overrides_give_the_experiment_its_own_identity(tiny):
    def loaded(*sets):
        args = cli.build_parser().parse_args(
            ["compare", str(tiny), *sum((["--set", s] for s in sets), [])]
        )
        return cli.load(args)

    real = loaded()
    smoke = loaded("train.max_steps=30")
    more = loaded("eval.shifts=[clean, fog]")
    assert real.identity == "tiny" and real.changed == {}
    assert re.fullmatch(r"tiny-[0-9a-f]{6}", smoke.identity) and list(smoke.changed) == [
        "train.max_steps"
    ]
    assert smoke.identity != more.identity != real.identity
    assert loaded("execution.workers=2").identity == "tiny"  # execution changes no result
    assert loaded("train.max_steps=30", "experiment.name=smoke").identity == "smoke"
    # the name is a label: test conditions added with --set reuse the trained runs
    assert [r.key for r in expand_runs(more.config)] == [r.key for r in expand_runs(real.config)]
    # and the smoke run lands in other W&B groups than the real experiment
    run = expand_runs(smoke.config)[0]
    assert setting(smoke.identity, run) != setting(real.identity, run)


def _read_pty(fd: int, process: subprocess.Popen, timeout: float) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError("no output for a while: " + b"".join(chunks).decode()[-2000:])
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=60)
    return b"".join(chunks)


# Cursor moves and erases end a segment of what the terminal shows; colours do not.
_MOVES = re.compile(r"\x1b\[[0-9;?]*[ABCDEFGHJKSTfhl]|\r")
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def segments(raw: str) -> list[str]:
    """The pieces of text a terminal writes between newlines, cursor moves and erases."""
    text = _COLOURS.sub("", _MOVES.sub("\n", raw))
    return [s for s in text.split("\n") if s.strip()]


@pytest.mark.slow
def test_progress_bar_and_log_lines_never_share_a_line(tmp_path, tiny):
    """A tiny grid under a pseudo-terminal: the bar and the log records take turns."""
    out = tmp_path / "out"
    primary, secondary = pty.openpty()
    env = _env(tmp_path, TERM="xterm-256color", COLUMNS="120", LINES="40")
    process = subprocess.Popen(
        [sys.executable, "-m", "normzoo", "compare", str(tiny), "--out", str(out)],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=tmp_path,
        env=env,
    )
    os.close(secondary)
    raw = _read_pty(primary, process, timeout=300).decode(errors="replace")
    os.close(primary)
    assert process.returncode == 0, raw[-3000:]
    pieces = segments(raw)
    bar = [s for s in pieces if "━" in s or "ETA" in s]
    records = [s for s in pieces if re.search(r"INFO|WARNING|: ok\b", s)]
    assert bar and any(": ok" in s for s in records), raw[-3000:]  # both were on screen
    mixed = [s for s in pieces if s in bar and s in records]
    assert not mixed, mixed

    # --quiet: only warnings, errors and the final summary (a rerun: nothing left to train)
    quiet = subprocess.run(
        [sys.executable, "-m", "normzoo", "compare", str(tiny), "--out", str(out), "--quiet"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("summary: 0 finished") and lines[-1].startswith("report: ")
    assert "estimated cost" not in quiet.stdout and "headline" not in quiet.stdout
    assert quiet.stderr.strip() == ""


@pytest.mark.slow
def test_the_reports_produced_by_line_is_a_command_that_reproduces_it(tmp_path, tiny):
    env = _env(tmp_path)
    argv = ["compare", "tiny.yaml", "--set", "eval.test_batch_sizes=[8, 32]", "--out", "out dir"]
    done = subprocess.run(
        [sys.executable, "-m", "normzoo", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = (tmp_path / "out dir" / "report.md").read_text()
    (line,) = [s for s in report.splitlines() if s.startswith("Produced by: ")]
    command = shlex.split(line.removeprefix("Produced by: ").strip("`"))
    assert command[:3] == ["python", "-m", "normzoo"]
    (tmp_path / "out dir" / "report.md").unlink()
    again = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "out dir" / "report.md").read_text() == report


def test_dashboard_command_builds_the_report_offline(tmp_path, tiny, monkeypatch, capsys):
    pytest.importorskip("wandb_workspaces.reports.v2")
    argv = ["dashboard", "team/proj", str(tiny), "--out", str(tmp_path / "o"), "--dry-run"]
    assert cli.main(argv) == 0
    panels = capsys.readouterr().out.splitlines()
    assert (
        "ParallelCoordinatesPlot: norm x train batch size x learning rate x accuracy"
        in (panels[1].split(" (")[0])
    )
    assert panels[0].startswith("ScatterPlot: accuracy vs train batch size")
    assert cli.main(["dashboard", "no-project", str(tiny), "--dry-run"]) == 2
    assert "'no-project' is not ENTITY/PROJECT" in capsys.readouterr().out
    for name in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.main(["dashboard", "team/proj", str(tiny)]) == 2  # saving needs a login
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "`wandb login`" in out
