"""Run execution: failed and diverged runs are recorded and never stop the grid; W&B mode."""

import pytest
import torch
from torch import nn

import normzoo.models
from normzoo.bench.config import load_config
from normzoo.bench.grid import expand_runs
from normzoo.bench.run import run_grid
from normzoo.bench.store import Store
from normzoo.bench.track import resolve_mode


class _Exploding(nn.Module):
    """A model whose outputs become non-finite on the first forward pass."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3))) * float("inf")


def test_failed_and_diverged_runs_are_recorded_and_the_grid_goes_on(
    tiny_config_path, tmp_path, monkeypatch
):
    real_build = normzoo.models.build_model

    def build(backbone, norm, num_classes, in_channels=3, norm_options=None, **options):
        if norm == "group":
            raise RuntimeError("simulated crash while building")
        if norm == "layer":
            return _Exploding(num_classes)
        return real_build(backbone, norm, num_classes, in_channels, norm_options, **options)

    config = load_config(tiny_config_path, ["norms=[batch, group, layer]", "train.seeds=1"])
    monkeypatch.setattr(normzoo.models, "build_model", build)  # after validation built them
    summary = run_grid(config, tmp_path, workers=1, show_progress=False)
    assert (summary.ok, summary.failed, summary.diverged, summary.skipped) == (1, 1, 1, 0)
    with Store(tmp_path) as store:
        runs = store.runs_frame().set_index("norm")
        ev = store.evaluations_frame()
    assert runs.loc["batch", "status"] == "ok"
    assert runs.loc["group", "status"] == "failed"
    assert "RuntimeError: simulated crash" in runs.loc["group", "error"]
    assert runs.loc["layer", "status"] == "diverged"
    assert "loss became" in runs.loc["layer", "error"]
    assert set(ev["norm"]) == {"batch"}  # only ok runs have evaluations

    # resume: nothing is retried by default; --retry-failed reruns both (still failing here)
    again = run_grid(config, tmp_path, workers=1, show_progress=False)
    assert (again.skipped, again.ok + again.failed + again.diverged) == (3, 0)
    retried = run_grid(config, tmp_path, workers=1, show_progress=False, retry_failed=True)
    assert (retried.skipped, retried.failed, retried.diverged) == (1, 1, 1)
    with Store(tmp_path) as store:
        assert len(store.runs_frame()) == len(expand_runs(config)) == 3


def test_wandb_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the user's WANDB_MODE would win over auto
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="allowed"):
        resolve_mode("cloud")
