"""The typed specs a config is made of and that the rest of the engine passes around: a norm
(name + options) and a batch composition. They import nothing of the engine, so the config, its
statistics section and the grid can all use them without import cycles."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NormSpec:
    """A normalization layer name plus constructor options, as `normzoo.create` takes them.

    ``train_batch_sizes`` (optional) restricts the norm to some of ``train.batch_sizes``, e.g. a
    ghost-batch arm run only at the fixed optimization batch; None = every train batch size.
    """

    name: str
    options: dict = field(default_factory=dict)
    train_batch_sizes: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        """Readable name, e.g. ``group(groups=8)``."""
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class Composition:
    """How samples are grouped into batches: i.i.d., label-skewed (Dirichlet alpha), k classes
    with equal counts per batch (``classes``), k outliers per batch, mixed corruptions."""

    name: str = "iid"
    alpha: float | None = None
    k: int | None = None

    @property
    def label(self) -> str:
        """The string stored in the results, e.g. ``iid``, ``label_skew(alpha=0.1)``."""
        if self.name == "label_skew":
            return f"label_skew(alpha={self.alpha:g})"
        if self.name in ("outliers", "classes"):
            return f"{self.name}(k={self.k})"
        return self.name
