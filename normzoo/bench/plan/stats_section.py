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

A side names two stats modes exactly as ``eval.stats_modes`` does, or a norm as ``norms:`` does:
by name or alias (``gn``, ``Group-Norm``), or by label with options (``gn(groups=8)``) where a
name alone is ambiguous. The parsed section keeps each comparison in canonical form
(``group(groups=8) vs batch``): that is what is stored with the runs and what the report shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from normzoo.bench.plan.specs import NormSpec
from normzoo.bench.plan.validate import suggest

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


@dataclass(frozen=True)
class StatsSection:
    primary: tuple[str, ...] = ()
    alpha: float = 0.05
    equivalence_margin: float | None = None
    gate: float = 0.9  # training-accuracy gate of a trained train condition, in (0, 1]
    collapse_margin: float = 0.05  # collapsed: test accuracy within this of chance (>= 0)

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
) -> tuple[StatsSection, list]:
    """The ``stats:`` mapping -> (StatsSection, problems); sides must be norms or stats modes.

    ``norms`` are the config's parsed norms; each comparison is kept in canonical form (norm
    aliases resolved with :func:`resolve_norm`, stats modes as written). ``values`` maps a
    ``where`` key to the values the config's grid has (checked when given).
    """
    problems: list[str] = []
    if raw is None:
        return StatsSection(), problems
    if not isinstance(raw, dict):
        return StatsSection(), [f"stats must be a mapping with keys {list(STATS_KEYS)}"]
    unknown = sorted(set(raw) - set(STATS_KEYS))
    if unknown:
        problems.append(f"stats: unknown key(s) {unknown}; accepted: {list(STATS_KEYS)}")
    alpha = raw.get("alpha", 0.05)
    if not isinstance(alpha, int | float) or not 0 < alpha < 1 or isinstance(alpha, bool):
        problems.append(f"stats.alpha={alpha!r} must be a number in (0, 1), e.g. 0.05")
        alpha = 0.05
    margin = raw.get("equivalence_margin")
    if margin is not None and (
        not isinstance(margin, int | float)
        or isinstance(margin, bool)
        or not math.isfinite(margin)
        or margin <= 0
    ):
        problems.append(f"stats.equivalence_margin={margin!r} must be a number > 0, e.g. 0.01")
        margin = None
    gate, collapse_margin = _gate_keys(raw, problems)
    primary = raw.get("primary", [])
    if isinstance(primary, str):
        primary = [primary]
    if not isinstance(primary, list | tuple):
        problems.append("stats.primary must be a list of 'A vs B' strings")
        primary = []
    canonical: list[str] = []
    seen: dict[tuple, str] = {}  # (sides, where) -> the entry as written
    for text in primary:
        try:
            comparison = parse_comparison(text)
        except ValueError as error:
            problems.append(str(error))
            continue
        for key, wanted in comparison.where:
            accepted = (values or {}).get(key)
            unknown_values = [v for v in wanted if accepted is not None and v not in accepted]
            if unknown_values:
                problems.append(
                    f"stats.primary entry {text!r}: {key}={'|'.join(unknown_values)} is not in "
                    f"this config's grid; accepted: {accepted}"
                )
        sides = {comparison.a, comparison.b}
        if not sides <= set(stats_modes):
            try:
                comparison = replace(
                    comparison,
                    a=resolve_norm(comparison.a, norms, stats_modes),
                    b=resolve_norm(comparison.b, norms, stats_modes),
                )
            except ValueError as error:
                problems.append(
                    f"stats.primary entry {text!r}: {error}; both sides must be norms of this "
                    f"config or both stats modes of eval.stats_modes {sorted(stats_modes)}"
                )
                continue
            if comparison.a == comparison.b:
                problems.append(
                    f"stats.primary entry {text!r} compares '{comparison.a}' with itself; "
                    "name two different norms"
                )
                continue
        identity = (frozenset((comparison.a, comparison.b)), comparison.where)
        if identity in seen:
            problems.append(
                f"stats.primary entry {text!r} is the same comparison as "
                f"{seen[identity]!r} ('{comparison.label}'); list each comparison once"
            )
            continue
        seen[identity] = text
        canonical.append(comparison.label)
    section = StatsSection(
        tuple(canonical),
        float(alpha),
        None if margin is None else float(margin),
        gate,
        collapse_margin,
    )
    return section, problems


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _gate_keys(raw: dict, problems: list[str]) -> tuple[float, float]:
    """``stats.gate`` in (0, 1] and ``stats.collapse_margin`` in [0, 1) (defaults 0.9, 0.05)."""
    gate = raw.get("gate", 0.9)
    if not _number(gate) or not 0 < gate <= 1:
        problems.append(f"stats.gate={gate!r} must be a training accuracy in (0, 1], e.g. 0.9")
        gate = 0.9
    collapse = raw.get("collapse_margin", 0.05)
    if not _number(collapse) or not 0 <= collapse < 1:
        problems.append(
            f"stats.collapse_margin={collapse!r} must be an accuracy margin in [0, 1), e.g. 0.05"
        )
        collapse = 0.05
    return float(gate), float(collapse)


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
