"""The ``stats:`` section of a config: the experiment's declared primary family.

```yaml
stats:
  primary:                       # the comparisons the experiment is about, declared before any run
    - group vs batch             # two norms: at every train condition, default test condition
    - batch vs running where shift=fog and severity=5   # two stats modes, some conditions
  alpha: 0.05
  equivalence_margin: 0.01       # optional: TOST equivalence within +-0.01 accuracy
  gate: 0.9                      # trained condition: best norm's mean train accuracy >= gate
  collapse_margin: 0.05          # collapsed run: test acc <= chance + margin, or train acc < gate
```
Holm corrects over every comparison the family expands to, across conditions; everything else
the report prints is exploratory. Without ``primary`` the family is every norm vs ``batch``
(or the first norm) at every train condition on clean i.i.d. test batches of the largest size.

A side may be the rule ``*``: every norm of the grid (``* vs batch`` is each other norm vs
batch). When ``--set norms=[...]`` removes a norm that an entry names, the entry is dropped with
a logged note (the family narrows) instead of failing; a name that was never a norm of the
config is still an error.

A side names two stats modes exactly as ``eval.stats_modes`` does, or a norm as ``norms:`` does:
by name or alias (``gn``, ``Group-Norm``), or by label with options (``gn(groups=8)``) where a
name alone is ambiguous. The parsed section keeps each comparison in canonical form
(``group(groups=8) vs batch``): that is what is stored with the runs and what the report shows.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass as model

from normzoo.bench.plan.config.fields import number, suggest
from normzoo.bench.plan.config.specs import FROZEN, NormSpec

log = logging.getLogger(__name__)

WHERE_KEYS = (
    "train_batch_size",
    "train_composition",
    "test_batch_size",
    "stats_mode",
    "shift",
    "severity",
    "test_composition",
)
STATS_KEYS = ("primary", "alpha", "equivalence_margin", "gate", "collapse_margin")
_SIDE = re.compile(r"^([^()]+?)\s*(?:\((.*)\))?$")  # name, or name(key=value,...)
EVERY = "*"  # a side that stands for every norm of the grid


@dataclass(frozen=True)
class Comparison:
    """``a vs b`` (two norms or two stats modes), optionally only where columns have values."""

    a: str
    b: str
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def label(self) -> str:
        if not self.where:
            return f"{self.a} vs {self.b}"
        parts = " and ".join(f"{k}={'|'.join(v)}" for k, v in self.where)
        return f"{self.a} vs {self.b} where {parts}"


@model(frozen=True, config=FROZEN)
class StatsSection:
    """The experiment's declared primary family and its test settings (never changes results)."""

    primary: tuple[str, ...] = Field(
        (),
        description="comparisons 'A vs B [where key=value and ...]' (A, B: norms or stats "
        "modes; '*': every norm); Holm corrects over all of them",
    )
    alpha: number(gt=0, lt=1) = Field(0.05, description="significance level")
    equivalence_margin: number(gt=0) | None = Field(
        None, description="TOST equivalence margin in accuracy (null: no equivalence test)"
    )
    gate: number(gt=0, le=1) = Field(
        0.9,
        description="training-accuracy gate: a train condition is trained when its best norm's "
        "mean final training accuracy over seeds reaches it",
    )
    collapse_margin: number(ge=0, lt=1) = Field(
        0.05,
        description="a run collapsed when its test accuracy is within this margin of chance "
        "(1 / classes), or its training accuracy stayed under the gate",
    )

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, alpha: Any) -> Any:
        """The message the config loader gives, also when a report is built with an alpha."""
        problem = _alpha_problem(alpha)
        if problem:
            raise ValueError(problem)
        return alpha

    @property
    def comparisons(self) -> tuple[Comparison, ...]:
        return tuple(parse_comparison(text) for text in self.primary)


