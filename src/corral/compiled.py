"""Which of corral's request-path modules run compiled (mypyc, see setup.py), and the decorator through which
those modules tell mypyc how their classes are used.

The same .py files are the pure-Python build: a compiled module is a C extension built from its .py file, which
the import system prefers when both are there.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec
from typing import TypeVar

__all__ = ["COMPILED_MODULES", "compiled_modules", "describe_build", "mypyc_attr"]

# The modules setup.py compiles (it lists them by path; tests/unit/test_compiled.py keeps the two lists equal).
COMPILED_MODULES = (
    "corral.http.h1",
    "corral.http.asgi",
    "corral.http.ledger",
    "corral.http.flow",
    "corral.http.state",
    "corral.http.wsgi",
    "corral.http.wsgi_environ",
)

_Class = TypeVar("_Class")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # mypy_extensions comes with mypy; without it, nothing compiled this build either

    def mypyc_attr(*_attrs: str, **_flags: object) -> Callable[[_Class], _Class]:
        """Only mypyc reads these flags (at compile time): at run time the class is left as it is."""
        return lambda cls: cls


def compiled_modules() -> list[str]:
    """The modules of COMPILED_MODULES that load compiled, found without importing them."""
    compiled = []
    for name in COMPILED_MODULES:
        spec = find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(tuple(EXTENSION_SUFFIXES)):
            compiled.append(name)
    return compiled


def describe_build() -> str:
    """One phrase for `corral --version`."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED_MODULES):
        return "request path compiled with mypyc"
    return "compiled with mypyc: " + ", ".join(compiled)
