"""The typed specs a config is made of and that the rest of the engine passes around: a norm
(name + options), a batch composition and a test-time stats mode.

They are pydantic dataclasses (validated on construction, frozen, ``dataclasses.asdict`` gives
the stored form) and import nothing of the engine, so the config, its statistics section and
the grid can all use them without import cycles. Each has a ``label``, the string stored in the
results and shown in reports, made by the one function :func:`spec_label`; nothing parses a
label back into a spec.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from normzoo.bench.plan.config.fields import finite_number, integer
from normzoo.bench.plan.schema import COMPOSITIONS, EVAL_STATS_MODES, MIX

FROZEN = ConfigDict(extra="forbid")  # with @dataclass(frozen=True): immutable, no unknown keys

# The parameters each composition takes, with what they mean (the only accepted ones).
COMPOSITION_PARAMETERS: dict[str, dict[str, str]] = {
    "iid": {},
    "mixed_corruption": {},
    "label_skew": {"alpha": "Dirichlet concentration; 0 = one class per batch"},
    "classes": {"k": "classes per batch"},
    "outliers": {"k": "outliers per batch"},
}


def spec_label(name: str, params: dict[str, str]) -> str:
    """The canonical label of a spec: ``name``, or ``name(key=value,...)`` with sorted keys.

    ``params`` holds each value already written as the spec stores it (see the specs' labels).
    """
    if not params:
        return name
    return f"{name}({','.join(f'{k}={v}' for k, v in sorted(params.items()))})"


def custom_error(message: str) -> PydanticCustomError:
    """A validation error whose message the config loader prints as is (``{where}`` is filled
    with the field's location)."""
    return PydanticCustomError("normzoo", "{message}", {"message": message})


@dataclass(frozen=True, config=FROZEN)
class NormSpec:
    """A normalization layer name plus constructor options, as `normzoo.create` takes them.

    ``train_batch_sizes`` (optional) restricts the norm to some of ``train.batch_sizes``, e.g. a
    ghost-batch arm run only at the fixed optimization batch; None = every train batch size.
    """

    name: str = Field(description="canonical norm name (normzoo.available())")
    options: dict[str, Any] = Field(
        default_factory=dict, description="constructor options of the layer"
    )
    train_batch_sizes: tuple[int, ...] | None = Field(
        None, description="only these of train.batch_sizes (null: all)"
    )

    @property
    def label(self) -> str:
        """Readable name, e.g. ``group(groups=8)`` (option values as ``str`` writes them)."""
        return spec_label(self.name, {k: str(v) for k, v in self.options.items()})


@dataclass(frozen=True, config=FROZEN)
class Composition:
    """How samples are grouped into batches: i.i.d., label-skewed (Dirichlet ``alpha``), ``k``
    classes with equal counts per batch (``classes``), ``k`` outliers per batch, mixed
    corruptions. A parameter that does not apply to the composition is rejected."""

    name: str = Field("iid", description=f"one of {', '.join(COMPOSITIONS)}")
    # alpha is stored as a float whatever was written (as the run keys always hashed it)
    alpha: Annotated[float, BeforeValidator(finite_number)] | None = Field(
        None, description="label_skew: Dirichlet concentration >= 0"
    )
    k: integer() | None = Field(None, description="classes/outliers: classes or outliers per batch")

    @model_validator(mode="after")
    def _parameters_apply(self) -> Composition:
        accepted = COMPOSITION_PARAMETERS.get(self.name)
        if accepted is None:
            return self  # an unknown name is reported by the section that lists the allowed
        given = {p for p in ("alpha", "k") if getattr(self, p) is not None}
        extra, missing = sorted(given - set(accepted)), sorted(set(accepted) - given)
        if extra:
            takes = ", ".join(accepted) or "no parameters"
            raise custom_error(
                f"{{where}}: {self.name} takes {takes}, not {', '.join(extra)}; remove "
                f"{', '.join(extra)}"
            )
        for param in missing:
            raise custom_error(f"{{where}}: {self.name} needs {param} ({accepted[param]})")
        if self.alpha is not None and not self.alpha >= 0:
            raise custom_error(
                f"{{where}}.alpha={self.alpha!r} must be a number >= 0 ({accepted['alpha']})"
            )
        if self.k is not None and self.k < 1:
            raise custom_error(f"{{where}}.k={self.k!r} must be an integer >= 1 ({accepted['k']})")
        return self

    @property
    def label(self) -> str:
        """The string stored in the results, e.g. ``iid``, ``label_skew(alpha=0.1)``."""
        params = {"alpha": f"{self.alpha:g}"} if self.alpha is not None else {}
        if self.k is not None:
            params["k"] = str(self.k)
        return spec_label(self.name, params)


@dataclass(frozen=True, config=FROZEN)
class StatsMode:
    """What a test condition normalizes with: a ``normzoo.stats_mode`` or ``normzoo.adapt``
    method; ``prior`` is set for one point of a ``mix`` prior sweep (``eval.mix_prior`` a list,
    Schneider et al. 2020), None when the mode takes ``eval.mix_prior`` as configured."""

    name: str = Field(description=f"one of {', '.join(EVAL_STATS_MODES)}")
    prior: float | None = Field(None, description="mix: pseudo-samples of the sweep point")

    @model_validator(mode="after")
    def _known(self) -> StatsMode:
        if self.name not in EVAL_STATS_MODES:
            raise custom_error(
                f"{{where}}: unknown stats mode {self.name!r}; allowed: "
                f"{', '.join(EVAL_STATS_MODES)} (a prior sweep is StatsMode('mix', prior))"
            )
        if self.prior is not None and self.name != MIX:
            raise custom_error(f"{{where}}: only {MIX} takes a prior, not {self.name}")
        return self

    @property
    def label(self) -> str:
        """The string stored in the results, e.g. ``running``, ``mix(prior=16)``."""
        return spec_label(self.name, {} if self.prior is None else {"prior": f"{self.prior:g}"})
