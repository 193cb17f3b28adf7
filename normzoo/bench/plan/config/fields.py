"""The value types of config fields (pydantic annotations) and the one-line error messages.

A field's accepted values are declared once, as a pydantic type with bounds and a JSON-schema
form; :func:`describe` turns that JSON schema into words (``an integer >= 1``), for the error
messages and for the generated reference (``docs/config.md``) alike. :func:`problems` turns a
pydantic ``ValidationError`` into our format: one line per field, the bad value, what is
allowed, a did-you-mean for unknown keys and names.
"""

from __future__ import annotations

import difflib
import math
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

MAX_NAME_LENGTH = 100  # experiment names become directory, W&B group and file names

Flag = StrictBool  # true or false, never 1/"yes"


def suggest(word: Any, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown(kind: str, value: Any, allowed: Any) -> str:
    """``unknown <kind> 'value' (did you mean ...); allowed: ...``."""
    listing = ", ".join(map(str, allowed))
    return f"unknown {kind} '{value}'{suggest(value, allowed)}; allowed: {listing}"


def _as_number(value: Any, infinite: bool) -> Any:
    """A number as written (an int stays an int: it is hashed as written); no bool, text, NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError("not a number")
    if math.isinf(value) and not (infinite and value > 0):
        raise ValueError("not finite")
    return value


def finite_number(value: Any) -> Any:
    """A finite number as written (no bool, text, NaN or infinity)."""
    return _as_number(value, infinite=False)


def _as_int(value: Any) -> int:
    """An int; an integral float (``3e4``, as YAML reads it) is taken as the int."""
    value = _as_number(value, infinite=False)
    if not float(value).is_integer():
        raise ValueError("not an integer")
    return int(value)


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> dict:
    keys = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
    return {k: v for k, v in zip(keys, (ge, gt, le, lt), strict=True) if v is not None}


def integer(ge: int | None = None, le: int | None = None) -> Any:
    """An integer type with bounds (an integral float is accepted as the int)."""
    schema = {"type": "integer", **_bounds(ge, None, le, None)}
    return Annotated[int, BeforeValidator(_as_int), Field(ge=ge, le=le), WithJsonSchema(schema)]


def number(
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    infinite: bool = False,
) -> Any:
    """A real-number type with bounds; ``infinite`` also accepts ``.inf``. Kept as written."""
    schema = {"type": "number", **_bounds(ge, gt, le, lt)}
    if infinite:
        schema["x-infinite"] = True
    return Annotated[
        int | float,
        BeforeValidator(partial(_as_number, infinite=infinite)),
        Field(ge=ge, gt=gt, le=le, lt=lt),
        WithJsonSchema(schema),
    ]


def choice(values: tuple[str, ...], noun: str) -> Any:
    """One of ``values`` (the vocabulary in ``schema``); ``noun`` names it in errors."""
    return Annotated[Literal[values], Field(json_schema_extra={"x-noun": noun})]


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _distinct(values: tuple) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError("values repeat")
    return values


def many(item: Any, distinct: bool = False) -> Any:
    """A non-empty list of ``item`` (a single value is taken as a list of one), as a tuple."""
    check = AfterValidator(_distinct if distinct else tuple)
    schema = {"type": "array", "items": TypeAdapter(item).json_schema(), "minItems": 1}
    if distinct:
        schema["uniqueItems"] = True
    return Annotated[
        tuple[item, ...],
        BeforeValidator(_as_list),
        Field(min_length=1),
        check,
        WithJsonSchema(schema),
    ]


def _check_name(value: str) -> str:
    ok = (
        0 < len(value) <= MAX_NAME_LENGTH
        and value.isprintable()
        and "/" not in value
        and "\\" not in value
        and not value.startswith(".")
        and value.strip() == value
    )
    if not ok:
        raise ValueError("not a name")
    return value


NAME_WORDS = f"a name of 1..{MAX_NAME_LENGTH} printable characters without '/'"
Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "x-words": NAME_WORDS}
    ),
]


def describe(schema: dict) -> str:
    """The values a JSON-schema property accepts, in words, e.g. ``an integer >= 1``."""
    if "x-words" in schema:
        return schema["x-words"]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        optional = len(options) < len(schema["anyOf"])
        if len(options) == 2 and options[1].get("items") == options[0]:  # one or a list
            distinct = "distinct " if options[1].get("uniqueItems") else ""
            words = f"{describe(options[0])} or a non-empty list of {distinct}such values"
        else:
            words = " or ".join(describe(s) for s in options)
        return f"{words} or null" if optional else words
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    kind = schema.get("type")
    if kind == "array":
        distinct = "distinct " if schema.get("uniqueItems") else ""
        size = "a non-empty list" if schema.get("minItems") else "a list"
        return f"{size} of {distinct}values, each {describe(schema.get('items', {}))}"
    if kind in ("integer", "number"):
        return _describe_number(schema)
    return {"boolean": "true or false", "object": "a mapping {key: value}"}.get(kind, "text")


def _describe_number(schema: dict) -> str:
    words = "an integer" if schema["type"] == "integer" else "a number"
    low = [
        (op, schema[k]) for op, k in ((">=", "minimum"), (">", "exclusiveMinimum")) if k in schema
    ]
    high = [
        (op, schema[k]) for op, k in (("<=", "maximum"), ("<", "exclusiveMaximum")) if k in schema
    ]
    if low and high:
        left = "[" if low[0][0] == ">=" else "("
        right = "]" if high[0][0] == "<=" else ")"
        words += f" in {left}{low[0][1]:g}, {high[0][1]:g}{right}"
    elif low or high:
        op, bound = (low or high)[0]
        words += f" {op} {bound:g}"
    if schema.get("x-infinite"):
        words += " (or .inf)"
    return words


def location(prefix: str, loc: tuple) -> str:
    """``train.compositions[0].k`` from a section prefix and a pydantic error location."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" not in part:  # pydantic names union branches `tuple[...]`, `function-after[...]`
            text += f".{part}" if text else part
    return text


def problems(
    error: ValidationError, prefix: str, raw: dict, schema: dict, nested: dict[str, dict]
) -> list[str]:
    """One line per bad field of a section's ``ValidationError``.

    ``schema`` is the section's JSON schema (for what a field accepts), ``raw`` the mapping as
    written (the value shown), ``nested`` the JSON schema of the spec a field holds a list of
    (``compositions``: Composition).
    """
    lines: list[str] = []
    fields = list(schema.get("properties", {}))
    done: set[str] = set()
    for err in error.errors():
        loc, kind = err["loc"], err["type"]
        key = str(loc[0]) if loc else ""
        where = location(prefix, loc[:1])
        if kind == "normzoo":
            line = err["ctx"]["message"].replace("{where}", location(prefix, loc))
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            known = nested.get(key, {}).get("properties", {}) if len(loc) > 1 else fields
            line = f"unknown key '{location(prefix, loc)}'{suggest(loc[-1], known)}"
        elif key in done:
            continue
        elif kind == "literal_error":
            prop = schema["properties"][key]
            prop = prop.get("items", prop)
            line = f"{where}: {unknown(prop.get('x-noun', 'value'), err['input'], prop['enum'])}"
        elif len(loc) > 2 and key in nested:  # a parameter of one spec in a list
            prop = nested[key]["properties"].get(str(loc[2]), {})
            words = f"{describe(prop)} ({prop.get('description', '')})"
            line = f"{location(prefix, loc[:3])}={err['input']!r} must be {words}"
        else:
            prop = schema["properties"].get(key, {})
            line = f"{where}={raw.get(key)!r} must be {describe(prop)}{prop.get('x-hint', '')}"
        done.add(key)
        if line not in lines:
            lines.append(line)
    return lines
