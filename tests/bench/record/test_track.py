"""W&B layout and identity, read back from the offline ``.wandb`` files; curves in the store."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from wandb_offline import wandb_runs

import normzoo
import normzoo.models
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import condition_name, expand_conditions, expand_runs
from normzoo.bench.plan.identity import experiment_identity
from normzoo.bench.record.store import Store
from normzoo.bench.record.track import Tracker, resolve_mode
from normzoo.bench.record.wandb_layout import condition_key, run_config, run_id, setting, summary_id
from normzoo.bench.run import run_grid

# Small enough for a few seconds per run: 2 norms x 2 seeds, 12 steps, 4 test conditions.
TINY_SET = [
    "train.max_steps=12",
    "eval.test_batch_sizes=[32]",
    "eval.stats_modes=[running, batch]",
    "eval.compositions=[iid]",
]
RESULT_KEYS = {"status", "error", "val_accuracy", "train_seconds", "eval_seconds", "accuracy"}


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No W&B settings from the surrounding shell."""
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


def test_condition_names_are_predictable_and_one_string_everywhere(tiny_config_path):
    row = dict(shift="contrast", severity=5, stats_mode="batch", test_batch_size=8)
    assert condition_key({**row, "test_composition": "iid"}) == "test/bs8/batch/contrast-5/iid"
    clean = {**row, "shift": "clean", "severity": 0, "test_composition": "label_skew(alpha=0.1)"}
    assert condition_key(clean) == "test/bs8/batch/clean/label_skew(alpha=0.1)"
    # the CLI's and the store's name (computed_as) of a condition is W&B's after "test/"
    for condition in expand_conditions(load_config(tiny_config_path)):
        assert condition_key(condition.columns()) == f"test/{condition.label}"
        assert condition_name(condition.columns()) == condition.label


def test_ids_are_stable_valid_and_distinct(tiny_config_path):
    config = load_config(tiny_config_path)
    runs = expand_runs(config)
    ids = [run_id(r.key) for r in runs]
    assert ids == [run_id(r.key) for r in expand_runs(load_config(tiny_config_path))]
    assert len(set(ids)) == len(runs)
    for value in [*ids, summary_id(config.hash)]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value), value
    # the name is a label: renaming the experiment keeps every run key, hence every W&B id
    renamed = load_config(tiny_config_path, ["experiment.name=renamed"])
    assert [run_id(r.key) for r in expand_runs(renamed)] == ids
    assert summary_id(renamed.hash) == summary_id(config.hash)


