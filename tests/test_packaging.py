"""The package as a user installs it: a wheel with the console script, presets and py.typed."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the source (the repo stays clean), with this venv's setuptools."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("normzoo", "configs"):
        shutil.copytree(
            ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.glob("normzoo-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_and_runs_quick_preset_outside_the_repo(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {f"normzoo/configs/{p}" for p in presets} <= names
    assert "normzoo/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the installed copy, not the checkout: dependencies come from this venv's site-packages
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled"}
    where = subprocess.run(
        [sys.executable, "-c", "import normzoo; print(normzoo.__file__)"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(target)

    script = target / "bin" / "normzoo"
    for command in ([str(script)], [sys.executable, "-m", "normzoo"]):
        done = subprocess.run(
            [*command, "compare", "quick", "--dry-run"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "quick" in done.stdout and "18 runs" in done.stdout, done.stdout
    listed = subprocess.run(
        [str(script), "presets"], cwd=elsewhere, env=env, capture_output=True, text=True
    ).stdout.split()
    assert sorted(listed) == sorted(p[: -len(".yaml")] for p in presets)
    missing = subprocess.run(
        [str(script), "compare", "no_such_preset", "--dry-run"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no_such_preset" in missing.stdout


def test_lock_pins_every_dependency_exactly():
    """requirements.lock pins (==) each dependency and extra that make installs."""
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pins = dict(line.split("==") for line in lock if line and not line.startswith("#"))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    makefile = (ROOT / "Makefile").read_text()
    extras = next(line for line in makefile.splitlines() if line.startswith("EXTRAS :="))
    required = list(project["dependencies"])
    for extra in extras.split(":=")[1].strip().split(","):
        required += project["optional-dependencies"][extra]
    from packaging.requirements import Requirement

    for text in required:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but not in requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name]), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: run make lock"
        )
    assert "normzoo" not in pins


def test_light_dependencies_have_the_lower_bounds_the_code_needs():
    """Bounds from APIs the code uses: wandb reinit='create_new' (0.19.10), SPDX license (77)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from packaging.requirements import Requirement

    bounds = {
        Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["dependencies"]
    }
    uses_create_new = 'reinit="create_new"' in (ROOT / "normzoo/bench/record/track.py").read_text()
    if uses_create_new:
        assert not bounds["wandb"].contains("0.19.9") and bounds["wandb"].contains("0.19.10")
    (setuptools,) = [
        Requirement(r) for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")
    ]
    assert not setuptools.specifier.contains("76.1") and setuptools.specifier.contains("77.0")


@pytest.mark.slow
def test_report_command_rebuilds_the_report_from_the_store_alone(tmp_path):
    import yaml

    from normzoo.__main__ import main
    from normzoo.bench.plan.config import load_config
    from normzoo.bench.run import run_grid

    raw = {
        "experiment": {"name": "reportcmd"},
        "data": {
            "dataset": "synthetic",
            "options": {"train_size": 192, "test_size": 64, "image_size": 8},
        },
        "norms": ["batch", "layer"],
        "train": {"batch_sizes": [16], "max_steps": 2, "seeds": 2},
        "eval": {"test_batch_sizes": [32]},
        "execution": {"workers": 1, "wandb": "disabled"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    run_grid(load_config(path), out, show_progress=False)
    assert not (out / "report.md").exists()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "reportcmd" in text and (out / "runs.csv").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert main(["nonsense"]) == 2


def _store_without_training(out: Path, raw: dict) -> None:
    """A results store as a finished grid of ``raw`` leaves it, with made-up accuracies (group
    0.05 above batch, layer equal to batch); the runs keep ``raw`` itself as their config."""
    import json

    from normzoo.bench.execute.worker import run_row
    from normzoo.bench.plan.config import parse_config
    from normzoo.bench.plan.grid import expand_conditions, expand_runs
    from normzoo.bench.record.store import Store, now

    config = parse_config(raw)
    offset = {"batch": 0.0, "group": 0.05, "layer": 0.0}
    with Store(out) as store:
        for run in expand_runs(config):
            row = run_row(run, config) | {
                "config_json": json.dumps(raw),
                "finished_at": now(),
                "val_accuracy": 0.5,
            }
            accuracy = 0.6 + offset[run.norm.name] + 0.01 * ((run.seed * 7) % 5)
            evaluations = [
                {
                    "run_key": run.key,
                    **condition.columns(),
                    "accuracy": accuracy,
                    "loss": 1.0,
                    "n_test": 64,
                    "computed_as": condition.label,
                    "ece": 0.1,
                }
                for condition in expand_conditions(config)
            ]
            store.write_run(row, evaluations)


def test_report_command_reads_a_stored_config_whose_primary_uses_aliases(tmp_path, capsys):
    import pandas as pd

    from normzoo.__main__ import main

    raw = {
        "experiment": {"name": "aliases"},
        "data": {"dataset": "synthetic", "options": {"train_size": 192, "test_size": 64}},
        "norms": ["BN", {"name": "gn", "options": {"groups": 4}}, "Layer-Norm"],
        "train": {"batch_sizes": [16], "seeds": 4},
        "eval": {"test_batch_sizes": [32]},
        "execution": {"workers": 1, "wandb": "disabled"},
        "stats": {"primary": ["GN(groups=4) vs bn", "ln vs batch_norm"]},
    }
    out = tmp_path / "out"
    _store_without_training(out, raw)
    assert main(["report", str(out)]) == 0
    primary = pd.read_csv(out / "significance_primary.csv")
    assert list(primary["comparison"]) == ["group(groups=4) vs batch", "layer vs batch"]
    assert list(primary["a"]) == ["group(groups=4)", "layer"]
    # the made-up numbers: group 0.05 above batch in every seed, layer equal to batch
    assert primary["mean_difference"].round(9).tolist() == [0.05, 0.0]
    text = (out / "report.md").read_text()
    assert "`group(groups=4) vs batch`, `layer vs batch`" in text
    assert "GN(groups=4)" not in text and "batch_norm" not in text
    assert "error" not in capsys.readouterr().out


def test_report_command_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from normzoo.__main__ import main
    from normzoo.bench.record.store import STORE_NAME, Store

    empty_store = tmp_path / "empty_store"
    Store(empty_store).close()
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    cases = {
        tmp_path / "nothing": "'{}' does not exist; pass the --out dir of a run",
        tmp_path / "file": "'{}' is not a directory; pass the --out dir of a run",
        tmp_path / "empty": f"no {STORE_NAME} in '{{}}'; pass the --out dir of a run",
        empty_store: f"{{}}/{STORE_NAME} holds no runs; nothing to report",
    }
    for path, message in cases.items():
        capsys.readouterr()
        assert main(["report", str(path)]) == 2
        out = capsys.readouterr().out
        assert out == f"error: {message.format(path)}\n"
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "empty" / STORE_NAME).exists()
