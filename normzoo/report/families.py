"""Comparison families: the declared primary family and the exploratory tables.

A family member is one comparison ``a vs b`` at one condition, paired by seed (norms) or by
trained run (stats modes). The primary family is what the config's ``stats.primary`` declares,
expanded over conditions; Holm runs once over all of it. Exploratory tables leave out every
member of the primary family (one verdict per comparison on a page) and get their own Holm.

Two test conditions whose evaluations are the same computations for both sides (the store's
``computed_as``: e.g. a batch-independent norm against batch norm with running statistics at
two test batch sizes) are one comparison, not two: :func:`distinct` keeps the first and counts
the others as merged, so no comparison is counted twice in a Holm family.

The accuracy estimand is the mean paired difference over the seeds where neither run
collapsed (see :mod:`normzoo.report.convergence`); collapse itself is compared per train
condition and pair of norms by Fisher's exact test (:func:`collapse_table`). Members in a train
condition that did not pass the convergence gate stay in the family as "not tested".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from normzoo import stats
from normzoo.bench.plan.config.stats_section import Comparison, StatsSection
from normzoo.report.convergence import Convergence
from normzoo.report.select import TEST_KEYS, TRAIN_KEYS, default_test_slice, prefer_stats_mode

CONDITION_KEYS = (*TRAIN_KEYS, *TEST_KEYS)


@dataclass(frozen=True)
class Member:
    comparison: str
    keys: tuple[tuple[str, object], ...]  # the condition (every train and test key)
    a: str
    b: str
    values_a: np.ndarray
    values_b: np.ndarray
    runs_a: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    runs_b: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    computed: tuple = ()  # (computed_as of a, of b) at this condition, when the store says

    @property
    def identity(self) -> tuple:
        return (frozenset((self.a, self.b)), self.keys)

    @property
    def train_condition(self) -> tuple:
        keys = dict(self.keys)
        return tuple(keys.get(k) for k in TRAIN_KEYS)

    @property
    def by_stats_mode(self) -> bool:
        """Both sides are the same trained runs (a stats-mode comparison)."""
        return bool(self.runs_a.size) and np.array_equal(self.runs_a, self.runs_b)


ESTIMAND = "mean paired difference over seeds where neither run collapsed"


def resolve_method(name: str, methods: list[str]) -> str | None:
    """A config name (``group``) or label (``group(groups=8)``) -> the method label in the data."""
    if name in methods:
        return name
    matches = [m for m in methods if m.split("(")[0] == name]
    return matches[0] if len(matches) == 1 else None


def _where(ev: pd.DataFrame, comparison: Comparison) -> pd.DataFrame:
    for key, values in comparison.where:
        ev = ev[ev[key].map(_text).isin(values)]
    return ev


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _members(
    rows: pd.DataFrame,
    group_keys: list[str],
    pair_by: str,
    column: str,
    pairs: list[tuple[str, str]],
    label: str,
) -> list[Member]:
    """One member per (group of ``group_keys``, pair): ``column`` values paired by ``pair_by``."""
    if rows.empty or not pairs:
        return []
    index = [*group_keys, pair_by]
    wide = rows.pivot_table(index=index, columns=column, values="accuracy", aggfunc="mean")
    if pair_by == "run_key":  # both sides are evaluations of the same run
        level = wide.index.get_level_values("run_key").to_numpy(dtype=object)
        run_keys = pd.DataFrame({c: level for c in wide.columns}, index=wide.index)
    else:
        run_keys = rows.pivot_table(
            index=index, columns=column, values="run_key", aggfunc="first"
        ).reindex(index=wide.index, columns=wide.columns)
    computed = None
    if "computed_as" in rows.columns:
        computed = rows.pivot_table(
            index=index, columns=column, values="computed_as", aggfunc="first"
        ).reindex(index=wide.index, columns=wide.columns)
    values, names = wide.to_numpy(dtype=float), [str(c) for c in wide.columns]
    position = {name: j for j, name in enumerate(names)}
    group_index = wide.index.droplevel(pair_by)
    codes, _ = pd.factorize(group_index)
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    members = []
    for block_rows in np.split(order, boundaries):
        key = group_index[block_rows[0]]
        key = key if isinstance(key, tuple) else (key,)
        block = values[block_rows]
        for a, b in pairs:
            if a not in position or b not in position:
                continue
            cols = [position[a], position[b]]
            pair = block[:, cols]
            if np.isnan(pair).all(axis=0).any():
                continue  # one side never evaluated here: not a member of this condition
            keep = ~np.isnan(pair).any(axis=1)
            runs = run_keys.to_numpy(dtype=object)[block_rows][:, cols][keep]
            labels = ()
            if computed is not None:
                table = computed.to_numpy(dtype=object)[block_rows][:, cols][keep]
                labels = (tuple(map(str, table[:, 0])), tuple(map(str, table[:, 1])))
            members.append(
                Member(
                    label,
                    tuple(zip(group_keys, key, strict=True)),
                    a,
                    b,
                    pair[keep, 0],
                    pair[keep, 1],
                    runs[:, 0],
                    runs[:, 1],
                    labels,
                )
            )
    return members


def distinct(members: list[Member]) -> tuple[list[Member], list[Member]]:
    """(members, merged): a member whose both sides are the same computations (per run, the
    store's ``computed_as``) as an earlier member's is merged into it, never tested twice."""
    kept, merged, seen = [], [], set()
    for member in members:
        if not member.computed:
            kept.append(member)
            continue
        signature = (
            member.a,
            member.b,
            tuple(member.runs_a),
            tuple(member.runs_b),
            member.computed,
        )
        (merged if signature in seen else kept).append(member)
        seen.add(signature)
    return kept, merged


def expand(ev: pd.DataFrame, comparison: Comparison, stats_modes: set[str]) -> list[Member]:
    """The members of one declared comparison in the data."""
    if {comparison.a, comparison.b} <= stats_modes:
        rows = _where(ev, comparison)
        keys = [*TRAIN_KEYS, *[k for k in TEST_KEYS if k != "stats_mode"], "method"]
        members = _members(
            rows, keys, "run_key", "stats_mode", [(comparison.a, comparison.b)], comparison.label
        )
        return _changed_by_mode(members)
    methods = sorted(ev["method"].unique())
    a, b = resolve_method(comparison.a, methods), resolve_method(comparison.b, methods)
    if a is None or b is None:
        return []
    if comparison.where:
        rows = _where(ev, comparison)
        if "stats_mode" not in dict(comparison.where):
            rows = prefer_stats_mode(rows)
    else:
        rows = default_test_slice(ev)
    return _members(rows, list(CONDITION_KEYS), "seed", "method", [(a, b)], comparison.label)


def _changed_by_mode(members: list[Member]) -> list[Member]:
    """Members of the norms whose numbers a stats mode changes (batch-independent norms give
    identical numbers under every mode: not a comparison)."""
    varies = {m.keys[-1][1] for m in members if not np.array_equal(m.values_a, m.values_b)}
    return [m for m in members if m.keys[-1][1] in varies]


def default_primary(methods: list[str], reference: str) -> tuple[Comparison, ...]:
    return tuple(Comparison(m, reference) for m in methods if m != reference)


def test_members(
    members: list[Member],
    spec: StatsSection,
    family: str,
    conv: Convergence | None = None,
) -> pd.DataFrame:
    """One Holm family over ``members``; a row per member with its condition and results.

    With ``conv``: seeds whose run collapsed (on either side) are left out of the accuracy
    comparison, and members in an untrained train condition are "not tested" (still counted).
    """
    if not members:
        return pd.DataFrame()
    collapsed = conv.collapsed_runs() if conv is not None else set()
    untrained = conv.untrained() if conv is not None else set()
    tested = [m.train_condition not in untrained for m in members]
    # untrained conditions: every seed, for a descriptive difference (no test is made there)
    kept = [
        ~(np.isin(m.runs_a, list(collapsed)) | np.isin(m.runs_b, list(collapsed)))
        if collapsed and m.runs_a.size and t
        else np.ones(m.values_a.size, bool)
        for m, t in zip(members, tested, strict=True)
    ]
    results = stats.compare_pairs(
        [m.values_a[k] for m, k in zip(members, kept, strict=True)],
        [m.values_b[k] for m, k in zip(members, kept, strict=True)],
        [(m.a, m.b) for m in members],
        alpha=spec.alpha,
        equivalence_margin=spec.equivalence_margin,
        tested=tested,
        estimand=ESTIMAND if conv is not None else stats.MEAN_ESTIMAND,
    )
    rows = [
        {
            "family": family,
            "comparison": m.comparison,
            **dict(m.keys),
            **r.row(),
            "seeds_collapsed": int((~k).sum()),
        }
        for m, r, k in zip(members, results, kept, strict=True)
    ]
    return pd.DataFrame(rows)


def collapse_table(members: list[Member], conv: Convergence, alpha: float) -> pd.DataFrame:
    """Fisher's exact test of equal collapse rates, one Holm family over the distinct
    (train condition, a, b) of the norm members (stats-mode members share their runs)."""
    pairs: dict[tuple, Member] = {}
    for m in members:
        if not m.by_stats_mode:
            pairs.setdefault((m.train_condition, m.a, m.b), m)
    if not pairs:
        return pd.DataFrame()
    cells = dict(list(conv.runs.groupby(["method", *TRAIN_KEYS], dropna=False)))
    empty = conv.runs.iloc[:0]
    flags, names, seeds = [], [], []
    for (condition, a, b), _ in pairs.items():
        sides = [cells.get((name, *condition), empty) for name in (a, b)]
        flags.append(tuple(side["collapsed"].to_numpy(bool) for side in sides))
        seeds.append(tuple(side["seed"].to_numpy(int) for side in sides))
        names.append((a, b))
    untrained = conv.untrained()
    tested = [condition not in untrained for condition, _, _ in pairs]
    results = stats.compare_collapse(flags, names, seeds, alpha, tested)
    rows = [
        {**dict(zip(TRAIN_KEYS, condition, strict=True)), **r.row()}
        for (condition, _, _), r in zip(pairs, results, strict=True)
    ]
    return pd.DataFrame(rows)


def primary_members(
    ev: pd.DataFrame, spec: StatsSection, reference: str
) -> tuple[list[Member], list[str], list[str]]:
    """(members, comparison labels, declared comparisons absent from the data)."""
    modes = set(ev["stats_mode"].unique())
    methods = sorted(ev["method"].unique())
    comparisons = spec.comparisons or default_primary(methods, reference)
    members, missing = [], []
    for comparison in comparisons:
        found = expand(ev, comparison, modes)
        members += found
        if not found:
            missing.append(comparison.label)
    return members, [c.label for c in comparisons], missing


def exploratory_members(ev: pd.DataFrame, reference: str | None) -> dict[str, list[Member]]:
    """Exploratory tables: every norm vs reference, all pairs (headline), stats modes."""
    methods = sorted(ev["method"].unique())
    tables: dict[str, list[Member]] = {}
    running = prefer_stats_mode(ev)
    if reference in methods:
        pairs = [(m, reference) for m in methods if m != reference]
        tables["vs_reference"] = _members(
            running, list(CONDITION_KEYS), "seed", "method", pairs, "vs reference"
        )
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
    tables["all_pairs"] = _members(
        default_test_slice(ev), list(CONDITION_KEYS), "seed", "method", pairs, "all pairs"
    )
    keys = [*TRAIN_KEYS, *[k for k in TEST_KEYS if k != "stats_mode"], "method"]
    modes = [m for m in sorted(ev["stats_mode"].unique()) if m != "running"]
    if "running" in set(ev["stats_mode"]) and modes:
        members = _members(
            ev,
            keys,
            "run_key",
            "stats_mode",
            [(m, "running") for m in modes],
            "stats mode vs running",
        )
        tables["stats_modes"] = _changed_by_mode(members)
    return tables
