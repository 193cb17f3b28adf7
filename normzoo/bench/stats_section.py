"""The ``stats:`` section of a config: the experiment's declared primary family.

```yaml
stats:
  primary:                       # the comparisons the experiment is about, declared before any run
    - group vs batch             # two norms: at every train condition, default test condition
    - batch vs running where shift=fog and severity=5   # two stats modes, some conditions
  alpha: 0.05
  equivalence_margin: 0.01       # optional: TOST equivalence within +-0.01 accuracy
```
Holm corrects over every comparison the family expands to, across conditions; everything else
the report prints is exploratory. Without ``primary`` the family is every norm vs ``batch``
(or the first norm) at every train condition on clean i.i.d. test batches of the largest size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

WHERE_KEYS = (
    "train_batch_size",
    "train_composition",
    "test_batch_size",
    "stats_mode",
    "shift",
    "severity",
    "test_composition",
)
STATS_KEYS = ("primary", "alpha", "equivalence_margin")


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
    raw: Any, norms: list[str], stats_modes: list[str], values: dict[str, list[str]] | None = None
) -> tuple[StatsSection, list]:
    """The ``stats:`` mapping -> (StatsSection, problems); names must be norms or stats modes.

    ``values`` maps a ``where`` key to the values the config's grid has (checked when given).
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
    primary = raw.get("primary", [])
    if isinstance(primary, str):
        primary = [primary]
    if not isinstance(primary, list | tuple):
        problems.append("stats.primary must be a list of 'A vs B' strings")
        primary = []
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
        if not (sides <= set(norms) or sides <= set(stats_modes)):
            problems.append(
                f"stats.primary entry {text!r}: both sides must be norms of this config "
                f"{sorted(norms)} or both stats modes of eval.stats_modes {sorted(stats_modes)}"
            )
    section = StatsSection(
        tuple(str(p) for p in primary), float(alpha), None if margin is None else float(margin)
    )
    return section, problems
