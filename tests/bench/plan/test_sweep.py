"""The W&B sweep file: its grid is the config's lr grid, and one trial's command, expanded as the
W&B agent expands it, trains exactly that run (offline: creating a sweep needs a server)."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from normzoo import cli
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.presets import resolve_config
from normzoo.bench.record.store import Store
from normzoo.bench.record.track import METRIC_SUMMARIES

ROOT = Path(__file__).resolve().parents[3]
TINY = {
    "experiment": {"name": "tiny"},
    "data": {
        "dataset": "synthetic",
        "options": {"train_size": 192, "test_size": 64, "image_size": 8},
    },
    "norms": ["batch", {"name": "group", "options": {"groups": 4}}],
    "train": {
        "batch_sizes": [8, 16],
        "max_steps": 3,
        "seeds": 2,
        "lr_grid": [1.0e-3, 3.0e-3],
        "tune_seeds": [100, 101],
    },
    "eval": {"test_batch_sizes": [16, 32], "stats_modes": ["running"], "shifts": ["clean"]},
    "execution": {"workers": 1, "wandb": "disabled"},
}


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(tmp_path: Path, config: str, *extra: str) -> dict:
    out = tmp_path / "sweep.yaml"
    assert cli.main(["sweep", config, "--out", str(out), *extra]) == 0
    return yaml.safe_load(out.read_text())


def agent_command(sweep: dict, point: dict) -> list[str]:
    """The argv W&B's agent runs for one point of the grid (wandb 0.31, wandb_agent.py and
    sweeps/utils.py; docs: "custom CLI commands with sweeps"): a token that is exactly a macro
    is replaced by its list (``${env}`` -> /usr/bin/env, ``${interpreter}`` -> python, here this
    interpreter; ``${program}``; ``${args}`` -> ``--key=value``; ``${args_no_hyphens}`` ->
    ``key=value``, each value written by ``str``); every other token is passed as it is, with
    no shell in between."""
    macros = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": [sys.executable],
        "${program}": [sweep.get("program")],
        "${args}": [f"--{key}={value}" for key, value in point.items()],
        "${args_no_hyphens}": [f"{key}={value}" for key, value in point.items()],
    }
    argv = []
    for token in sweep["command"]:
        argv += macros.get(str(token), [str(token)])
    return argv


def test_the_agent_transcription_matches_wandbs_own_argument_builder():
    """Our transcription of the agent's ``${args}``/``${args_no_hyphens}`` against the installed
    wandb's builder (what its agent calls)."""
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    point = {"norms": ["group(groups=4)"], "train.batch_sizes": [16], "train.lr": 1e-05}
    built = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
    sweep = {"command": ["${args}", "${args_no_hyphens}"]}
    assert agent_command(sweep, point) == [*built["args"], *built["args_no_hyphens"]]
    assert built["args_no_hyphens"][0] == "norms=['group(groups=4)']"


def test_the_grid_is_the_configs_lr_grid_and_the_metric_the_logged_one(tmp_path):
    sweep = _sweep(tmp_path, str(_write(tmp_path, TINY)))
    assert sweep["method"] == "grid"
    # the key the training logs (Classifier's self.log; checked in the store below) and the one
    # W&B keeps a summary of
    assert sweep["metric"] == {"name": "val/acc", "goal": "maximize"}
    assert sweep["metric"]["name"] in METRIC_SUMMARIES
    parameters = {name: spec["values"] for name, spec in sweep["parameters"].items()}
    assert parameters == {
        "norms": [["batch"], ["group(groups=4)"]],
        "train.batch_sizes": [[8], [16]],
        "train.lr": [1.0e-3, 3.0e-3],
        "train.seeds": [[100], [101]],
    }
    command = sweep["command"]
    assert command[:5] == ["${env}", "${interpreter}", "-m", "normzoo", "compare"]
    assert command.count("${args_no_hyphens}") == 1
    assert "train.lr_grid=null" in command and "train.tune_seeds=null" in command


