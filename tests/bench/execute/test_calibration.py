"""Calibration beside accuracy: every evaluation records the mean NLL (`loss`) and the expected
calibration error (`ece`, 15 equal-width confidence bins; Guo et al. 2017), checked against an
independent numpy computation, also on the test-batch-1 and outlier paths."""

import math
import re
import sqlite3

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import normzoo
from normzoo.bench.execute.evaluate import evaluate_condition, evaluate_run, predict
from normzoo.bench.plan.config import Composition, EvalSection
from normzoo.bench.plan.grid import TestCondition
from normzoo.bench.plan.schema import EVAL_COLUMNS
from normzoo.bench.record.store import STORE_NAME, Store
from normzoo.models import build_model


def reference_nll_and_ece(logits: np.ndarray, labels: np.ndarray, bins: int = 15):
    """Mean NLL and ECE written out from the definitions (Guo et al. 2017, Eq. 3, as in their
    code: bin m holds confidences in (m/M, (m+1)/M]; ECE = sum_m |B_m|/n |acc(B_m) - conf(B_m)|).
    """
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    nll = -log_probs[np.arange(len(labels)), labels].mean()
    probs = np.exp(log_probs)
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = predicted == labels
    ece = 0.0
    for m in range(bins):
        in_bin = (confidence > m / bins) & (confidence <= (m + 1) / bins)
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            ece += in_bin.mean() * gap
    return nll, ece


class _Data:
    """A stub datamodule: 48 images far from the running statistics, 4 classes."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(48, 3, 16, 16, generator=g) * 2 + 0.5
        self.y = torch.randint(0, 4, (48,), generator=g)

    def test_loader(self, batch_size, corruption, severity, composition, alpha, outliers, seed):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=batch_size)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", "batch", 4, 3, {})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16))
    return model.eval()


@pytest.mark.parametrize("mode", ["running", "batch"])
@pytest.mark.parametrize("test_batch_size", [1, 8, 48])
def test_loss_is_the_mean_nll_and_ece_matches_the_definition(mode, test_batch_size):
    model, data = _model(), _Data()
    condition = TestCondition(test_batch_size, mode, "clean", 0, Composition())
    scores = evaluate_condition(model, data, condition, EvalSection(), torch.device("cpu"))
    with torch.no_grad(), normzoo.stats_mode(model, mode):  # the same logits, batch by batch
        logits = torch.cat([model(x) for x, _ in data.test_loader(test_batch_size, *[None] * 6)])
    nll, ece = reference_nll_and_ece(logits.numpy(), data.y.numpy())
    assert scores.n == 48
    assert scores.loss == pytest.approx(nll, rel=1e-5)
    assert scores.ece == pytest.approx(ece, abs=1e-6)
    assert 0.0 < scores.ece < 1.0  # an untrained model far from its statistics: miscalibrated


def test_outliers_are_not_scored_in_nll_or_ece():
    torch.manual_seed(2)
    logits = torch.randn(20, 5) * 3
    labels = torch.randint(0, 5, (20,))
    marked = labels.clone()
    marked[::4] = -100  # injected outliers carry no label

    def model(x):
        return x

    scores = predict(model, [(logits[:12], marked[:12]), (logits[12:], marked[12:])], "cpu")
    keep = (marked != -100).numpy()
    nll, ece = reference_nll_and_ece(logits.numpy()[keep], labels.numpy()[keep])
    assert scores.n == int(keep.sum()) == 15
    assert scores.loss == pytest.approx(nll, rel=1e-6)
    assert scores.ece == pytest.approx(ece, abs=1e-7)


def test_ece_of_known_bins():
    """Two bins by construction: 4 samples at confidence 0.9 with 2 right (gap 0.4) and 4 at
    confidence 0.5 (two equal logits) with 2 right (gap 0): ECE = 4/8 * 0.4 = 0.2."""
    high = math.log(0.9 / 0.1)  # softmax([high, 0]) = (0.9, 0.1)
    logits = torch.tensor([[high, 0.0]] * 4 + [[0.0, 0.0]] * 4)
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 1, 0])  # argmax of a tie is class 0: 2 of 4 right
    scores = predict(lambda x: x, [(logits, labels)], "cpu")
    assert scores.ece == pytest.approx(0.2, abs=1e-6)
    assert scores.accuracy == 0.5


def test_every_evaluation_row_has_ece_and_merged_conditions_share_it():
    model, data = _model(), _Data()
    conditions = [
        TestCondition(bs, mode, "clean", 0, Composition())
        for bs in (1, 8)
        for mode in ("running", "batch")
    ]
    rows = evaluate_run(model, data, conditions, EvalSection(test_batch_sizes=(1, 8)))
    assert all(set(EVAL_COLUMNS) - {"run_key"} <= set(row) for row in rows)
    by = {(r["test_batch_size"], r["stats_mode"]): r for r in rows}
    # running statistics do not depend on batching: computed once, the same ece
    assert by[1, "running"]["ece"] == by[8, "running"]["ece"]
    assert by[1, "batch"]["ece"] != pytest.approx(by[1, "running"]["ece"], abs=1e-6)


def test_a_store_of_the_previous_schema_gets_the_ece_column(tmp_path):
    """Schema 2 had no ece column: such a store is migrated (the column added, old rows NULL
    and, without a fingerprint, recomputed), never silently read as if it had one."""
    from normzoo.bench.record import store_schema

    v2 = store_schema.SCHEMA_SQL
    for _, column, kind in store_schema.ADDED_COLUMNS:
        v2 = re.sub(rf",\s*{column} {re.escape(kind)}", "", v2)
    conn = sqlite3.connect(tmp_path / STORE_NAME)
    conn.executescript(v2)
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with Store(tmp_path) as store:
        columns = {row[1] for row in store._conn.execute("PRAGMA table_info(evaluations)")}
    assert "ece" in columns
