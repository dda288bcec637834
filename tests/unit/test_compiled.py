"""The compiled build (setup.py, mypyc) and how corral reports it; the suite itself runs in either build."""

from __future__ import annotations

import ast
import importlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from corral.compiled import COMPILED_MODULES, compiled_modules

REPO = Path(__file__).resolve().parents[2]


def _setup_py_modules() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED_MODULES" for t in node.targets):
            paths = ast.literal_eval(node.value)
            return [path.removeprefix("src/").removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED_MODULES list")


def test_setup_py_compiles_exactly_the_modules_corral_reports_on() -> None:
    assert _setup_py_modules() == list(COMPILED_MODULES)


def test_the_modules_reported_compiled_are_the_ones_that_load_as_extensions() -> None:
    loaded_compiled = [
        name for name in COMPILED_MODULES
        if str(importlib.import_module(name).__file__).endswith(tuple(EXTENSION_SUFFIXES))
    ]  # fmt: skip
    assert compiled_modules() == loaded_compiled


@pytest.mark.skipif(
    not os.environ.get("CORRAL_EXPECT_COMPILED"), reason="runs where the compiled build is tested (make test-compiled)"
)
def test_the_build_under_test_runs_the_whole_request_path_compiled() -> None:
    # Otherwise setup.py fell back to pure Python (`pip wheel -v .` says why), and the compiled build is untested.
    assert compiled_modules() == list(COMPILED_MODULES)
