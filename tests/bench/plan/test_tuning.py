"""Learning-rate selection: the rule, the edge extensions, validation and run keys."""

import math

import pytest

from normzoo.bench.plan.config import parse_config
from normzoo.bench.plan.grid import expand_runs
from normzoo.bench.plan.tuning import best_lr, cells, effective_lr, plan_tuning, tuning_table


def _config(tiny_raw, **train):
    raw = dict(tiny_raw)
    raw["train"] = {**raw["train"], **train}
    return parse_config(raw)


def _tuned(tiny_raw, grid=(1e-3, 2e-3, 4e-3), extensions=2):
    return _config(tiny_raw, lr_grid=list(grid), tune_seeds=[100, 101], tune_extensions=extensions)


def _select(config, score):
    """Run the selection loop with ``score(lr, seed, norm)`` standing in for training."""
    scores, rounds = {}, 0
    while True:
        state = plan_tuning(config, scores)
        if state.selected is not None:
            return state, rounds
        rounds += 1
        for run in state.pending:
            scores[run.key] = score(run.lr, run.seed, run.norm.name)


def _peaked(peak):
    return lambda lr, seed, norm: 1 - abs(math.log(lr / peak)) / 10 + seed * 1e-4


def test_equal_means_go_to_the_smaller_lr():
    assert best_lr({0.01: 0.5, 0.001: 0.5, 0.1: 0.4}) == 0.001
    assert best_lr({0.01: 0.6, 0.001: 0.5}) == 0.01


def test_an_inner_best_is_selected_without_extension(tiny_raw):
    state, rounds = _select(_tuned(tiny_raw), _peaked(2e-3))
    assert rounds == 1
    assert set(state.selected.values()) == {2e-3}
    assert all(t.grid == (1e-3, 2e-3, 4e-3) for t in state.cells.values())


def test_a_best_at_the_upper_edge_extends_the_grid_by_its_ratio(tiny_raw):
    state, rounds = _select(_tuned(tiny_raw), _peaked(8e-3))
    assert rounds == 3  # 8e-3 wins at the new edge, 16e-3 is tried, 8e-3 wins inside
    for tuning in state.cells.values():
        assert tuning.grid == pytest.approx((1e-3, 2e-3, 4e-3, 8e-3, 16e-3))
        assert tuning.selected == pytest.approx(8e-3)
        assert tuning.means[tuning.selected] == max(tuning.means.values())


def test_extensions_are_bounded(tiny_raw):
    state, rounds = _select(_tuned(tiny_raw, extensions=2), _peaked(1.0))
    assert rounds == 3
    for tuning in state.cells.values():
        assert tuning.grid == pytest.approx((1e-3, 2e-3, 4e-3, 8e-3, 16e-3))
        assert tuning.selected == pytest.approx(16e-3)  # the last allowed step
    state, _ = _select(_tuned(tiny_raw, extensions=0), _peaked(1e-6))
    assert {t.selected for t in state.cells.values()} == {1e-3}


def test_a_best_at_the_lower_edge_extends_downwards(tiny_raw):
    state, _ = _select(_tuned(tiny_raw, grid=(1e-3, 3e-3, 9e-3)), _peaked(3e-4))
    for tuning in state.cells.values():
        assert tuning.grid == pytest.approx((1e-3 / 9, 1e-3 / 3, 1e-3, 3e-3, 9e-3))
        assert tuning.selected == pytest.approx(1e-3 / 3)


def test_failed_runs_score_zero_and_cells_select_separately(tiny_raw):
    def score(lr, seed, norm):  # batch norm diverges from 4e-3 on; group peaks above the grid
        if norm == "batch" and lr >= 4e-3:
            return None
        return lr * 10

    state, _ = _select(_tuned(tiny_raw, extensions=1), score)
    selected = {cell[0]: lr for cell, lr in state.selected.items()}
    assert selected["batch"] == 2e-3
    assert selected["group(groups=8)"] == pytest.approx(8e-3)


def test_selected_lrs_enter_the_run_keys(tiny_raw):
    config = _tuned(tiny_raw)
    lrs = {cell: 2e-3 for cell in cells(config)}
    runs = expand_runs(config, lrs)
    assert all(run.lr == 2e-3 and run.role == "compare" for run in runs)
    other = expand_runs(config, {cell: 4e-3 for cell in cells(config)})
    assert not {r.key for r in runs} & {r.key for r in other}
    # a run at a selected lr is the same trained model as a fixed-lr config's run at that lr
    fixed = _config(tiny_raw, lr=2e-3)
    assert [r.key for r in runs] == [r.key for r in expand_runs(fixed)]
    assert effective_lr(fixed.train, 16) == 2e-3


def test_a_fixed_lr_config_keeps_its_hash_without_tuning_keys(tiny_raw):
    """The tuning keys enter the config hash only when a grid is declared."""
    fixed = _config(tiny_raw)
    assert "lr_grid" not in fixed.result_dict()["train"]
    assert _tuned(tiny_raw).hash != fixed.hash


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr_grid": [1e-3]}, "train.lr_grid needs train.tune_seeds"),
        ({"tune_seeds": [5]}, "train.tune_seeds is set without train.lr_grid"),
        ({"lr_grid": [1e-3], "tune_seeds": [1, 7]}, "train.tune_seeds [1] are also in train.seeds"),
        (
            {"lr_grid": [1e-3], "tune_seeds": [7], "lr_scaling": "linear"},
            "set train.lr_scaling to none",
        ),
        ({"lr_grid": [1e-3, -1.0], "tune_seeds": [7]}, "train.lr_grid=[0.001, -1.0] must be"),
    ],
)
def test_invalid_tuning_configs_are_refused(tiny_raw, train, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(tiny_raw, **train)


def test_tuning_table_lists_every_lr_tried(tiny_raw):
    import pandas as pd

    config = _tuned(tiny_raw, extensions=1)
    scores = {}
    for _ in range(3):
        for run in plan_tuning(config, scores).pending:
            scores[run.key] = 0.5 if run.lr == 2e-3 else 0.25
    rows = [
        {"run_key": k, "role": "tune", "status": "ok", "val_accuracy": v, "train_accuracy": 0.9}
        for k, v in scores.items()
    ]
    table = tuning_table(config, pd.DataFrame(rows))
    assert len(table) == 2 * 3  # two cells, three lrs, no extension
    assert set(table.loc[table["selected"], "lr"]) == {2e-3}
    assert (table["seeds"] == 2).all()
    assert table.loc[table["lr"] == 2e-3, "val_accuracy"].tolist() == [0.5, 0.5]


def test_a_single_value_grid_grows_up_then_down_by_three(tiny_raw):
    state, rounds = _select(_tuned(tiny_raw, grid=(1e-3,), extensions=1), _peaked(1e-4))
    assert rounds == 3
    for tuning in state.cells.values():
        assert tuning.grid == pytest.approx((1e-3 / 3, 1e-3, 3e-3))
        assert tuning.selected == pytest.approx(1e-3 / 3)
