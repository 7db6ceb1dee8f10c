"""Every docstring example in the package runs (doctest), so the examples stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import streamrnn

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(streamrnn.__path__, prefix="streamrnn.")
    # python -m entry points that only forward to another module
    if not m.name.endswith(".__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} example(s) failed in {name}"


def test_the_package_has_examples() -> None:
    """The examples above are collected at all (a module walk that finds none proves nothing)."""
    attempted = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        attempted += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert attempted >= 20, attempted
