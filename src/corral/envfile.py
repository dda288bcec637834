"""Reading .env files (the env_file setting, uvicorn's --env-file): KEY=VALUE lines, as python-dotenv reads the
common cases, without the dependency.

Understood: blank lines and `#` comments; an optional `export ` prefix; values bare (a ` #` starts a comment),
in single quotes (taken as written) or in double quotes (with \\n, \\t, \\" and \\\\ escapes). Variable
expansion (`${OTHER}`) and values spanning several lines are not supported: such a line is an error, so a file
is never half-understood.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

__all__ = ["apply_env_file", "read_env_file"]

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def read_env_file(path: str) -> dict[str, str]:
    """The variables in the file, in order; ValueError (one line naming the file and line) on any problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    result: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{path}, line {number}: expected KEY=VALUE, got {line.strip()!r}")
        try:
            result[match.group(1)] = _value(match.group(2))
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
    return result


def _value(text: str) -> str:
    if text[:1] == "'":
        if len(text) < 2 or not text.endswith("'"):
            raise ValueError("unterminated single quote")
        return text[1:-1]
    if text[:1] == '"':
        return _double_quoted(text)
    return re.split(r"\s+#", text, maxsplit=1)[0].rstrip()


def _double_quoted(text: str) -> str:
    out: list[str] = []
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            out.append(_ESCAPES.get(text[index + 1], "\\" + text[index + 1]))
            index += 2
            continue
        if char == '"':
            rest = text[index + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise ValueError(f"unexpected text after the closing quote: {rest!r}")
            return "".join(out)
        out.append(char)
        index += 1
    raise ValueError("unterminated double quote")


def apply_env_file(path: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Put the file's variables into the environment; variables already set keep their value (as uvicorn,
    through python-dotenv, does)."""
    environ = os.environ if environ is None else environ
    for key, value in read_env_file(path).items():
        environ.setdefault(key, value)
