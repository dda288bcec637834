"""The error log (stdlib logging: Gunicorn's line format or JSON lines, or the operator's own logging config),
the access log, whose format is compiled once into a function that computes only what it uses and writes
through its own buffer, and request ids (kept from the client when valid, else made here).

Access log atoms, with Gunicorn's meanings: h remote address, l "-", u user of a Basic Authorization
header, t time "[22/Nov/2026:10:00:00 +0000]" (local time, like Gunicorn), r request line, m method, U raw
path, q query string ("" when empty, as in Gunicorn), H protocol, s status, B response bytes (0 when none),
b response bytes or "-", f referer, a user agent, T request time in whole seconds, D in microseconds, M in
milliseconds, L in seconds with six decimals, p "<pid>", {name}i request header, {name}o response header,
{name}e a WSGI environ variable (WSGI apps only; "-" for ASGI apps, which have no environ). corral adds
request_id: the request's id when request ids are on (request_id_header), else "-". Unknown atoms and
missing values give "-". A websocket scope has no method; its handshake was a GET, so m and r say GET.

Request-derived text (headers, path, query) is decoded as UTF-8 and escaped so one request is one line that
a log parser can trust: `"` becomes `\\"` (Gunicorn's escape), `\\` becomes `\\\\`, and any byte that is not
valid UTF-8 or any character that is not printable (controls, line separators, bidi overrides) becomes \\xHH,
\\uHHHH or \\UHHHHHHHH. Percent-encoded paths are plain ASCII and stay exactly as the client sent them.

With log_format "json" every line is one JSON object (pure ASCII, field names in docs/logging.md): the access
log has a fixed set of fields, whatever access_log_format says (its {name}i and {name}o atoms add the
request_headers and response_headers objects).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import stat
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from typing import Any

from corral.core.settings import LoggingSettings

__all__ = [
    "ACCESS_LOGGER",
    "DEFAULT_ACCESS_LOG_FORMAT",
    "ERROR_LOGGER",
    "JSON_ACCESS_FIELDS",
    "REQUEST_ID_MAX_LENGTH",
    "AccessLog",
    "ColourFormatter",
    "JsonFormatter",
    "LogConfigError",
    "LoggedAccessLog",
    "RequestIds",
    "access_log_colors",
    "access_log_target",
    "compile_access_log_format",
    "compile_json_access_log",
    "configure_logging",
    "reopen_error_log",
    "setup_error_log",
]

DEFAULT_ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
ERROR_LOGGER = "corral.error"
# Access lines go to this stdlib logger only when a logging config gives it handlers (see AccessLog.open).
ACCESS_LOGGER = "corral.access"
# A Gunicorn logging config names these; corral's loggers take their handlers when the config leaves
# corral's own unconfigured, so a gunicorn.conf.py keeps routing the same lines to the same places.
# uvicorn's logging configs name uvicorn.error (whose handlers usually sit on its parent, "uvicorn") and
# uvicorn.access: they are adopted the same way, after Gunicorn's.
_GUNICORN_LOGGERS = (
    (ERROR_LOGGER, ("gunicorn.error",)),
    (ACCESS_LOGGER, ("gunicorn.access",)),
    (ERROR_LOGGER, ("uvicorn.error", "uvicorn")),
    (ACCESS_LOGGER, ("uvicorn.access",)),
)

ERROR_LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
ERROR_LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
TRACE = 5  # uvicorn's level below DEBUG; corral accepts it (--log-level trace) and logs nothing extra there
logging.addLevelName(TRACE, "TRACE")
_LOG_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_LOG_FORMATS = ("text", "json")
_error_handlers: list[logging.Handler] = []


class LogConfigError(Exception):
    """A logging setting that cannot be applied; str(error) is one line: "<setting>: <problem>"."""


def configure_logging(settings: LoggingSettings) -> logging.Logger:
    """Set up the master's logging before anything is bound; workers inherit it through fork.

    The first of logconfig_dict, logconfig_json and logconfig that is set is applied (Gunicorn's order), then
    "corral.error" gets errorlog, loglevel and log_format unless that configuration gave it handlers of its
    own (or to "gunicorn.error", which it then shares). Raises LogConfigError (one line) on any problem.
    """
    level = _LOG_LEVELS.get(settings.loglevel.strip().lower())
    if level is None:
        raise LogConfigError(f"loglevel: {settings.loglevel!r} is not one of {', '.join(_LOG_LEVELS)}")
    _check_access_log_format(settings)
    _apply_logging_config(settings)
    _adopt_gunicorn_loggers()
    _settle_corral_loggers(level)
    logger = logging.getLogger(ERROR_LOGGER)
    if _foreign_handlers(logger):
        return logger
    try:
        colors = _error_log_colors(settings)
        return setup_error_log(settings.errorlog, settings.loglevel, settings.log_format, colors=colors)
    except OSError as error:
        raise LogConfigError(f"errorlog: cannot open {settings.errorlog}: {error.strerror or error}") from None
    except ValueError as error:
        raise LogConfigError(str(error)) from None


def _error_log_colors(settings: LoggingSettings) -> bool:
    """use_colors, or (unset) whether the error log goes to a terminal; JSON lines are never coloured."""
    if settings.log_format != "text":
        return False
    use_colors = settings.use_colors
    if use_colors is not None:
        return bool(use_colors)
    return settings.errorlog in ("-", "") and _isatty(sys.stderr)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by something without a terminal, or closed
        return False


def access_log_target(settings: LoggingSettings) -> str | None:
    """Where access lines go: access_log off wins; accesslog when set; else stdout when access_log is on, or
    when it is unset and stderr is a terminal (the developer's loop: uvicorn logs requests there too)."""
    access_log = settings.access_log
    if access_log is False:
        return None
    if settings.accesslog:
        return str(settings.accesslog)
    if access_log or (access_log is None and _isatty(sys.stderr)):
        return "-"
    return None


def access_log_colors(settings: LoggingSettings) -> bool | None:
    """use_colors for the access log; None: colour when its descriptor is a terminal."""
    return False if settings.log_format != "text" else settings.use_colors


def _check_access_log_format(settings: LoggingSettings) -> None:
    """The workers compile the format after they start: one they could not use must stop the start here."""
    if settings.log_format != "text":
        return  # JSON lines read only its header atoms, and any text is fine for those
    try:
        compile_access_log_format(settings.access_log_format, request_id_header=settings.request_id_header)
    except ValueError as error:
        raise LogConfigError(str(error)) from None


def _settle_corral_loggers(error_level: int) -> None:
    # As in Gunicorn, a config that routes these loggers without a level leaves loglevel (and INFO for access
    # lines) in force; and its disable_existing_loggers must not silence corral's own errors.
    for name, default_level in ((ERROR_LOGGER, error_level), (ACCESS_LOGGER, logging.INFO)):
        logger = logging.getLogger(name)
        logger.disabled = False
        if logger.level == logging.NOTSET:
            logger.setLevel(default_level)


def setup_error_log(errorlog: str, loglevel: str, log_format: str = "text", *, colors: bool = False) -> logging.Logger:
    """Point the "corral.error" logger at stderr ("-") or a file (appended), replacing an earlier setup."""
    level = _LOG_LEVELS.get(loglevel.strip().lower())
    if level is None:
        raise ValueError(f"loglevel: {loglevel!r} is not one of {', '.join(_LOG_LEVELS)}")
    if log_format not in _LOG_FORMATS:
        raise ValueError(f"log_format: {log_format!r} is not one of {', '.join(_LOG_FORMATS)}")
    logger = logging.getLogger(ERROR_LOGGER)
    for previous in _error_handlers:
        logger.removeHandler(previous)
        previous.close()
    _error_handlers.clear()
    if errorlog in ("-", ""):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(errorlog, mode="a", encoding="utf-8")
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif colors:
        handler.setFormatter(ColourFormatter(ERROR_LOG_FORMAT, ERROR_LOG_DATE_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(ERROR_LOG_FORMAT, ERROR_LOG_DATE_FORMAT))
    _error_handlers.append(handler)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def reopen_error_log() -> None:
    """Reopen the error log file by name (after logrotate moved it); a no-op for stderr.

    Only the file corral opened for errorlog: handlers from a logging config are the operator's (a
    WatchedFileHandler there follows logrotate by itself).
    """
    for handler in _error_handlers:
        if isinstance(handler, logging.FileHandler):
            replaced = handler.setStream(open(handler.baseFilename, "a", encoding=handler.encoding))  # noqa: SIM115
            if replaced is not None:
                replaced.close()


# ANSI colours by level (uvicorn's choice of colours) and by status class for access lines.
_LEVEL_COLOURS = {TRACE: "\x1b[34m", logging.DEBUG: "\x1b[36m", logging.INFO: "\x1b[32m", logging.WARNING: "\x1b[33m",
                  logging.ERROR: "\x1b[31m", logging.CRITICAL: "\x1b[91m"}  # fmt: skip
_STATUS_COLOURS = {1: "\x1b[37m", 2: "\x1b[32m", 3: "\x1b[33m", 4: "\x1b[31m", 5: "\x1b[91m"}
_RESET = "\x1b[0m"


class ColourFormatter(logging.Formatter):
    """Gunicorn's line format with the level name coloured, for a terminal (use_colors)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        colour = _LEVEL_COLOURS.get(record.levelno)
        if colour is None:
            return super().formatMessage(record)
        plain = record.levelname
        record.levelname = f"{colour}{plain}{_RESET}"
        try:
            return super().formatMessage(record)
        finally:
            record.levelname = plain


def _coloured(render: Render) -> Render:
    """An access line renderer whose lines are coloured by status class."""

    def render_coloured(scope: dict[str, Any], status: int, headers: Any, length: int | None, time_ns: int) -> str:
        line = render(scope, status, headers, length, time_ns)
        colour = _STATUS_COLOURS.get(status // 100)
        return f"{colour}{line}{_RESET}" if colour else line

    return render_coloured


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message, and exception or stack when present.

    Usable from a logging config too: {"()": "corral.logging.JsonFormatter"}.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        # ASCII only: a message can carry request text, and escapes keep it to one line a parser can trust.
        return json.dumps(fields, default=repr, separators=(",", ":"))


def _iso_time(created: float) -> str:
    """ISO 8601 local time with milliseconds and the UTC offset: 2026-11-22T10:00:00.250+00:00."""
    return datetime.fromtimestamp(created, timezone.utc).astimezone().isoformat(timespec="milliseconds")


def _foreign_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a logging config gave `logger` (not the one setup_error_log added)."""
    return [handler for handler in logger.handlers if handler not in _error_handlers]


def _apply_logging_config(settings: LoggingSettings) -> None:
    if settings.logconfig_dict:
        _dict_config(dict(settings.logconfig_dict), "logconfig_dict")
    elif settings.logconfig_json:
        _dict_config(_read_json_config(settings.logconfig_json), "logconfig_json")
    elif settings.logconfig:
        _file_config(settings.logconfig)


def _dict_config(config: dict[str, Any], setting: str) -> None:
    # Gunicorn's defaults for the two keys people leave out: loggers that exist already (corral's, the
    # app's) keep working unless the config says otherwise.
    import logging.config  # only when asked for: it brings logging.handlers, pickle and socketserver (~0.8 MB)

    config = {"version": 1, "disable_existing_loggers": False, **config}
    try:
        logging.config.dictConfig(config)
    except Exception as error:  # dictConfig raises whatever the handler or formatter it builds raised
        raise LogConfigError(f"{setting}: {_reason(error)}") from None


def _read_json_config(path: str, setting: str = "logconfig_json") -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except OSError as error:
        raise LogConfigError(f"{setting}: cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:  # JSONDecodeError, and text that is not UTF-8
        raise LogConfigError(f"{setting}: {path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise LogConfigError(f"{setting}: {path} must hold a JSON object (a dictConfig dictionary)")
    return config


def _read_yaml_config(path: str) -> dict[str, Any]:
    try:
        import yaml  # type: ignore[import-untyped]  # optional: only a YAML logging config needs it
    except ImportError:
        raise LogConfigError(f"logconfig: {path} is YAML, which needs PyYAML (pip install PyYAML)") from None
    try:
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except OSError as error:
        raise LogConfigError(f"logconfig: cannot read {path}: {error.strerror or error}") from None
    except (yaml.YAMLError, ValueError) as error:
        raise LogConfigError(f"logconfig: {path} is not valid YAML: {_reason(error)}") from None
    if not isinstance(config, dict):
        raise LogConfigError(f"logconfig: {path} must hold a mapping (a dictConfig dictionary)")
    return config


def _file_config(path: str) -> None:
    import logging.config  # see _dict_config

    if not os.path.isfile(path):
        raise LogConfigError(f"logconfig: {path}: no such file")
    # uvicorn's --log-config reads the format from the name: JSON and YAML hold a dictConfig dictionary.
    extension = os.path.splitext(path)[1].lower()
    if extension == ".json":
        _dict_config(_read_json_config(path, "logconfig"), "logconfig")
        return
    if extension in (".yaml", ".yml"):
        _dict_config(_read_yaml_config(path), "logconfig")
        return
    defaults = {"__file__": path, "here": os.path.dirname(os.path.abspath(path))}  # as Gunicorn passes them
    try:
        logging.config.fileConfig(path, defaults=defaults, disable_existing_loggers=False)
    except Exception as error:  # configparser errors, and whatever building a handler raised
        raise LogConfigError(f"logconfig: {path}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """The error and its causes on one line ("Unable to configure handler 'file': [Errno 2] ...")."""
    parts: list[str] = []
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            break
        text = f"missing {seen}" if isinstance(seen, KeyError) else str(seen) or type(seen).__name__
        if not any(text in part for part in parts):  # dictConfig often repeats its cause in its own message
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts).replace("\n", " ")


def _adopt_gunicorn_loggers() -> None:
    known = logging.Logger.manager.loggerDict
    for ours, names in _GUNICORN_LOGGERS:
        candidates = [known.get(name) for name in names]
        configured = [c for c in candidates if isinstance(c, logging.Logger) and c.handlers]
        logger = logging.getLogger(ours)
        if not configured:
            continue
        gunicorn_logger = configured[0]
        if _foreign_handlers(logger):
            continue  # the config names corral's logger itself: that wins
        for handler in gunicorn_logger.handlers:
            logger.addHandler(handler)
        if gunicorn_logger.level != logging.NOTSET:
            logger.setLevel(gunicorn_logger.level)
        logger.propagate = gunicorn_logger.propagate


# --------------------------------------------------------------------------------------------- request ids

# A kept id is echoed in a response header and written in log lines: bounded, and only characters that need
# no quoting or escaping anywhere (UUIDs, hex, base64, ULIDs, "service:1234/abc" all pass).
REQUEST_ID_MAX_LENGTH = 200
_REQUEST_ID = re.compile(rb"[0-9A-Za-z._:/+=@-]{1,%d}" % REQUEST_ID_MAX_LENGTH)


class RequestIds:
    """The request-id rules of one worker: the header, whether a client's id is kept, and new ids.

    A new id is 32 hex digits: 16 random per process, then a counter. Unique across workers and restarts
    without a system call per request; ids correlate log lines and are not secrets (they are guessable).
    """

    __slots__ = ("__weakref__", "_count", "_line_start", "_prefix", "header")

    def __init__(self, header: str) -> None:
        self.header = header.strip().lower().encode("ascii")  # as request header names appear in the scope
        self._line_start = self.header + b": "
        self._prefix = b""
        self._count = 0
        self._reseed()
        _request_id_sources.add(self)

    def accepts(self, value: bytes) -> bool:
        """Whether a client's id is kept as it is (otherwise it is replaced by a new one)."""
        # isalnum first: hex and base62 ids (most of them) pass without the regex.
        return len(value) <= REQUEST_ID_MAX_LENGTH and (value.isalnum() or _REQUEST_ID.fullmatch(value) is not None)

    def new(self) -> bytes:
        self._count += 1
        return b"%s%016x" % (self._prefix, self._count)

    def response_line(self, request_id: bytes) -> bytes:
        return self._line_start + request_id + b"\r\n"

    def _reseed(self) -> None:
        # Also after fork: two workers must never hand out the same ids.
        self._prefix = os.urandom(8).hex().encode("ascii")
        self._count = 0


# ---------------------------------------------------------------------------------------------- access log

# The server flushes about once a second; a busy worker flushes sooner so the buffer stays small.
FLUSH_THRESHOLD = 64 * 1024
# Lines kept while a non-blocking stdout is full; beyond this they are dropped rather than grow without bound.
_UNWRITTEN_LIMIT = 1024 * 1024
# Several workers share one stdout pipe: a write of at most PIPE_BUF bytes is never interleaved with another.
_PIPE_BUF = getattr(os, "PIPE_BUF", None) or 4096
# The process's stdout itself, not sys.stdout: that may be replaced or buffered by the app; lines written
# straight to the descriptor never wait in, or mix with, Python's text buffer.
_STDOUT_FD = 1

Render = Callable[[dict[str, Any], int, "list[tuple[bytes, bytes]] | None", "int | None", int], str]


class AccessLog:
    """Buffered access log lines rendered by a compiled format, written with os.write to stdout or a file."""

    __slots__ = (
        "__weakref__",
        "_atomic_limit",
        "_failing",
        "_fd",
        "_lines",
        "_path",
        "_render",
        "_size",
        "_threshold",
        "_unwritten",
        "dropped_bytes",
    )

    def __init__(self, render: Render, fd: int, *, path: str | None = None) -> None:
        self._render = render
        self._path = path  # None: fd is not ours (stdout) and is never closed or reopened
        self._fd = fd
        self._atomic_limit = _atomic_write_limit(fd)
        self._lines: list[str] = []
        self._size = 0
        # On a terminal someone is watching: each line is written at once. Elsewhere lines are batched.
        self._threshold = 0 if os.isatty(fd) else FLUSH_THRESHOLD
        self._unwritten = b""
        self._failing = False
        self.dropped_bytes = 0
        _open_access_logs.add(self)

    @classmethod
    def open(
        cls,
        accesslog: str | None,
        access_log_format: str,
        *,
        log_format: str = "text",
        request_id_header: str = "",
        colors: bool | None = False,
    ) -> AccessLog | None:
        """The access log for the settings: "-" is stdout, a path is appended to; None or "" turns it off.

        When a logging config gave the "corral.access" logger handlers, lines go to that logger instead
        (the operator asked for full control; it costs a stdlib log record per request).
        """
        if log_format == "json":
            render = compile_json_access_log(access_log_format, request_id_header=request_id_header)
        else:
            render = compile_access_log_format(access_log_format, request_id_header=request_id_header)
        logger = logging.getLogger(ACCESS_LOGGER)
        if logger.handlers:
            return LoggedAccessLog(render, logger)
        if not accesslog:
            return None
        fd = _STDOUT_FD if accesslog == "-" else _open_append(accesslog)
        if colors or (colors is None and os.isatty(fd)):
            render = _coloured(render)
        return cls(render, fd, path=None if accesslog == "-" else accesslog)

    def log(
        self,
        scope: dict[str, Any],
        status: int,
        response_headers: list[tuple[bytes, bytes]],
        response_length: int | None,
        request_time_ns: int,
    ) -> None:
        """Buffer one request's line; `request_time_ns` is from request start to response end."""
        line = self._render(scope, status, response_headers, response_length, request_time_ns)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._threshold:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line; called about once a second, at shutdown, and when the buffer is full."""
        if self._lines:
            data = ("\n".join(self._lines) + "\n").encode("utf-8", "backslashreplace")
            self._lines.clear()
            self._size = 0
        else:
            data = b""
        if self._unwritten:
            data, self._unwritten = self._unwritten + data, b""
        if data and self._fd >= 0:
            self._write(data)

    def reopen(self) -> None:
        """Flush, then reopen the file by name (after logrotate moved it); for stdout only flush."""
        self.flush()
        if self._path is None or self._fd < 0:
            return
        fd = _open_append(self._path)
        os.close(self._fd)
        self._fd = fd
        self._atomic_limit = _atomic_write_limit(fd)

    def close(self) -> None:
        self.flush()
        if self._path is not None and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        _open_access_logs.discard(self)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        start = 0
        while start < len(data):
            end = _chunk_end(data, start, self._atomic_limit)
            try:
                start += os.write(self._fd, view[start:end])
            except BlockingIOError:  # someone made our stdout non-blocking and the reader is slow
                self._keep_unwritten(data[start:])
                return
            except OSError as error:  # a closed pipe, a full disk: losing log lines must not stop serving
                self._drop(len(data) - start, error)
                return
        self._failing = False

    def _keep_unwritten(self, data: bytes) -> None:
        if len(data) > _UNWRITTEN_LIMIT:
            self._drop(len(data), BlockingIOError("the access log output stays full"))
        else:
            self._unwritten = data

    def _drop(self, size: int, error: OSError) -> None:
        self.dropped_bytes += size
        if not self._failing:  # one line per outage, not one per flush
            self._failing = True
            logging.getLogger("corral.error").warning("access log write failed, dropping lines: %s", error)

    def _forget_parent_buffer(self) -> None:
        # A forked child must not write its parent's buffered lines a second time.
        self._lines.clear()
        self._size = 0
        self._unwritten = b""


class LoggedAccessLog(AccessLog):
    """Access lines sent one by one to a stdlib logger configured by the operator (logconfig_dict...)."""

    __slots__ = ("_logger",)

    def __init__(self, render: Render, logger: logging.Logger) -> None:
        super().__init__(render, -1)
        self._logger = logger

    def log(
        self,
        scope: dict[str, Any],
        status: int,
        response_headers: list[tuple[bytes, bytes]],
        response_length: int | None,
        request_time_ns: int,
    ) -> None:
        # The line is the message; no args, so a "%" in it is never taken for a placeholder.
        self._logger.info(self._render(scope, status, response_headers, response_length, request_time_ns))

    def flush(self) -> None:
        """Nothing is buffered: the logger's handlers write (and flush) each line."""

    def reopen(self) -> None:
        """The handlers are the operator's; a WatchedFileHandler follows logrotate by itself."""

    def close(self) -> None:
        _open_access_logs.discard(self)


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


def _atomic_write_limit(fd: int) -> int | None:
    """PIPE_BUF for pipes and sockets (whole lines per write keep workers' lines apart), else no limit."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return _PIPE_BUF
    return _PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def _chunk_end(data: bytes, start: int, limit: int | None) -> int:
    """Where the next write ends: all of it, or as many whole lines as fit in `limit` (one line if longer)."""
    if limit is None or len(data) - start <= limit:
        return len(data)
    cut = data.rfind(b"\n", start, start + limit)
    if cut >= start:
        return cut + 1
    return data.find(b"\n", start + limit) + 1 or len(data)


_open_access_logs: weakref.WeakSet[AccessLog] = weakref.WeakSet()
_pid_text = f"<{os.getpid()}>"
_pid_digits = str(os.getpid())
_request_id_sources: weakref.WeakSet[RequestIds] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _pid_text, _pid_digits
    _pid_text = f"<{os.getpid()}>"
    _pid_digits = str(os.getpid())
    for access_log in _open_access_logs:
        access_log._forget_parent_buffer()
    for request_ids in _request_id_sources:
        request_ids._reseed()


os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------------- atom values

# Printable ASCII except `"` and `\`: such values need no escaping (nearly all of them).
_PLAIN_BYTES = re.compile(rb"[ !#-\[\]-~]*")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2", "3": "HTTP/3"}
_NO_CLIENT = ("-",)


# Escaped text by value, bounded and cleared when full: user agents, referers and paths repeat, and a dict
# hit costs a quarter of the regex check of a typical 100-byte user agent.
_text_cache: dict[bytes, str] = {}
_TEXT_CACHE_LIMIT = 2048
_MAX_CACHED_TEXT = 256


def _text(value: bytes | None) -> str:
    """Request-derived bytes as log-safe text; "-" when absent."""
    if value is None:
        return "-"
    text = _text_cache.get(value)
    if text is None:
        text = _escape(value)
        if len(value) <= _MAX_CACHED_TEXT:
            if len(_text_cache) >= _TEXT_CACHE_LIMIT:
                _text_cache.clear()
            _text_cache[value] = text
    return text


def _request_id_text(value: bytes | None) -> str:
    """A request id as log-safe text. Not cached: every request has its own, and caching them would only
    push user agents and paths out of the cache."""
    if value is None:
        return "-"
    if value.isalnum():  # ASCII letters and digits only (an id corral made, a hex or base62 one)
        return value.decode("ascii")
    return _escape(value)


def _escape(value: bytes) -> str:
    if _PLAIN_BYTES.fullmatch(value):
        return value.decode("ascii")
    return "".join(map(_escape_character, value.decode("utf-8", "surrogateescape")))


def _escape_character(character: str) -> str:
    if character == '"':
        return '\\"'
    if character == "\\":
        return "\\\\"
    if character.isprintable():
        return character
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for a byte that is not UTF-8
        return f"\\x{code - 0xDC00:02X}"
    if code < 0x100:
        return f"\\x{code:02X}"
    if code < 0x10000:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


_wall_clock = time.time
_clf_second = -1
_clf_text = ""


def _clf_now() -> str:
    """The current time in Common Log Format, formatted once per second."""
    global _clf_second, _clf_text
    second = int(_wall_clock())
    if second != _clf_second:
        _clf_text = _format_clf(second)
        _clf_second = second
    return _clf_text


def _format_clf(second: int) -> str:
    # Month names from a table, not strftime("%b"): an app calling setlocale() must not change log lines.
    local = time.localtime(second)
    offset_minutes = (local.tm_gmtoff or 0) // 60
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return (
        f"[{local.tm_mday:02d}/{_MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
        f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {sign}{hours:02d}{minutes:02d}]"
    )


def _pid_label() -> str:
    return _pid_text


def _raw_path(scope: dict[str, Any]) -> bytes:
    raw_path: bytes | None = scope.get("raw_path")
    path: str = scope.get("path", "")
    return raw_path if raw_path is not None else path.encode("utf-8")


def _protocol(scope: dict[str, Any]) -> str:
    version = scope.get("http_version", "1.1")
    return _PROTOCOLS.get(version) or f"HTTP/{version}"


def _request_line(scope: dict[str, Any]) -> str:
    target = scope.get("raw_path")
    if target is None:  # raw_path is optional in ASGI
        target = scope.get("path", "").encode("utf-8")
    query = scope.get("query_string")
    if query:
        target += b"?" + query
    protocol = _PROTOCOLS.get(scope.get("http_version", "")) or _protocol(scope)
    return f"{scope.get('method', 'GET')} {_text(target)} {protocol}"


def _basic_auth_user(authorization: bytes | None) -> str:
    user = _basic_auth_name(authorization)
    return "-" if user is None else _text(user)


def _basic_auth_name(authorization: bytes | None) -> bytes | None:
    """The user name of a Basic Authorization header; None for none, another scheme or a malformed one."""
    if authorization is None:
        return None
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        user, colon, _ = base64.b64decode(credentials.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return None
    return user if colon and user else None


def _decimal_seconds(nanoseconds: int) -> str:
    return f"{nanoseconds // 1_000_000_000}.{nanoseconds // 1000 % 1_000_000:06d}"


def _pick_response_headers(
    headers: Iterable[tuple[bytes, bytes]] | None, names: frozenset[bytes]
) -> dict[bytes, bytes]:
    """The named response headers, repeats joined with ","; names compared lower-cased, as apps may send
    them in any case (request header names already arrive lower-cased from the parser)."""
    picked: dict[bytes, bytes] = {}
    for name, value in headers or ():
        name = name.lower()
        if name in names:
            picked[name] = picked[name] + b"," + value if name in picked else value
    return picked


# ------------------------------------------------------------------------------------- JSON atom values
# Each returns a JSON fragment (a quoted ASCII string, a number or null) ready to drop into the line.

_json_cache: dict[bytes, str] = {}
_JSON_METHODS = {method: encode_basestring_ascii(method) for method in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}  # fmt: skip
_JSON_PROTOCOLS = {version: encode_basestring_ascii(name) for version, name in _PROTOCOLS.items()}


def _json_text(value: bytes | None) -> str:
    """Request-derived bytes as a JSON string (bytes that are not UTF-8 as the text \\xhh); null when absent."""
    if value is None:
        return "null"
    text = _json_cache.get(value)
    if text is None:
        # encode_basestring_ascii escapes quotes, backslashes, controls and every non-ASCII character.
        text = encode_basestring_ascii(value.decode("utf-8", "backslashreplace"))
        if len(value) <= _MAX_CACHED_TEXT:
            if len(_json_cache) >= _TEXT_CACHE_LIMIT:
                _json_cache.clear()
            _json_cache[value] = text
    return text


def _json_request_id(value: bytes) -> str:
    """A request id as a JSON string; not cached, for the reason _request_id_text gives."""
    if value.isalnum():
        return f'"{value.decode("ascii")}"'
    return encode_basestring_ascii(value.decode("utf-8", "backslashreplace"))


def _json_client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return encode_basestring_ascii(str(client[0])) if client else "null"


def _json_method(scope: dict[str, Any]) -> str:
    method = scope.get("method", "GET")
    return _JSON_METHODS.get(method) or encode_basestring_ascii(method)


def _json_protocol(scope: dict[str, Any]) -> str:
    return _JSON_PROTOCOLS.get(scope.get("http_version", "")) or encode_basestring_ascii(_protocol(scope))


def _json_user(authorization: bytes | None) -> str:
    return _json_text(_basic_auth_name(authorization))


def _pid_number() -> str:
    return _pid_digits


_iso_second = -1
_iso_start = ""
_iso_end = ""
_iso_millisecond = -1
_iso_text = ""


def _iso_now() -> str:
    """The current time as a JSON string, ISO 8601 local time with milliseconds and the UTC offset: made
    once per millisecond (a busy worker logs many lines in one), its date and offset once per second."""
    global _iso_second, _iso_start, _iso_end, _iso_millisecond, _iso_text
    millisecond = int(_wall_clock() * 1000)
    if millisecond != _iso_millisecond:
        second, fraction = divmod(millisecond, 1000)
        if second != _iso_second:
            _iso_start, _iso_end = _format_iso_second(second)
            _iso_second = second
        _iso_text = f"{_iso_start}.{fraction:03d}{_iso_end}"
        _iso_millisecond = millisecond
    return _iso_text


def _format_iso_second(second: int) -> tuple[str, str]:
    """'"2026-11-22T10:00:00' and '+00:00"': the JSON string around the milliseconds."""
    local = time.localtime(second)
    offset_minutes = (local.tm_gmtoff or 0) // 60
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    start = (
        f'"{local.tm_year:04d}-{local.tm_mon:02d}-{local.tm_mday:02d}'
        f"T{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d}"
    )
    return start, f'{sign}{hours:02d}:{minutes:02d}"'


def _environ_text(scope: dict[str, Any], key: str) -> str:
    """{name}e: the WSGI app's environ variable (the WSGI cycle puts its environ in the scope)."""
    environ = scope.get("wsgi.environ")
    value = environ.get(key) if environ is not None else None
    if value is None:
        return "-"
    # Environ strings carry request bytes as latin-1 (PEP 3333): back to bytes, then escaped like a header.
    text = value if isinstance(value, str) else str(value)
    return _text(text.encode("latin-1", "backslashreplace"))


# ---------------------------------------------------------------------------------------- format compiler


@dataclass(frozen=True)
class _Atom:
    """A Python expression over the render function's arguments; {header} stands for a bound header name."""

    expression: str
    request_header: bytes | None = None
    response_header: bytes | None = None
    environ_key: str | None = None


_CONSTANT = "-"
_ATOMS: dict[str, _Atom | str] = {
    "h": _Atom('(scope.get("client") or _NO_CLIENT)[0]'),
    "l": _CONSTANT,
    "u": _Atom("_basic_auth_user(request_headers.get({header}))", request_header=b"authorization"),
    "t": _Atom("_clf_now()"),
    "r": _Atom("_request_line(scope)"),
    "m": _Atom('scope.get("method", "GET")'),
    "U": _Atom("_text(_raw_path(scope))"),
    "q": _Atom('_text(scope.get("query_string", b""))'),
    "H": _Atom("_protocol(scope)"),
    "s": _Atom("status"),
    "B": _Atom("response_length or 0"),
    "b": _Atom('"-" if response_length is None else response_length'),
    "f": _Atom("_text(request_headers.get({header}))", request_header=b"referer"),
    "a": _Atom("_text(request_headers.get({header}))", request_header=b"user-agent"),
    "T": _Atom("request_time_ns // 1_000_000_000"),
    "D": _Atom("request_time_ns // 1_000"),
    "M": _Atom("request_time_ns // 1_000_000"),
    "L": _Atom("_decimal_seconds(request_time_ns)"),
    "p": _Atom("_pid_label()"),
}
_REQUEST_ID_ATOM = "request_id"
_HEADER_ATOM = re.compile(r"\{(?P<name>[^}]*)\}(?P<kind>[a-z])", re.IGNORECASE)
# A %-conversion as Python's mapping formatting reads it: %(key)flags width .precision type, or %%.
_CONVERSION = re.compile(r"%(?:\((?P<key>[^)]*)\))?(?P<spec>[-#0 +]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa%])")
_HELPERS = {
    "_NO_CLIENT": _NO_CLIENT,
    "_basic_auth_user": _basic_auth_user,
    "_clf_now": _clf_now,
    "_decimal_seconds": _decimal_seconds,
    "_iso_now": _iso_now,
    "_json_client": _json_client,
    "_json_method": _json_method,
    "_json_protocol": _json_protocol,
    "_json_request_id": _json_request_id,
    "_json_text": _json_text,
    "_json_user": _json_user,
    "_pick_response_headers": _pick_response_headers,
    "_pid_label": _pid_label,
    "_pid_number": _pid_number,
    "_protocol": _protocol,
    "_raw_path": _raw_path,
    "_request_id_text": _request_id_text,
    "_request_line": _request_line,
    "_text": _text,
    "_environ_text": _environ_text,
}


def compile_access_log_format(access_log_format: str, *, request_id_header: str = "") -> Render:
    """Compile a Gunicorn access_log_format into render(scope, status, response_headers, response_length,
    request_time_ns) -> line (no newline). Raises ValueError for a format that cannot be rendered.

    The result is one generated function that evaluates only the atoms the format names and fills them in
    with a single %-operation on a tuple, so a request costs no dict of every atom (Gunicorn builds one).
    `request_id_header` (empty: request ids are off) is where %(request_id)s reads the request's id.
    """
    template, atoms = _parse_format(access_log_format, _header_name(request_id_header))
    render = _compile_render(template, atoms, "<access_log_format>")
    _check_renders(render, access_log_format)
    return render


def _compile_render(template: str, atoms: list[_Atom], filename: str) -> Render:
    """One function that fills `template` (positional %-conversions) with the atoms' values, in order."""
    namespace: dict[str, object] = dict(_HELPERS)
    request_names = {atom.request_header for atom in atoms if atom.request_header is not None}
    response_names = {atom.response_header for atom in atoms if atom.response_header is not None}
    namespace.update(
        _template=template, _request_names=frozenset(request_names), _response_names=frozenset(response_names)
    )
    expressions = []
    for atom in atoms:
        header = atom.request_header if atom.request_header is not None else atom.response_header
        if header is None:
            header = atom.environ_key  # type: ignore[assignment]  # bound like a header name, never pasted
        if header is None:
            expressions.append(atom.expression)
            continue
        # Header names come from the operator's format: they are bound as values, never pasted into code.
        bound_name = f"_header_{len(namespace)}"
        namespace[bound_name] = header
        expressions.append(atom.expression.format(header=bound_name))
    body = ["def render(scope, status, response_headers, response_length, request_time_ns):"]
    if request_names:  # inlined rather than a helper call: this loop runs for every request
        body += [
            "    request_headers = {}",
            '    for name, value in scope["headers"]:',
            "        if name in _request_names:",
            "            if name in request_headers:",
            '                value = request_headers[name] + b"," + value',
            "            request_headers[name] = value",
        ]
    if response_names:
        body.append("    response_headers = _pick_response_headers(response_headers, _response_names)")
    body.append(f"    return _template % ({''.join(expression + ', ' for expression in expressions)})")
    source = "\n".join(body) + "\n"
    exec(compile(source, filename, "exec"), namespace)
    return namespace["render"]  # type: ignore[return-value]


def _header_name(header: str) -> bytes | None:
    """A header name as the scope spells it (lower case), or None when the setting is empty."""
    header = header.strip()
    return header.lower().encode("latin-1") if header else None


def _parse_format(access_log_format: str, request_id_header: bytes | None = None) -> tuple[str, list[_Atom]]:
    """The positional %-template and the atoms it needs, in order; constants are folded into the template."""
    parts: list[str] = []
    atoms: list[_Atom] = []
    position = 0
    for match in _CONVERSION.finditer(access_log_format):
        parts.append(_literal(access_log_format[position : match.start()]))
        position = match.end()
        key, spec = match["key"], match["spec"]
        if spec == "%" and key is None:
            parts.append("%%")
            continue
        if key is None or spec.endswith("%"):
            raise ValueError(f"access_log_format: {match[0]!r} is not a %(name)s atom")
        atom = _resolve_atom(key, request_id_header)
        if isinstance(atom, str):
            parts.append(_fold_constant("%" + spec, atom))
        else:
            parts.append("%" + spec)
            atoms.append(atom)
    parts.append(_literal(access_log_format[position:]))
    return "".join(parts), atoms


def _literal(text: str) -> str:
    if "%" in text:
        raise ValueError(f"access_log_format: a lone '%' in {text!r} (write %% for a percent sign)")
    return text


def _fold_constant(spec: str, value: str) -> str:
    try:
        return (spec % value).replace("%", "%%")
    except (TypeError, ValueError) as error:
        raise ValueError(f"access_log_format: {spec!r} cannot format the text {value!r}: {error}") from None


def _resolve_atom(key: str, request_id_header: bytes | None = None) -> _Atom | str:
    if key == _REQUEST_ID_ATOM:
        if request_id_header is None:
            return _CONSTANT
        return _Atom("_request_id_text(request_headers.get({header}))", request_header=request_id_header)
    header = _HEADER_ATOM.fullmatch(key)
    if header is None:
        return _ATOMS.get(key, _CONSTANT)
    name = header["name"].lower().encode("utf-8")
    kind = header["kind"].lower()
    if kind == "i":
        return _Atom("_text(request_headers.get({header}))", request_header=name)
    if kind == "o":
        return _Atom("_text(response_headers.get({header}))", response_header=name)
    if kind == "e":
        return _Atom("_environ_text(scope, {header})", environ_key=header["name"])
    return _CONSTANT  # anything else Gunicorn would also print as "-"


# ------------------------------------------------------------------------------------------ JSON compiler

# The fields of a JSON access line, in order; stable names (docs/logging.md). request_id is null when request
# ids are off; request_headers and response_headers follow only when access_log_format names headers.
JSON_ACCESS_FIELDS = (
    "time", "level", "logger", "pid", "remote_addr", "user", "method", "path", "query", "protocol", "status",
    "bytes", "duration_us", "referer", "user_agent", "request_id",
)  # fmt: skip


def _json_or_null(function: str, value: str) -> str:
    """An expression that calls `function` on `value` unless it is None: an absent header (referer, often)
    then costs no call."""
    return f'("null" if (_value := {value}) is None else {function}(_value))'


def _json_field_atoms(request_id_header: bytes | None) -> dict[str, _Atom | str]:
    """Each field's atom (its expression gives a JSON fragment), or its constant JSON text."""
    header_text = _json_or_null("_json_text", "request_headers.get({header})")
    request_id: _Atom | str = "null"
    if request_id_header is not None:
        request_id = _Atom(
            _json_or_null("_json_request_id", "request_headers.get({header})"), request_header=request_id_header
        )
    return {
        "time": _Atom("_iso_now()"),
        "level": '"INFO"',
        "logger": encode_basestring_ascii(ACCESS_LOGGER),
        "pid": _Atom("_pid_number()"),
        "remote_addr": _Atom("_json_client(scope)"),
        "user": _Atom(_json_or_null("_json_user", "request_headers.get({header})"), request_header=b"authorization"),
        "method": _Atom("_json_method(scope)"),
        "path": _Atom("_json_text(_raw_path(scope))"),
        "query": _Atom('_json_text(scope.get("query_string", b""))'),
        "protocol": _Atom("_json_protocol(scope)"),
        # %d, not %s: an app may answer with an IntEnum status such as HTTPStatus.OK.
        "status": _Atom("int(status)"),
        "bytes": _Atom("response_length or 0"),
        "duration_us": _Atom("request_time_ns // 1_000"),
        "referer": _Atom(header_text, request_header=b"referer"),
        "user_agent": _Atom(header_text, request_header=b"user-agent"),
        "request_id": request_id,
    }


def compile_json_access_log(access_log_format: str = "", *, request_id_header: str = "") -> Render:
    """Like compile_access_log_format, for JSON lines: one object with JSON_ACCESS_FIELDS, then the headers
    that access_log_format names with {name}i / {name}o (in request_headers / response_headers objects).

    The line is one %-operation on a precompiled template, as for text: no dict and no json.dumps per request.
    """
    fields = _json_field_atoms(_header_name(request_id_header))
    parts: list[str] = []
    atoms: list[_Atom] = []
    for name in JSON_ACCESS_FIELDS:
        value = fields[name]
        if isinstance(value, str):
            parts.append(f'"{name}":{value}')
        else:
            parts.append(f'"{name}":%s')
            atoms.append(value)
    request_names, response_names = _format_header_names(access_log_format)
    if request_names:
        parts.append(_json_header_object("request_headers", request_names))
        atoms += [_Atom("_json_text(request_headers.get({header}))", request_header=name) for name in request_names]
    if response_names:
        parts.append(_json_header_object("response_headers", response_names))
        atoms += [_Atom("_json_text(response_headers.get({header}))", response_header=name) for name in response_names]
    render = _compile_render("{" + ",".join(parts) + "}", atoms, "<json access log>")
    _check_renders(render, access_log_format)
    return render


def _json_header_object(field: str, names: list[bytes]) -> str:
    """'"field":{"name":%s,...}' with each header name as a JSON key (a "%" in it escaped for the template)."""
    keys = [encode_basestring_ascii(name.decode("latin-1")).replace("%", "%%") for name in names]
    return f'"{field}":{{{",".join(key + ":%s" for key in keys)}}}'


def _format_header_names(access_log_format: str) -> tuple[list[bytes], list[bytes]]:
    """The request and response header names access_log_format's {name}i and {name}o atoms use, in order."""
    request_names: list[bytes] = []
    response_names: list[bytes] = []
    for match in _CONVERSION.finditer(access_log_format):
        header = _HEADER_ATOM.fullmatch(match["key"] or "")
        if header is None:
            continue
        names = {"i": request_names, "o": response_names}.get(header["kind"].lower())
        name = header["name"].lower().encode("utf-8")
        if names is not None and name not in names:
            names.append(name)
    return request_names, response_names


_SAMPLE_SCOPE = {
    "type": "http",
    "http_version": "1.1",
    "method": "GET",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [(b"host", b"localhost")],
    "client": ("127.0.0.1", 40000),
}


def _check_renders(render: Render, access_log_format: str) -> None:
    # A conversion that does not suit its atom (%(a)d) must fail at startup, not on every request.
    try:
        render(_SAMPLE_SCOPE, 200, [], 0, 0)
        render(_SAMPLE_SCOPE, 200, [], None, 0)
    except (TypeError, ValueError) as error:
        raise ValueError(f"access_log_format: {access_log_format!r} cannot be rendered: {error}") from None