def test_wandb_git_sha_is_the_checkouts_head(tiny_config_path, tmp_path):
    root = Path(normzoo.__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    status = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
    config = load_config(tiny_config_path, ["execution.wandb=offline"])
    tracker = Tracker.from_config(config, tmp_path)
    flat = run_config(expand_runs(config)[0], config, tracker.code_versions)
    assert flat["git_sha"] == tracker.code_versions["git_sha"] == expected


def test_config_is_flat_inputs_only(tiny_config_path):
    config = load_config(tiny_config_path)
    group_run = next(r for r in expand_runs(config) if r.norm.name == "group")
    flat = run_config(group_run, config, {"git_sha": "abc"})
    assert not RESULT_KEYS & set(flat)
    assert not any(isinstance(v, dict) for v in flat.values())
    assert flat["norm"] == "group" and flat["norm_label"] == "group(groups=8)"
    assert flat["norm_groups"] == 8 and flat["batch_dependent"] is False
    assert (flat["train_batch_size"], flat["seed"], flat["lr"]) == (16, group_run.seed, 2.0e-3)
    assert flat["train_composition"] == "iid" and flat["git_sha"] == "abc"
    assert flat["setting"] == setting("tiny", group_run) == "tiny/group(groups=8)/bs16/iid"


def test_the_users_environment_limits_the_mode(env):
    env.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("offline") == resolve_mode("online") == resolve_mode("auto") == "disabled"
    env.setenv("WANDB_MODE", "offline")
    assert resolve_mode("online") == resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"
    env.delenv("WANDB_MODE")
    env.setenv("WANDB_DISABLED", "true")
    assert resolve_mode("offline") == "disabled"
    env.delenv("WANDB_DISABLED")
    assert resolve_mode("auto") == "offline"  # no key anywhere
    with pytest.raises(ValueError, match="allowed: auto, offline, online, disabled"):
        resolve_mode("cloud")


def test_project_entity_and_dir_come_from_config_then_environment(env, tiny_config_path, tmp_path):
    config = load_config(tiny_config_path, ["execution.wandb=offline"])
    plain = Tracker.from_config(config, tmp_path / "out")
    assert (plain.project, plain.entity, plain.root) == ("normzoo", None, tmp_path / "out")
    env.setenv("WANDB_PROJECT", "from-env")
    env.setenv("WANDB_ENTITY", "team-env")
    env.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    from_env = Tracker.from_config(config, tmp_path / "out")
    assert (from_env.project, from_env.entity) == ("from-env", "team-env")
    assert from_env.root == tmp_path / "wandb-dir"
    explicit = load_config(
        tiny_config_path,
        ["execution.wandb_project=mine", "execution.wandb_entity=me", "execution.wandb=offline"],
    )
    tracker = Tracker.from_config(explicit, tmp_path / "out")
    assert (tracker.project, tracker.entity) == ("mine", "me")
    with pytest.raises(ValueError, match="wandb_weights=3 must be true or false"):
        load_config(tiny_config_path, ["execution.wandb_weights=3"])  # rejected by validation


def _train_runs(logged):
    return [w for w in logged if w["job_type"] == "train"]


@pytest.mark.slow
def test_two_invocations_leave_one_wandb_run_per_training_run(
    env, compare, tiny_config_path, tmp_path
):
    out = tmp_path / "out"
    argv = [str(tiny_config_path), "--out", str(out), "--wandb", "offline", "--workers", "1"]
    for item in TINY_SET:
        argv += ["--set", item]
    assert compare.main(argv) == 0
    first = wandb_runs(out)
    assert compare.main(argv) == 0  # resumes: trains nothing, updates the summary run
    assert compare.main([*argv, "--report-only"]) == 0
    logged = wandb_runs(out)
    config = load_config(tiny_config_path, TINY_SET)
    runs, conditions = expand_runs(config), expand_conditions(config)
    # --set changed results: the experiment is "tiny-<hash of the changes>" wherever it groups
    identity = experiment_identity(config, load_config(tiny_config_path))
    assert re.fullmatch(r"tiny-[0-9a-f]{6}", identity)

    train = _train_runs(logged)
    assert len(train) == len(_train_runs(first)) == len(runs) == 4  # no run logged twice
    assert {w["id"] for w in train} == {run_id(r.key) for r in runs}
    summaries = [w for w in logged if w["job_type"] == "summary"]
    assert {w["id"] for w in summaries} == {summary_id(config.hash)}  # resumed, not new
    # the no-op reruns (everything stored and logged) created no W&B folder at all
    assert sorted(w["dir"] for w in logged) == sorted(w["dir"] for w in first)
    assert len({w["id"] for w in logged}) == len(runs) + 1

    by_id = {w["id"]: w for w in train}
    with Store(out) as store:
        evaluations = store.evaluations_frame()
        curves = store.curves_frame()
    for run in runs:
        w = by_id[run_id(run.key)]
        assert w["group"] == setting(identity, run) and w["config"]["experiment"] == identity
        assert w["tags"] == [run.norm.label, "bs=16", "iid"]
        assert not RESULT_KEYS & set(w["config"])
        assert w["config"]["run_key"] == run.key and w["config"]["max_steps"] == 12
        stored = evaluations[evaluations["run_key"] == run.key]
        expected = {condition_key(row) for row in stored.to_dict("records")}
        assert len(expected) == len(conditions)
        assert expected <= set(w["summary"])
        for row in stored.to_dict("records"):
            assert w["summary"][condition_key(row)] == row["accuracy"]
        assert w["summary"]["status"] == "ok"
        # the curves W&B got live are the curves in the store
        logged_loss = {
            h["trainer/global_step"]: h["train/loss"] for h in w["history"] if "train/loss" in h
        }
        mine = curves[(curves["run_key"] == run.key) & (curves["metric"] == "train/loss")]
        assert logged_loss == dict(zip(mine["step"], mine["value"], strict=True))
        assert len(logged_loss) == 1  # 12 steps, one point every 10
        assert any("val/acc" in h for h in w["history"])
    summary = summaries[-1]
    assert summary["group"] == f"{identity}/summary"
    artifacts = {name for _, name in summary["artifacts"]}
    assert {f"results-{identity}", f"report-{identity}"} <= artifacts
    assert {"results", "report"} <= {kind for kind, _ in summary["artifacts"]}
    assert any(key.startswith("tables/headline") for key in summary["summary"])


@pytest.mark.slow
def test_curves_are_stored_without_wandb_and_env_disabled_wins(
    env, compare, tiny_config_path, tmp_path
):
    env.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "out"
    argv = [str(tiny_config_path), "--out", str(out), "--wandb", "offline", "--workers", "1"]
    for item in [*TINY_SET, "train.seeds=1"]:
        argv += ["--set", item]
    assert compare.main(argv) == 0
    assert not (out / "wandb").exists()
    with Store(out) as store:
        curves = store.curves_frame()
        keys = set(store.statuses())
    assert set(curves["run_key"]) == keys and len(keys) == 2
    metrics = set(curves["metric"])
    assert {"train/loss", "train/acc", "train/lr", "val/acc", "train/epoch_loss"} <= metrics
    val = curves[curves["metric"] == "val/acc"]
    assert val["value"].between(0, 1).all() and (val["step"] == 12).all()


class _Exploding(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3))) * float("inf")