def parse_comparison(text: str) -> Comparison:
    """``"A vs B"`` or ``"A vs B where key=value and key=v1|v2"`` -> :class:`Comparison`.

    Conditions are joined by ``and`` (or commas, in YAML block lists); ``|`` separates values.
    """
    if not isinstance(text, str):
        raise ValueError(f"stats.primary entry {text!r} must be a string like 'group vs batch'")
    head, _, condition = text.partition(" where ")
    sides = [s.strip() for s in head.split(" vs ")]
    if len(sides) != 2 or not all(sides):
        raise ValueError(
            f"stats.primary entry {text!r} must read 'A vs B' (two norms or two stats modes), "
            "optionally followed by 'where key=value and key=value'"
        )
    where = []
    for item in filter(None, (c.strip() for c in re.split(r",| and ", condition))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in WHERE_KEYS:
            raise ValueError(
                f"stats.primary entry {text!r}: condition {item!r} must be key=value with key "
                f"one of {list(WHERE_KEYS)}"
            )
        where.append((key, tuple(v.strip() for v in value.split("|"))))
    return Comparison(sides[0], sides[1], tuple(where))


def parse_stats(
    raw: Any,
    norms: Sequence[NormSpec],
    stats_modes: list[str],
    values: dict[str, list[str]] | None = None,
    removed: Collection[NormSpec] = (),
) -> tuple[StatsSection, list]:
    """The ``stats:`` mapping -> (StatsSection, problems); sides must be norms or stats modes.

    ``norms`` are the config's parsed norms; each comparison is kept in canonical form (norm
    aliases resolved with :func:`resolve_norm`, ``*`` expanded, stats modes as written).
    ``values`` maps a ``where`` key to the values the config's grid has (checked when given).
    ``removed``: norms an override took out of the grid; entries naming them are dropped with a
    logged note.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return StatsSection(), [f"stats must be a mapping with keys {list(STATS_KEYS)}"]
    problems: list[str] = []
    unknown = sorted(set(raw) - set(STATS_KEYS))
    if unknown:
        problems.append(f"stats: unknown key(s) {unknown}; accepted: {list(STATS_KEYS)}")
    alpha, margin = _alpha_and_margin(raw, problems)
    primary = raw.get("primary", [])
    if isinstance(primary, str):
        primary = [primary]
    if not isinstance(primary, list | tuple):
        problems.append("stats.primary must be a list of 'A vs B' strings")
        primary = []
    canonical: list[str] = []
    seen: dict[tuple, str] = {}  # (sides, where) -> the entry as written
    dropped: dict[str, str] = {}  # entry -> the removed norm it names
    for text in primary:
        entry = _entry(text, norms, stats_modes, values or {}, removed, problems, dropped)
        for comparison in entry:
            identity = (frozenset((comparison.a, comparison.b)), comparison.where)
            if identity in seen:
                problems.append(
                    f"stats.primary entry {text!r} is the same comparison as "
                    f"{seen[identity]!r} ('{comparison.label}'); list each comparison once"
                )
                continue
            seen[identity] = text
            canonical.append(comparison.label)
    if dropped and not problems:
        log.warning(
            "stats.primary narrowed to the norms left by the override: dropped %s (%s)",
            ", ".join(map(repr, dropped)),
            "no comparison left: the default family applies"
            if not canonical
            else f"removed norms: {', '.join(dict.fromkeys(dropped.values()))}",
        )
    gate, collapse_margin = _gate_keys(raw, problems)
    return StatsSection(tuple(canonical), alpha, margin, gate, collapse_margin), problems


def _alpha_and_margin(raw: dict, problems: list[str]) -> tuple[float, float | None]:
    alpha = raw.get("alpha", 0.05)
    problem = _alpha_problem(alpha)
    if problem:
        problems.append(problem)
        alpha = 0.05
    margin = raw.get("equivalence_margin")
    if margin is not None and (not _is_number(margin) or margin <= 0):
        problems.append(f"stats.equivalence_margin={margin!r} must be a number > 0, e.g. 0.01")
        margin = None
    return float(alpha), None if margin is None else float(margin)


def _gate_keys(raw: dict, problems: list[str]) -> tuple[float, float]:
    """``stats.gate`` in (0, 1] and ``stats.collapse_margin`` in [0, 1) (defaults 0.9, 0.05)."""
    gate = raw.get("gate", 0.9)
    if not _is_number(gate) or not 0 < gate <= 1:
        problems.append(f"stats.gate={gate!r} must be a training accuracy in (0, 1], e.g. 0.9")
        gate = 0.9
    collapse = raw.get("collapse_margin", 0.05)
    if not _is_number(collapse) or not 0 <= collapse < 1:
        problems.append(
            f"stats.collapse_margin={collapse!r} must be an accuracy margin in [0, 1), e.g. 0.05"
        )
        collapse = 0.05
    return float(gate), float(collapse)


def _alpha_problem(alpha: Any) -> str | None:
    """The one message for a bad ``stats.alpha`` (config loader and report builder alike)."""
    if not _is_number(alpha) or not 0 < alpha < 1:
        return f"stats.alpha={alpha!r} must be a number in (0, 1), e.g. 0.05"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _entry(
    text: Any,
    norms: Sequence[NormSpec],
    stats_modes: list[str],
    values: dict[str, list[str]],
    removed: Collection[NormSpec],
    problems: list[str],
    dropped: dict[str, str],
) -> list[Comparison]:
    """The canonical comparisons of one ``primary`` entry (several for a ``*`` rule); an entry
    naming a norm in ``removed`` goes to ``dropped``."""
    try:
        comparison = parse_comparison(text)
    except ValueError as error:
        problems.append(str(error))
        return []
    for key, wanted in comparison.where:
        accepted = values.get(key)
        unknown_values = [v for v in wanted if accepted is not None and v not in accepted]
        if unknown_values:
            problems.append(
                f"stats.primary entry {text!r}: {key}={'|'.join(unknown_values)} is not in "
                f"this config's grid; accepted: {accepted}"
            )
    if {comparison.a, comparison.b} <= set(stats_modes):
        return [comparison]
    sides, errors, gone = [], [], []
    for side in (comparison.a, comparison.b):
        try:
            sides.append(_resolve_side(side, norms, stats_modes))
        except ValueError as error:
            removed_label = _removed(side, removed)
            (gone if removed_label else errors).append(removed_label or error)
    if errors:  # a side that was never a norm of the config is an error, removed or not
        problems.append(
            f"stats.primary entry {text!r}: {errors[0]}; both sides must be norms of this "
            f"config or both stats modes of eval.stats_modes {sorted(stats_modes)}"
        )
        return []
    if gone:
        dropped[text] = gone[0]
        return []
    a, b = sides
    if a == b == EVERY:
        problems.append(f"stats.primary entry {text!r}: at most one side may be '{EVERY}'")
        return []
    if EVERY in (a, b):  # every other norm of the grid against the named one
        labels = [n.label for n in norms]
        pairs = (
            [(n, b) for n in labels if n != b] if a == EVERY else [(a, n) for n in labels if n != a]
        )
        return [replace(comparison, a=x, b=y) for x, y in pairs]
    if a == b:
        problems.append(
            f"stats.primary entry {text!r} compares '{a}' with itself; name two different norms"
        )
        return []
    return [replace(comparison, a=a, b=b)]


def _resolve_side(side: str, norms: Sequence[NormSpec], stats_modes: Sequence[str]) -> str:
    """The canonical name or label of a norm side, or ``EVERY`` for the rule."""
    return EVERY if side.strip() == EVERY else resolve_norm(side, norms, stats_modes)


def _removed(side: str, removed: Collection[NormSpec]) -> str | None:
    """The label of the norm an override removed that ``side`` names, or None."""
    try:
        return resolve_norm(side, list(removed)) if removed else None
    except ValueError:
        return None


def resolve_norm(side: str, norms: Sequence[NormSpec], stats_modes: Sequence[str] = ()) -> str:
    """A norm side of a comparison -> the canonical name or label it has in ``norms``.

    ``gn`` -> ``group`` and ``gn(groups=8)`` -> ``group(groups=8)``, as the ``norms:`` section
    canonicalises names. A bare name must name one norm of the config (or the one without
    options, as the report resolves it); options must equal one norm's options exactly.
    Raises ValueError naming the norms the config offers and the closest match (among them and
    ``stats_modes``).
    """
    from normzoo.registry import canonical_name

    match = _SIDE.match(side.strip())
    try:
        name = canonical_name(match[1]) if match else None
    except ValueError:
        name = None
    written = match and match[2]  # the options text, None for a bare name
    candidates = [n for n in norms if n.name == name]
    if name and written is None:
        if len(candidates) == 1 or any(not n.options for n in candidates):
            return name
        if candidates:
            raise ValueError(
                f"'{side}' names {len(candidates)} norms of this config "
                f"{[n.label for n in candidates]}; name one by its label"
            )
    elif name:
        options = _parse_options(written)
        for spec in candidates:
            if options is not None and _same_options(options, spec.options):
                return spec.label
    canonical = side if not name else name if written is None else f"{name}({written})"
    labels = [n.label for n in norms]
    offered = list(dict.fromkeys([*labels, *(n.name for n in norms), *stats_modes]))
    raise ValueError(
        f"'{side}' is not a norm of this config{suggest(canonical, offered)}; norms: {labels}"
    )


def _parse_options(text: str) -> dict[str, str] | None:
    """``key=value,key=value`` -> {key: value text}; None if it does not read so."""
    options = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip() or key.strip() in options:
            return None
        options[key.strip()] = value.strip()
    return options


def _same_options(written: dict[str, str], options: dict) -> bool:
    return set(written) == set(options) and all(
        _same_value(text, options[key]) for key, text in written.items()
    )


def _same_value(text: str, value: Any) -> bool:
    """Whether an option value written in a label (``8``, ``1e-5``, ``true``) equals ``value``."""
    if text == str(value):
        return True
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(text) == value
        except ValueError:
            return False
    return False
