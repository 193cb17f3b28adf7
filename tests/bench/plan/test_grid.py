"""Grid expansion, run keys, and the claim that merged test conditions are the same computation."""

import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from normzoo.bench.execute.evaluate import evaluate_condition
from normzoo.bench.plan.config import Composition, Config, EvalSection, NormSpec, TrainSection
from normzoo.bench.plan.grid import (
    TestCondition,
    computed_condition,
    expand_conditions,
    expand_runs,
    run_key,
)
from normzoo.models import build_model


def _config(**train) -> Config:
    return Config(
        norms=(NormSpec("batch"), NormSpec("group", {"groups": 4})),
        train=TrainSection(batch_sizes=(2, 8), seeds=(0, 1, 2), **train),
        eval=EvalSection(
            test_batch_sizes=(1, 4, 16),
            stats_modes=("running", "batch"),
            shifts=("clean", "fog"),
            severities=(1, 5),
            compositions=(Composition(), Composition("outliers", k=3)),
        ),
    )


def test_runs_cover_the_product_with_unique_deterministic_keys():
    runs = expand_runs(_config())
    assert len(runs) == 2 * 2 * 3
    assert len({r.key for r in runs}) == len(runs)
    assert [r.key for r in runs] == [r.key for r in expand_runs(_config())]
    assert {(r.norm.name, r.train_batch_size, r.seed) for r in runs} == {
        (n, b, s) for n in ("batch", "group") for b in (2, 8) for s in (0, 1, 2)
    }
    assert runs[0].name == "batch-bs2-s0"


def test_run_key_changes_with_what_affects_training_only():
    base = _config()
    norm = base.norms[0]
    key = run_key(base, norm, 8, Composition(), 0)
    assert run_key(_config(lr=0.1), norm, 8, Composition(), 0) != key
    assert run_key(base, norm, 8, Composition(), 1) != key
    assert run_key(base, NormSpec("batch", {"momentum": 0.01}), 8, Composition(), 0) != key
    other_data = dataclasses.replace(base, data=dataclasses.replace(base.data, val_fraction=0.2))
    assert run_key(other_data, norm, 8, Composition(), 0) != key
    # train once, evaluate many (issue 12): test conditions never change what is trained
    other_eval = dataclasses.replace(
        base,
        eval=dataclasses.replace(base.eval, mix_prior=4.0, shifts=("clean",), severities=(2,)),
    )
    assert run_key(other_eval, norm, 8, Composition(), 0) == key
    renamed = dataclasses.replace(
        base,
        experiment=dataclasses.replace(base.experiment, name="other"),
        execution=dataclasses.replace(base.execution, workers=7, wandb="disabled"),
        norms=(norm,),  # the other norms of the grid do not change this run
    )
    assert run_key(renamed, norm, 8, Composition(), 0) == key


def test_conditions_clean_has_severity_zero_and_outliers_need_room():
    conditions = expand_conditions(_config())
    clean = {c.severity for c in conditions if c.shift == "clean"}
    assert clean == {0}
    assert {c.severity for c in conditions if c.shift == "fog"} == {1, 5}
    outliers = {c.test_batch_size for c in conditions if c.composition.name == "outliers"}
    assert outliers == {4, 16}  # k=3 outliers need batches larger than 3
    # 3 sizes x iid x (clean + 2 fog) x 2 modes + 2 sizes x outliers x 3 x 2
    assert len(conditions) == 3 * 3 * 2 + 2 * 3 * 2


def test_mixed_corruption_batches_once_per_severity():
    config = _config()
    ev = dataclasses.replace(config.eval, compositions=(Composition("mixed_corruption"),))
    conditions = expand_conditions(dataclasses.replace(config, eval=ev))
    assert {(c.shift, c.severity) for c in conditions} == {("mixed", 1), ("mixed", 5)}
    assert len(set(conditions)) == len(conditions)
    assert len(conditions) == 3 * 2 * 2
    # the corruption of a sample depends on its index only, so running statistics merge batch
    # sizes but never drop the mixing
    merged = computed_condition(conditions[0], True, 16)
    assert merged.composition.name == "mixed_corruption" and merged.test_batch_size == 16
    one = TestCondition(1, "batch", "mixed", 5, Composition("mixed_corruption"))
    assert computed_condition(one, True, 16) == one


def test_computed_condition_rules():
    skew = Composition("label_skew", alpha=0.0)
    c = TestCondition(8, "batch", "fog", 5, skew)
    assert computed_condition(c, False, 128) == TestCondition(
        128, "running", "fog", 5, Composition()
    )
    assert computed_condition(c, True, 128) == c
    assert (
        computed_condition(dataclasses.replace(c, test_batch_size=1), True, 128).composition
        == Composition()
    )
    assert (
        computed_condition(
            dataclasses.replace(c, stats_mode="online", test_batch_size=1), True, 128
        ).composition
        == skew
    )
    adabn = dataclasses.replace(c, stats_mode="adabn", test_batch_size=1)
    assert computed_condition(adabn, True, 128) == adabn
    out = TestCondition(8, "running", "clean", 0, Composition("outliers", k=2))
    assert computed_condition(out, True, 128) == out


class _StubData:
    """Test loaders over fixed random data; label_skew = batches sorted by label (alpha=0)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(48, 3, 16, 16, generator=g) * 2 + 0.5
        self.y = torch.randint(0, 4, (48,), generator=g)

    def test_loader(self, batch_size, corruption, severity, composition, alpha, outliers, seed):
        x, y = self.x, self.y
        if composition == "label_skew":
            order = torch.argsort(y, stable=True)
            x, y = x[order], y[order]
        return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize(
    "norm, mode",
    [("batch", m) for m in ("running", "batch", "mix", "adabn")]
    + [("group", m) for m in ("running", "batch", "mix")],  # adapt() rejects models without BN
)
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("composition", [Composition(), Composition("label_skew", alpha=0.0)])
def test_merged_conditions_give_the_same_accuracy(norm, mode, batch_size, composition):
    torch.manual_seed(0)
    model = build_model("small_cnn", norm, 4, 3, {"groups": 4} if norm == "group" else {})
    model.train()
    with (
        torch.no_grad()
    ):  # give the running statistics a source domain that differs from the test data
        for _ in range(3):
            model(torch.randn(16, 3, 16, 16))
    model.eval()
    ev = EvalSection(test_batch_sizes=(1, 4, 16), mix_prior=4.0)
    data = _StubData()
    condition = TestCondition(batch_size, mode, "clean", 0, composition)
    merged = computed_condition(condition, norm == "batch", 16)
    cpu = torch.device("cpu")
    direct = evaluate_condition(model, data, condition, ev, cpu)
    shared = evaluate_condition(model, data, merged, ev, cpu)
    assert direct[2] == shared[2] == 48
    assert direct[0] == pytest.approx(shared[0], abs=1e-12)
    assert direct[1] == pytest.approx(shared[1], rel=1e-4)


def test_batch_statistics_do_change_results_when_not_merged():
    torch.manual_seed(0)
    model = build_model("small_cnn", "batch", 4, 3).eval()
    data, ev, cpu = _StubData(), EvalSection(mix_prior=4.0), torch.device("cpu")
    running = evaluate_condition(
        model, data, TestCondition(4, "running", "clean", 0, Composition()), ev, cpu
    )
    batch = evaluate_condition(
        model, data, TestCondition(4, "batch", "clean", 0, Composition()), ev, cpu
    )
    assert running[1] != pytest.approx(batch[1], rel=1e-3)
