"""The edges of a config: YAML text, ``--set`` overrides, and norms as users write them.

Overrides follow what a user means: ``--set norms=[batch, group]`` on a preset keeps the
preset's options of a norm named bare (group(groups=8) in ``quick``) and narrows the declared
primary family to the norms left; ``--set model.backbone=...`` drops the model options the new
backbone does not take. Each adjustment is logged as a note. Norm labels as reports print them
(``group(groups=8)``) are accepted wherever a norm is named.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from normzoo.bench.plan.config import fields
from normzoo.bench.plan.config.sections import SECTIONS, TOP_LEVEL_KEYS
from normzoo.bench.plan.config.specs import NormSpec
from normzoo.bench.plan.config.stats_section import StatsSection
from normzoo.registry import available, canonical_name

log = logging.getLogger(__name__)
_LABEL = re.compile(r"^([^()]+?)\s*\((.*)\)$")  # a norm label as input: name(key=value,...)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, with numbers read as people write them (and YAML 1.2 reads them).

    YAML 1.1 reads ``1e-3`` and ``3e4`` as strings (it wants a dot and a signed exponent); here
    any decimal with an exponent is a float.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; a syntax error becomes one ValueError with ``source``:line:column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where}: invalid YAML: {problem}") from None


def _norm_item(item: Any, where: str, problems: list[str]) -> NormSpec | None:
    """One entry of ``norms:``: a name, a label as reports print it, or a mapping."""
    sizes = None
    if isinstance(item, dict) and "name" in item:
        keys = ["name", "options", "train_batch_sizes"]
        for key in sorted(set(item) - set(keys), key=str):
            problems.append(f"{where}: unknown key '{key}'{fields.suggest(key, keys)}")
        name, options = item["name"], item.get("options") or {}
        if not isinstance(options, dict):
            problems.append(f"{where}.options: expected a mapping, got {options!r}")
            return None
        sizes = item.get("train_batch_sizes")
        if sizes is not None:
            try:
                sizes = TypeAdapter(fields.many(fields.integer(ge=1))).validate_python(sizes)
            except ValidationError:
                problems.append(
                    f"{where}.train_batch_sizes={sizes!r} must be a non-empty list of values, "
                    "each an integer >= 1"
                )
                return None
    elif isinstance(item, str):
        name, options = _norm_label(item, where, problems)
        if options is None:
            return None
    else:
        problems.append(
            f"{where}: expected a norm name or {{name: ..., options: {{...}}}}, got {item!r}"
        )
        return None
    try:
        return NormSpec(canonical_name(name), dict(options), sizes)
    except (ValueError, TypeError):
        problems.append(f"{where}: {fields.unknown('norm', name, available())}")
        return None


def _norm_label(text: str, where: str, problems: list[str]) -> tuple[str, dict | None]:
    """``group`` -> (group, {}); ``group(groups=8)`` as reports print it -> (group, {groups: 8})."""
    match = _LABEL.match(text.strip())
    if not match:
        return text, {}
    options: dict = {}
    for part in filter(None, (p.strip() for p in match[2].split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            problems.append(f"{where} '{text}': options must read key=value, e.g. group(groups=8)")
            return match[1], None
        options[key.strip()] = read_yaml(value, f"{where} {key.strip()}")
    return match[1], options


def parse_norms(raw: Any, problems: list[str]) -> tuple[NormSpec, ...]:
    """Norms with canonical names; an alias of a norm listed before is a problem, not a merge."""
    norms: list[NormSpec] = []
    written: dict[str, tuple[int, str]] = {}  # label -> (index, name as written)
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    if not items:
        problems.append("norms is empty; list at least one norm (e.g. batch, group)")
    for i, item in enumerate(items):
        spec = _norm_item(item, f"norms[{i}]", problems)
        if spec is None:
            continue
        name = item["name"] if isinstance(item, dict) else item
        if spec.label in written:
            first, first_name = written[spec.label]
            problems.append(
                f"norms[{i}] '{name}' names the same layer as norms[{first}] '{first_name}' (both "
                f"are '{spec.label}'); list each norm once"
            )
            continue
        written[spec.label] = (i, name)
        norms.append(spec)
    return tuple(norms)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` (value parsed as YAML) to a raw config dict in place."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value (e.g. train.epochs=2), got '{assignment}'")
    dotted, text = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    value = read_yaml(text, f"--set {dotted.strip()}")
    if keys[0] not in TOP_LEVEL_KEYS:
        raise ValueError(
            f"--set: unknown key '{keys[0]}'{fields.suggest(keys[0], TOP_LEVEL_KEYS)}; "
            f"sections: {', '.join(TOP_LEVEL_KEYS)}"
        )
    section = {"stats": StatsSection}.get(keys[0], SECTIONS.get(keys[0]))
    if section is not None and len(keys) > 1:
        names = [f.name for f in dataclasses.fields(section)]
        if keys[1] not in names:
            raise ValueError(
                f"--set: unknown key '{keys[0]}.{keys[1]}'{fields.suggest(keys[1], names)}; "
                f"keys of '{keys[0]}': {', '.join(names)}"
            )
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _specs(raw: Any) -> list[NormSpec]:
    """The norms of a raw ``norms:`` value that parse (problems are reported later)."""
    return list(parse_norms(raw, [])) if raw is not None else []


def overridden_norms(written: dict, raw: dict) -> list[NormSpec]:
    """Adjust ``raw["norms"]`` after overrides to what the user means; the norms removed.

    A norm named bare in the override (``group``) that the file lists with options
    (``group(groups=8)``) keeps those options, with a note (``group()`` asks for the layer's
    defaults). Returns the file's norms that the override took out of the grid, so that the
    declared primary family can narrow instead of failing.
    """
    before, after = written.get("norms"), raw.get("norms")
    if before is None or after == before or not isinstance(after, (list, tuple)):
        return []
    preset = _specs(before)
    items = list(after)
    for i, item in enumerate(items):
        if not isinstance(item, str) or _LABEL.match(item.strip()):
            continue
        try:
            name = canonical_name(item)
        except (ValueError, TypeError):
            continue
        same = [n for n in preset if n.name == name]
        if len(same) == 1 and same[0].options:
            items[i] = dataclasses.asdict(same[0])
            if items[i]["train_batch_sizes"] is None:
                del items[i]["train_batch_sizes"]
            log.warning(
                "norms: '%s' keeps the config's options, %s ('%s()' for the layer's defaults)",
                item,
                same[0].label,
                item,
            )
    raw["norms"] = items
    kept = {n.label for n in _specs(items)}
    return [n for n in preset if n.label not in kept]


def _backbone_options(backbone: str) -> set[str] | None:
    """The model options a backbone takes (None: unknown, a timm model takes its own)."""
    from normzoo import models  # torch, only when a backbone changes

    classes = {"small_cnn": models.SmallCNN, "resnet_tiny": models.ResNetTiny, "mlp": models.MLP}
    if backbone not in classes:
        return None
    taken = set(inspect.signature(classes[backbone]).parameters)
    return (taken - {"norm", "num_classes", "in_channels", "norm_options"}) | {"conv"}


def overridden_backbone(written: dict, raw: dict) -> None:
    """After ``--set model.backbone=...``, drop the file's model options the new backbone does
    not take (e.g. small_cnn's ``widths`` for mlp), with a note; options set by an override
    stay (and are validated)."""
    before, after = written.get("model") or {}, raw.get("model") or {}
    if not isinstance(before, dict) or not isinstance(after, dict):
        return
    if after.get("backbone") == before.get("backbone") or after.get("options") != before.get(
        "options"
    ):
        return
    options = after.get("options")
    backbone = after.get("backbone")
    if not isinstance(options, dict) or not options or not isinstance(backbone, str):
        return
    taken = _backbone_options(backbone)
    if taken is None:
        taken = {"conv"} if _backbone_options(str(before.get("backbone"))) is not None else None
    if taken is None:
        return
    dropped = sorted(set(options) - taken, key=str)
    if dropped:
        after["options"] = {k: v for k, v in options.items() if k in taken}
        log.warning(
            "model.options %s dropped: backbone '%s' does not take them (they were for '%s')",
            dropped,
            backbone,
            before.get("backbone"),
        )
