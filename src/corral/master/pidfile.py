"""The pidfile: written by the master at start, removed at exit, and never one that another live master owns."""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["Pidfile", "PidfileError"]


class PidfileError(Exception):
    """The pidfile cannot be taken; str(e) is one line."""


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def create(self, pid: int) -> None:
        other = self._read()
        if other is not None and other != pid and _alive(other):
            raise PidfileError(f"pidfile {self.path}: already in use by the running process {other}")
        directory = os.path.dirname(self.path)
        # Write a temporary file and rename it, so a reader never sees a half-written pid.
        try:
            fd, temporary = tempfile.mkstemp(prefix=".corral-pid-", dir=directory)
        except OSError as exc:
            raise PidfileError(f"pidfile {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as file:
            file.write(f"{pid}\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.path)
        self.pid = pid

    def rename(self, path: str) -> None:
        """Move our pidfile to `path` (a promoted upgrade master takes over the main pidfile)."""
        path = os.path.abspath(path)
        try:
            os.replace(self.path, path)
        except OSError as exc:
            raise PidfileError(f"pidfile {path}: {exc.strerror}") from None
        self.path = path

    def unlink(self) -> None:
        """Remove the file if it is still ours (a re-executed master may have taken it over)."""
        if self.pid is not None and self._read() == self.pid:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _read(self) -> int | None:
        try:
            with open(self.path) as file:
                return int(file.read().strip() or 0) or None
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
