"""Stored weights verified before use (issue 28.2): the store records each file's sha256, the
file's metadata names its run; a damaged, truncated or foreign file is reported with the run
named and the run retrained, never evaluated; the evaluations of the intact model stay."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

from normzoo.bench.execute.weights import WeightsError, file_sha256, verify_weights, weights_path
from normzoo.bench.plan.config import load_config
from normzoo.bench.plan.grid import expand_conditions, expand_runs
from normzoo.bench.record.store import Store
from normzoo.bench.run import plan_grid, run_grid
from tests.bench.test_eval_keys import GRID

KEY = ["test_batch_size", "stats_mode", "shift", "severity", "test_composition"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Two seeds of batch norm trained and evaluated on clean data: (config path, out dir)."""
    root = tmp_path_factory.mktemp("weights")
    raw = {**GRID, "train": {**GRID["train"], "seeds": 2}}
    raw["eval"] = {**GRID["eval"], "stats_modes": ["running", "batch"], "shifts": ["clean"]}
    path = root / "weights.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = root / "out"
    assert run_grid(load_config(path), out, workers=1, show_progress=False).exit_status == 0
    return path, out


MORE = ["eval.shifts=[clean, gaussian_noise]"]


def _copy(stored, tmp_path):
    path, out = stored
    shutil.copytree(out, tmp_path / "out")
    runs = {run.seed: run for run in expand_runs(load_config(path))}
    return path, tmp_path / "out", runs


def _rows(out, run_key):
    with Store(out, read_only=True) as store:
        frame = store.evaluations_frame([run_key])
    return frame.set_index(KEY)[["accuracy", "loss"]].sort_index()


def test_the_store_records_the_hash_and_the_file_names_its_run(stored):
    path, out = stored
    with Store(out, read_only=True) as store:
        for run in expand_runs(load_config(path)):
            weights = weights_path(out, run.key)
            assert store.weights_hash(run.key) == file_sha256(weights)
            verify_weights(weights, run.key, store.weights_hash(run.key))  # intact: no error


def test_verify_weights_names_the_run_and_the_problem(stored, tmp_path):
    path, out, runs = _copy(stored, tmp_path)
    zero, one = (weights_path(out, runs[s].key) for s in (0, 1))
    with Store(out, read_only=True) as store:
        sha = store.weights_hash(runs[0].key)
    data = bytearray(zero.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)
    zero.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"run {runs[0].key}.*damaged or replaced"):
        verify_weights(zero, runs[0].key, sha)
    zero.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(WeightsError, match=f"run {runs[0].key}.*unreadable"):
        verify_weights(zero, runs[0].key, sha)
    # another run's file, even without a recorded hash (a store of an older normzoo)
    with pytest.raises(WeightsError, match=f"holds run {runs[1].key}, not run {runs[0].key}"):
        verify_weights(one, runs[0].key, None)
    legacy = tmp_path / "legacy.safetensors"
    save_file({"w": torch.ones(2)}, str(legacy))  # no metadata, no recorded hash: accepted
    verify_weights(legacy, runs[0].key, None)


@pytest.mark.parametrize("damage", ["overwrite 256 bytes", "seed 1's weights", "truncate"])
def test_damaged_weights_are_never_evaluated_the_run_is_retrained(stored, tmp_path, damage, caplog):
    path, out, runs = _copy(stored, tmp_path)
    zero, one = (weights_path(out, runs[s].key) for s in (0, 1))
    intact = zero.read_bytes()
    before = _rows(out, runs[0].key)
    if damage == "overwrite 256 bytes":
        data = bytearray(intact)
        data[len(data) // 2 : len(data) // 2 + 256] = b"\xff" * 256
        zero.write_bytes(bytes(data))
    elif damage == "seed 1's weights":
        shutil.copyfile(one, zero)
    else:
        zero.write_bytes(intact[: len(intact) // 2])
    caplog.set_level(logging.WARNING)
    summary = run_grid(load_config(path, MORE), out, workers=1, show_progress=False)
    assert summary.exit_status == 0 and summary.trained == {runs[0].key}
    assert f"retraining run {runs[0].name}" in caplog.text and runs[0].key in caplog.text
    assert "are missing" not in caplog.text  # named for what it is, once
    # training is deterministic: the retrained file is the intact one, bit for bit
    assert zero.read_bytes() == intact
    after = _rows(out, runs[0].key)
    assert after.loc[before.index].equals(before)  # the intact model's rows stay
    assert after["loss"].max() < 10 and len(after) == 2 * len(before)
    other = _rows(out, runs[1].key)  # seed 0's new rows are its own model's, not seed 1's
    assert not after["loss"].equals(other["loss"])


def test_a_run_failed_on_its_weights_is_retrained_with_retry_failed(stored, tmp_path, compare):
    path, out, runs = _copy(stored, tmp_path)
    zero = weights_path(out, runs[0].key)
    zero.write_bytes(zero.read_bytes()[:100])
    with Store(out) as store:  # what older code recorded: failed when loading the file
        store.mark_failed(runs[0].key, "loading weights: SafetensorError: truncated")
    config = load_config(path, MORE)
    with Store(out, read_only=True) as store:
        assert plan_grid(config, out, store).kept_failed == 1  # by default kept, counted
        kept = store.evaluations_frame()
    assert runs[0].key not in set(kept["run_key"])  # excluded while failed
    summary = run_grid(config, out, workers=1, show_progress=False, retry_failed=True)
    assert summary.exit_status == 0 and summary.trained == {runs[0].key}
    with Store(out, read_only=True) as store:
        assert store.statuses()[runs[0].key] == "ok"
        assert len(store.evaluations_frame([runs[0].key])) == len(expand_conditions(config))
