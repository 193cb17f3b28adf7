"""The Examples in the public API's docstrings run as doctests, and every public entry point and
registered layer class has one."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import normzoo
from normzoo.registry import get_spec

MODULES = [
    "normzoo.registry",
    "normzoo.interop",
    "normzoo.convert",
    "normzoo.export",
    "normzoo.testtime.modes",
    "normzoo.testtime.recompute",
    "normzoo.testtime.adapt",
    "normzoo.layers.batch",
    "normzoo.layers.ghost",
    "normzoo.layers.renorm",
    "normzoo.layers.group",
    "normzoo.layers.identity",
    "normzoo.layers.frn",
    "normzoo.layers.evonorm",
    "normzoo.layers.rms",
    "normzoo.functional.checks",
    "normzoo.functional.moments",
    "normzoo.functional.batch",
    "normzoo.functional.renorm",
    "normzoo.functional.group",
    "normzoo.functional.rms",
]

PUBLIC_API = [
    "available",
    "create",
    "norm_layer",
    "convert",
    "stats_mode",
    "recompute_stats",
    "adapt",
    "fold",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module_name} has no docstring examples"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def _has_example(obj) -> bool:
    return any(t.examples for t in doctest.DocTestFinder(recurse=False).find(obj))


@pytest.mark.parametrize("name", PUBLIC_API)
def test_public_function_has_a_structured_docstring_with_an_example(name):
    function = getattr(normzoo, name)
    doc = function.__doc__
    takes_arguments = bool(inspect.signature(function).parameters)
    sections = ("Args:", "Returns:", "Raises:", "Examples:") if takes_arguments else ("Returns:",)
    for section in sections:
        assert section in doc, f"normzoo.{name}'s docstring has no {section} section"
    assert _has_example(getattr(normzoo, name))


@pytest.mark.parametrize("name", normzoo.available())
def test_registered_layer_class_has_a_structured_docstring_with_an_example(name):
    cls = get_spec(name).cls
    for section in ("Args:", "Shape:", "Raises:", "Examples:"):
        assert section in cls.__doc__, f"{cls.__name__}'s docstring has no {section} section"
    assert _has_example(cls)
    assert cls.__module__ in MODULES, f"{cls.__module__} is missing from MODULES"


def test_a_wrong_example_fails():
    """The runner reports a failing example (it is not a no-op)."""

    def wrong():
        """>>> 1 + 1
        3
        """

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(wrong, "wrong", globs={}):
        runner.run(test, out=lambda _: None)
    assert runner.summarize(verbose=False).failed == 1
