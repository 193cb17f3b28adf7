import os

import pytest

from normzoo._environ import scoped_environ


def test_values_are_set_inside_and_restored_after(monkeypatch):
    monkeypatch.setenv("NZ_A", "old")
    monkeypatch.delenv("NZ_B", raising=False)
    with scoped_environ({"NZ_A": "new", "NZ_B": "set"}):
        assert os.environ["NZ_A"] == "new"
        assert os.environ["NZ_B"] == "set"
    assert os.environ["NZ_A"] == "old"
    assert "NZ_B" not in os.environ


def test_named_variables_set_inside_the_block_are_put_back(monkeypatch):
    monkeypatch.delenv("NZ_C", raising=False)
    monkeypatch.setenv("NZ_D", "kept")
    with scoped_environ({"NZ_A": "x"}, restore=("NZ_C", "NZ_D")):
        os.environ["NZ_C"] = "leaked"
        os.environ["NZ_D"] = "changed"
    assert "NZ_C" not in os.environ
    assert os.environ["NZ_D"] == "kept"


def test_restored_after_an_exception(monkeypatch):
    monkeypatch.setenv("NZ_A", "old")
    with pytest.raises(RuntimeError), scoped_environ({"NZ_A": "new"}):
        raise RuntimeError("boom")
    assert os.environ["NZ_A"] == "old"
