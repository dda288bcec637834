"""corral's build: the package pyproject.toml describes, with the request path compiled by mypyc when possible.

Compiling is an optimisation, never a requirement. Where mypyc or a C compiler is missing, or either fails, the
install goes on with the very same modules as pure Python and says why; `CORRAL_NO_COMPILE=1` asks for pure
Python. A compiled module is a C extension built from its .py file, which it shadows when both are on the path:
so an editable install (`pip install -e`, the development setup) is always pure Python, and edits take effect.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The modules every request runs through; compiling them cuts corral's own share of a request's instructions.
# The others stay Python: eager.py hooks asyncio internals, and the rest is off the per-request path.
COMPILED_MODULES = [
    "src/corral/http/h1.py",
    "src/corral/http/asgi.py",
    "src/corral/http/ledger.py",
    "src/corral/http/flow.py",
    "src/corral/http/state.py",
    "src/corral/http/wsgi.py",
    "src/corral/http/wsgi_environ.py",
]
NO_COMPILE_VARIABLE = "CORRAL_NO_COMPILE"
GROUP_NAME = "corral"  # mypyc's shared runtime library is corral__mypyc


def _say(message: str) -> None:
    # stderr, so that pip shows it with -v and in the log of a failed install.
    print(f"corral build: {message}", file=sys.stderr)


def _mypyc_extensions() -> list[Any]:
    """The compiled modules as extensions, or none (pure Python) with the reason said."""
    if os.environ.get(NO_COMPILE_VARIABLE, "") not in ("", "0"):
        _say(f"{NO_COMPILE_VARIABLE} is set: pure Python")
        return []
    if platform.python_implementation() != "CPython":
        _say(f"mypyc compiles for CPython, not {platform.python_implementation()}: pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _say(f"mypyc is not available ({exc}): pure Python")
        return []
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        # The mypy settings are pyproject.toml's; third-party packages absent from an isolated build
        # environment are typed as Any, which compiles to the same generic calls the interpreter makes. Only
        # the compiled modules' own errors count (--follow-imports=silent): without those packages, strict
        # checks elsewhere (no Any returned) would fail, and `make test` runs mypy on everything anyway.
        # --no-warn-unused-configs: mypy's note on pyproject.toml's overrides for the modules not compiled
        # here would count as an error too.
        options = ["--python-version", version, "--ignore-missing-imports", "--follow-imports=silent",
                   "--no-warn-unused-configs"]  # fmt: skip
        return mypycify(
            [*options, *COMPILED_MODULES],
            opt_level="3",
            group_name=GROUP_NAME,
        )
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _say(f"mypyc could not compile the modules ({exc!r}): pure Python")
        return []


def _is_compiled_output(directory: str, name: str) -> bool:
    """Whether a built extension is one of ours: mypyc's shared runtime or a compiled module."""
    stem = name.split(".", 1)[0]
    if stem == f"{GROUP_NAME}__mypyc":
        return True
    path = os.path.join(directory, stem).replace(os.sep, "/")
    return any(path.endswith(module.removeprefix("src").removesuffix(".py")) for module in COMPILED_MODULES)


class OptionalBuildExt(build_ext):
    """Builds the compiled modules, or none of them: a C compiler that is missing or fails leaves the install
    pure Python (a compiled module needs the shared runtime library beside it, so it is all or nothing).

    mypyc runs here rather than when setup.py is loaded: pip loads it three times per install (requirements,
    metadata, build) and only the build needs the modules compiled."""

    def finalize_options(self) -> None:
        if self.editable_mode:
            # An editable install is for working on corral: a compiled module beside its source would shadow it,
            # and edits to it would silently not take effect.
            _say("an editable install runs the request path as pure Python")
            extensions = []
        else:
            extensions = _mypyc_extensions()
        self.distribution.ext_modules = extensions  # before build_ext prepares each of them
        super().finalize_options()
        if not extensions:
            self._discard_earlier_builds()

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _say(f"compiling the modules failed ({exc}): pure Python")
            self._discard_outputs()

    def _discard_earlier_builds(self) -> None:
        """A pure-Python build must not package modules compiled by an earlier build in the same tree (setuptools
        keeps its build directory, and a wheel takes whatever is in it)."""
        for directory, _, files in os.walk(self.build_lib):
            for name in files:
                if name.endswith(tuple(EXTENSION_SUFFIXES)) and _is_compiled_output(directory, name):
                    os.remove(os.path.join(directory, name))

    def _discard_outputs(self) -> None:
        for path in self.get_outputs():
            if os.path.exists(path):
                os.remove(path)
        self.extensions = []
        self.distribution.ext_modules = []


# A stand-in, replaced by the real extensions when build_ext runs: it tells setuptools that there is
# something to build (and that the wheel is for this platform).
setup(ext_modules=[Extension("corral__mypyc", sources=[])], cmdclass={"build_ext": OptionalBuildExt})