@pytest.mark.slow
def test_retry_failed_resumes_the_same_wandb_run_in_wandb_dir(
    env, tiny_config_path, tmp_path, monkeypatch
):
    env.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    real_build = normzoo.models.build_model

    def build(backbone, norm, num_classes, in_channels=3, norm_options=None, **options):
        if norm == "group":
            return _Exploding(num_classes)
        return real_build(backbone, norm, num_classes, in_channels, norm_options, **options)

    config = load_config(
        tiny_config_path,
        [*TINY_SET, "train.seeds=1", "execution.wandb=offline", "execution.wandb_weights=true"],
    )
    monkeypatch.setattr(normzoo.models, "build_model", build)
    out = tmp_path / "out"
    tracker = Tracker.from_config(config, out)
    first = run_grid(config, out, workers=1, tracker=tracker, show_progress=False)
    retried = run_grid(
        config, out, workers=1, tracker=tracker, show_progress=False, retry_failed=True
    )
    assert (first.ok, first.diverged, retried.skipped, retried.diverged) == (1, 1, 1, 1)
    assert not (out / "wandb").exists()
    logged = wandb_runs(tmp_path / "elsewhere")
    diverged = [w for w in logged if w["config"]["norm"] == "group"]
    assert len(diverged) == 2 and len({w["id"] for w in diverged}) == 1  # same id, resumed
    assert all("diverged" in w["summary"]["status"] for w in diverged)
    assert "loss became" in diverged[-1]["summary"]["error"]
    (trained,) = [w for w in logged if w["config"]["norm"] == "batch"]
    # execution.wandb_weights: the kept weights of a trained run are its model artifact
    assert ("model", f"model-{trained['id']}") in trained["artifacts"]
    assert not any(kind == "model" for w in diverged for kind, _ in w["artifacts"])
    assert os.environ["WANDB_DIR"] == str(tmp_path / "elsewhere")
