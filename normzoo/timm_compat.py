"""The one place where normzoo relies on timm internals.

timm's ``get_norm_act_layer`` (efficientnet, regnet, densenet, ...) accepts a norm class only if
it is in its private set ``timm.layers.create_norm_act._NORM_ACT_TYPES``; otherwise it maps the
class by its lower-cased name to *timm's* norm+act layers, or rejects it. ``act_layer`` is bound
only for types in ``_NORM_ACT_REQUIRES_ARG``. normzoo adds its factory type to both sets, then
checks that timm really builds a zoo norm+act layer with the model's activation. If timm's
internals differ, this raises (never a warning that a user would miss while timm silently builds
its own layers instead of the zoo's).
"""

from __future__ import annotations

import functools
import importlib.metadata

from torch import nn

__all__ = ["TESTED_TIMM", "register_norm_act_type"]

# timm versions this was tested with: [first, last) (tested: 1.0.31, the lock file's version)
TESTED_TIMM = ((1, 0), (1, 1))


def _timm_version() -> str:
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout of timm
        import timm  # local: only for a timm without package metadata

        return getattr(timm, "__version__", "unknown")


def _in_tested_range(version: str) -> bool:
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return TESTED_TIMM[0] <= major_minor < TESTED_TIMM[1]


def _incompatible(what: str) -> RuntimeError:
    version = _timm_version()
    tested = "{}.{} <= timm < {}.{}".format(*TESTED_TIMM[0], *TESTED_TIMM[1])
    status = "inside" if _in_tested_range(version) else "outside"
    return RuntimeError(
        f"normzoo cannot register its norm layers with timm {version} ({status} the tested "
        f"range {tested}): {what}. timm models that build norm+act layers would silently use "
        f"timm's own layers instead of the zoo's. Install a tested timm "
        f"(pip install 'timm>={TESTED_TIMM[0][0]}.{TESTED_TIMM[0][1]},"
        f"<{TESTED_TIMM[1][0]}.{TESTED_TIMM[1][1]}'), or build the model with timm's own norm "
        f"and call normzoo.convert(model, name) afterwards"
    )


@functools.cache
def register_norm_act_type(factory: type) -> bool:
    """Register ``factory`` with timm's norm+act resolution; False when timm is not installed.

    ``factory(num_features, norm="batch", act_layer=...)`` must build a zoo norm+act layer.
    Raises RuntimeError (naming the timm version and what to do) when timm's private sets are
    missing or when, after registration, timm still does not build a zoo layer with the
    requested activation.
    """
    try:  # local: timm is imported only when a model asks for zoo layers (start-up time)
        from timm.layers import create_norm_act, get_norm_act_layer
    except ImportError:
        return False
    types_ = getattr(create_norm_act, "_NORM_ACT_TYPES", None)
    needs_act = getattr(create_norm_act, "_NORM_ACT_REQUIRES_ARG", None)
    if not isinstance(types_, set) or not isinstance(needs_act, set):
        raise _incompatible(
            "timm.layers.create_norm_act no longer has the sets _NORM_ACT_TYPES and "
            "_NORM_ACT_REQUIRES_ARG"
        )
    types_.add(factory)
    needs_act.add(factory)
    try:
        probe = get_norm_act_layer(functools.partial(factory, norm="batch"), act_layer=nn.ReLU)(4)
    except Exception as err:  # any failure inside timm's resolution means its internals differ
        raise _incompatible(f"get_norm_act_layer failed on the zoo factory ({err!r})") from err
    if not type(probe).__module__.startswith("normzoo.") or not isinstance(
        getattr(probe, "act", None), nn.ReLU
    ):
        raise _incompatible(
            f"get_norm_act_layer built {type(probe).__name__} with act="
            f"{type(getattr(probe, 'act', None)).__name__}, not a zoo layer with ReLU"
        )
    return True
