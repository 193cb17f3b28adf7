"""Comparison families: the declared primary family and the exploratory tables.

A family member is one comparison ``a vs b`` at one condition, paired by seed (norms) or by
trained run (stats modes). The primary family is what the config's ``stats.primary`` declares,
expanded over conditions; Holm runs once over all of it. Exploratory tables leave out every
member of the primary family (one verdict per comparison on a page) and get their own Holm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from normzoo import stats
from normzoo.bench.plan.stats_section import Comparison, StatsSection
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

    @property
    def identity(self) -> tuple:
        return (frozenset((self.a, self.b)), self.keys)


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
    wide = rows.pivot_table(
        index=[*group_keys, pair_by], columns=column, values="accuracy", aggfunc="mean"
    )
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
            pair = block[:, [position[a], position[b]]]
            if np.isnan(pair).all(axis=0).any():
                continue  # one side never evaluated here: not a member of this condition
            keep = ~np.isnan(pair).any(axis=1)
            members.append(
                Member(
                    label,
                    tuple(zip(group_keys, key, strict=True)),
                    a,
                    b,
                    pair[keep, 0],
                    pair[keep, 1],
                )
            )
    return members


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


def test_members(members: list[Member], spec: StatsSection, family: str) -> pd.DataFrame:
    """One Holm family over ``members``; a row per member with its condition and results."""
    if not members:
        return pd.DataFrame()
    results = stats.compare_pairs(
        [m.values_a for m in members],
        [m.values_b for m in members],
        [(m.a, m.b) for m in members],
        alpha=spec.alpha,
        equivalence_margin=spec.equivalence_margin,
    )
    rows = [
        {"family": family, "comparison": m.comparison, **dict(m.keys), **r.row()}
        for m, r in zip(members, results, strict=True)
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
