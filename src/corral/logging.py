"""The error log (stdlib logging, Gunicorn's line format) and the access log, whose Gunicorn-style format is
compiled once into a function that computes only the atoms it uses and writes through its own buffer.

Access log atoms, with Gunicorn's meanings: h remote address, l "-", u user of a Basic Authorization
header, t time "[22/Nov/2026:10:00:00 +0000]" (local time, like Gunicorn), r request line, m method, U raw
path, q query string ("" when empty, as in Gunicorn), H protocol, s status, B response bytes (0 when none),
b response bytes or "-", f referer, a user agent, T request time in whole seconds, D in microseconds, M in
milliseconds, L in seconds with six decimals, p "<pid>", {name}i request header, {name}o response header.
{name}e is always "-": an ASGI server has no WSGI environ. There is no request-id atom: use
%({x-request-id}i)s. Unknown atoms and missing values give "-". A websocket scope has no method; its
handshake was a GET, so m and r say GET.

Request-derived text (headers, path, query) is decoded as UTF-8 and escaped so one request is one line that
a log parser can trust: `"` becomes `\\"` (Gunicorn's escape), `\\` becomes `\\\\`, and any byte that is not
valid UTF-8 or any character that is not printable (controls, line separators, bidi overrides) becomes \\xHH,
\\uHHHH or \\UHHHHHHHH. Percent-encoded paths are plain ASCII and stay exactly as the client sent them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ACCESS_LOG_FORMAT",
    "AccessLog",
    "compile_access_log_format",
    "reopen_error_log",
    "setup_error_log",
]

DEFAULT_ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

ERROR_LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
ERROR_LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_error_handlers: list[logging.Handler] = []


def setup_error_log(errorlog: str, loglevel: str) -> logging.Logger:
    """Point the "corral.error" logger at stderr ("-") or a file (appended), replacing an earlier setup."""
    level = _LOG_LEVELS.get(loglevel.strip().lower())
    if level is None:
        raise ValueError(f"loglevel: {loglevel!r} is not one of {', '.join(_LOG_LEVELS)}")
    logger = logging.getLogger("corral.error")
    for handler in _error_handlers:
        logger.removeHandler(handler)
        handler.close()
    _error_handlers.clear()
    if errorlog in ("-", ""):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(errorlog, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(ERROR_LOG_FORMAT, ERROR_LOG_DATE_FORMAT))
    _error_handlers.append(handler)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def reopen_error_log() -> None:
    """Reopen the error log file by name (after logrotate moved it); a no-op for stderr."""
    for handler in _error_handlers:
        if isinstance(handler, logging.FileHandler):
            replaced = handler.setStream(open(handler.baseFilename, "a", encoding=handler.encoding))  # noqa: SIM115
            if replaced is not None:
                replaced.close()


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

Render = Callable[[dict, int, "list[tuple[bytes, bytes]] | None", "int | None", int], str]


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
        self._unwritten = b""
        self._failing = False
        self.dropped_bytes = 0
        _open_access_logs.add(self)

    @classmethod
    def open(cls, accesslog: str | None, access_log_format: str) -> AccessLog | None:
        """The access log for a setting: "-" is stdout, a path is appended to; None or "" turns it off."""
        if not accesslog:
            return None
        render = compile_access_log_format(access_log_format)
        if accesslog == "-":
            return cls(render, _STDOUT_FD)
        return cls(render, _open_append(accesslog), path=accesslog)

    def log(
        self,
        scope: dict,
        status: int,
        response_headers: list[tuple[bytes, bytes]],
        response_length: int | None,
        request_time_ns: int,
    ) -> None:
        """Buffer one request's line; `request_time_ns` is from request start to response end."""
        line = self._render(scope, status, response_headers, response_length, request_time_ns)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_THRESHOLD:
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


def _after_fork_in_child() -> None:
    global _pid_text
    _pid_text = f"<{os.getpid()}>"
    for access_log in _open_access_logs:
        access_log._forget_parent_buffer()


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


def _raw_path(scope: dict) -> bytes:
    raw_path = scope.get("raw_path")
    return raw_path if raw_path is not None else scope.get("path", "").encode("utf-8")


def _protocol(scope: dict) -> str:
    version = scope.get("http_version", "1.1")
    return _PROTOCOLS.get(version) or f"HTTP/{version}"


def _request_line(scope: dict) -> str:
    target = scope.get("raw_path")
    if target is None:  # raw_path is optional in ASGI
        target = scope.get("path", "").encode("utf-8")
    query = scope.get("query_string")
    if query:
        target += b"?" + query
    protocol = _PROTOCOLS.get(scope.get("http_version")) or _protocol(scope)
    return f"{scope.get('method', 'GET')} {_text(target)} {protocol}"


def _basic_auth_user(authorization: bytes | None) -> str:
    if authorization is None:
        return "-"
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return "-"
    try:
        user, colon, _ = base64.b64decode(credentials.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return "-"
    return _text(user) if colon and user else "-"


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


# ---------------------------------------------------------------------------------------- format compiler


@dataclass(frozen=True)
class _Atom:
    """A Python expression over the render function's arguments; {header} stands for a bound header name."""

    expression: str
    request_header: bytes | None = None
    response_header: bytes | None = None


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
_HEADER_ATOM = re.compile(r"\{(?P<name>[^}]*)\}(?P<kind>[a-z])", re.IGNORECASE)
# A %-conversion as Python's mapping formatting reads it: %(key)flags width .precision type, or %%.
_CONVERSION = re.compile(r"%(?:\((?P<key>[^)]*)\))?(?P<spec>[-#0 +]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa%])")
_HELPERS = {
    "_NO_CLIENT": _NO_CLIENT,
    "_basic_auth_user": _basic_auth_user,
    "_clf_now": _clf_now,
    "_decimal_seconds": _decimal_seconds,
    "_pick_response_headers": _pick_response_headers,
    "_pid_label": _pid_label,
    "_protocol": _protocol,
    "_raw_path": _raw_path,
    "_request_line": _request_line,
    "_text": _text,
}


def compile_access_log_format(access_log_format: str) -> Render:
    """Compile a Gunicorn access_log_format into render(scope, status, response_headers, response_length,
    request_time_ns) -> line (no newline). Raises ValueError for a format that cannot be rendered.

    The result is one generated function that evaluates only the atoms the format names and fills them in
    with a single %-operation on a tuple, so a request costs no dict of every atom (Gunicorn builds one).
    """
    template, atoms = _parse_format(access_log_format)
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
    exec(compile(source, "<access_log_format>", "exec"), namespace)
    render = namespace["render"]
    _check_renders(render, access_log_format)
    return render  # type: ignore[return-value]


def _parse_format(access_log_format: str) -> tuple[str, list[_Atom]]:
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
        atom = _resolve_atom(key)
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


def _resolve_atom(key: str) -> _Atom | str:
    header = _HEADER_ATOM.fullmatch(key)
    if header is None:
        return _ATOMS.get(key, _CONSTANT)
    name = header["name"].lower().encode("utf-8")
    kind = header["kind"].lower()
    if kind == "i":
        return _Atom("_text(request_headers.get({header}))", request_header=name)
    if kind == "o":
        return _Atom("_text(response_headers.get({header}))", response_header=name)
    return _CONSTANT  # {name}e (no WSGI environ in ASGI) and anything else Gunicorn would also print as "-"


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
        raise ValueError(f"access_log_format {access_log_format!r} cannot be rendered: {error}") from None