def test_the_quick_preset_sweeps_its_declared_grid(tmp_path):
    sweep = _sweep(tmp_path, "quick")
    config = load_config(resolve_config("quick"))
    values = {name: spec["values"] for name, spec in sweep["parameters"].items()}
    assert values["train.lr"] == list(config.train.lr_grid)
    assert values["train.seeds"] == [[s] for s in config.train.tune_seeds]
    assert values["train.batch_sizes"] == [[b] for b in config.train.batch_sizes]
    assert values["norms"] == [[n.label] for n in config.norms]
    assert sweep["command"][5] == "quick"  # a preset is named, so the agent resolves it anywhere


def test_without_an_lr_grid_the_sweep_is_train_lr_and_the_compared_seeds(tmp_path):
    raw = {**TINY, "train": {**TINY["train"], "lr": 0.02}}
    del raw["train"]["lr_grid"], raw["train"]["tune_seeds"]
    sweep = _sweep(tmp_path, str(_write(tmp_path, raw)), "--set", "train.seeds=[5]")
    assert sweep["parameters"]["train.lr"]["values"] == [0.02]
    assert sweep["parameters"]["train.seeds"]["values"] == [[5]]
    assert sweep["command"][sweep["command"].index("train.seeds=[5]") - 1] == "--set"


def test_a_grid_that_is_not_a_product_is_refused(tmp_path, capsys):
    raw = {**TINY, "norms": ["batch", {"name": "layer", "train_batch_sizes": [16]}]}
    assert cli.main(["sweep", str(_write(tmp_path, raw)), "--out", str(tmp_path / "s")]) == 2
    assert "train_batch_sizes" in capsys.readouterr().out
    assert not (tmp_path / "s").exists()


def test_compare_reads_bare_overrides_as_set(tmp_path, capsys):
    config = str(_write(tmp_path, TINY))
    argv = ["compare", config, "train.seeds=[7]", "--dry-run", "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--set", "train.lr_grid=null", "--set", "train.tune_seeds=null"]) == 0
    out = capsys.readouterr().out
    assert "-s7 " in out and "-s0 " not in out


def test_a_trials_values_win_over_the_users_overrides(tmp_path, capsys):
    """The user's --set norms is repeated in the command; the trial's one norm still wins."""
    config = str(_write(tmp_path, TINY))
    sweep = _sweep(tmp_path, config, "--set", "norms=[group(groups=4), batch]")
    point = {name: spec["values"][0] for name, spec in sweep["parameters"].items()}
    assert point["norms"] == ["group(groups=4)"]  # the grid follows the user's order
    argv = agent_command(sweep, point)
    assert argv[2:5] == ["-m", "normzoo", "compare"]
    words = argv[4:]  # the command after `env python -m normzoo`, run in this process
    words[words.index("--out") + 1] = str(tmp_path / "dry")
    assert cli.main([*words, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "1 runs" in printed or "1 run " in printed, printed
    assert "group(groups=4)-bs8-s100" in printed and "batch-bs8" not in printed


@pytest.mark.slow
def test_one_trial_run_as_the_agent_runs_it_trains_that_run(tmp_path):
    """The command of one grid point, expanded as the agent does, run with W&B disabled."""
    sweep = _sweep(tmp_path, str(_write(tmp_path, TINY)))
    names = list(sweep["parameters"])
    points = list(itertools.product(*(sweep["parameters"][n]["values"] for n in names)))
    assert len(points) == 2 * 2 * 2 * 2
    point = dict(zip(names, points[-1], strict=True))  # group(groups=4), bs 16, lr 3e-3, 101
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        agent_command(sweep, point),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / sweep["command"][sweep["command"].index("--out") + 1]
    with Store(out, read_only=True) as store:
        runs = store.runs_frame()
        curves = store.curves_frame()
    assert len(runs) == 1, runs
    run = runs.iloc[0]
    assert run["status"] == "ok" and run["role"] == "compare"
    assert (run["norm"], json.loads(run["norm_options"])) == ("group", {"groups": 4})
    assert (run["train_batch_size"], run["seed"]) == (16, 101)
    assert run["lr"] == pytest.approx(3.0e-3, rel=1e-12)
    assert 0.0 <= run["val_accuracy"] <= 1.0
    assert sweep["metric"]["name"] in set(curves["metric"])  # the key the training logged
