"""The Examples in the statistics package's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "normzoo.stats.collapse",
    "normzoo.stats.corrections",
    "normzoo.stats.detectable",
    "normzoo.stats.improvement",
    "normzoo.stats.intervals",
    "normzoo.stats.paired",
    "normzoo.stats.permutation",
    "normzoo.stats.ranks",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
