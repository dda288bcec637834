"""The settings table (the single source of truth for every setting) and how a Config is loaded from
defaults, setting-specific env vars, a Python config file, CORRAL_CMD_ARGS and the command line."""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import inspect
import ipaddress
import os
import re
import shlex
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from corral.core.scoreboard import DEFAULT_LATENCY_BOUNDS, check_latency_bounds
from corral.core.settings import Settings, settings_from_values
from corral.core.sockets import parse_bind
from corral.master.reloader import QUIET_PERIOD
from corral.master.statsd import parse_statsd_address, statsd_prefix, statsd_tags

__all__ = [
    "CMD_ARGS_ENV",
    "DEFAULT_CONFIG_FILE",
    "GUNICORN_CMD_ARGS_ENV",
    "GUNICORN_CONFIG_FILE",
    "HELP_COMMON",
    "SECTIONS",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "SETTING_SECTIONS",
    "Config",
    "ConfigError",
    "Section",
    "Setting",
    "build_parser",
    "config_from_keywords",
    "default_settings",
    "format_value",
    "load_config",
]

CMD_ARGS_ENV = "CORRAL_CMD_ARGS"
GUNICORN_CMD_ARGS_ENV = "GUNICORN_CMD_ARGS"  # read when CORRAL_CMD_ARGS is unset: a drop-in keeps its env
DEFAULT_CONFIG_FILE = "corral.conf.py"
GUNICORN_CONFIG_FILE = "gunicorn.conf.py"  # read by default when there is no corral.conf.py, as Gunicorn does

# Issue numbers that will implement the settings declared here but not implemented yet.

Validator = Callable[[Any], Any]
Kind = Literal["value", "append", "flag", "negflag", "hook"]


class ConfigError(Exception):
    """A configuration problem; str(error) is one line: "<setting>: <problem>"."""


@dataclass(frozen=True)
class Setting:
    """One row of the settings table.

    kind: "value" (takes an argument), "append" (repeatable, a list), "flag" (a bare flag that sets True),
    "negflag" (a bare --no-... flag that sets False), "hook" (a callable, config file only).
    implemented_in: the issue that will implement it (None: implemented now).
    unsupported: why the setting cannot apply to corral (None: it applies). Either of these makes any
    non-default value an error, never a silently ignored value.
    ignored: why a Gunicorn setting has no use in corral (None: it has one). A non-default value is
    accepted with a one-line warning naming it, so a Gunicorn config file still runs unchanged.
    """

    name: str
    section: str
    default: Any
    validator: Validator
    doc: str
    cli: tuple[str, ...] = ()
    env: str | None = None
    metavar: str | None = None
    kind: Kind = "value"
    implemented_in: int | None = None
    unsupported: str | None = None
    ignored: str | None = None
    env_template: str = "{}"  # how an env var's text becomes a raw value (PORT -> "0.0.0.0:{}")
    default_doc: str | None = None  # how the docs show the default, when repr(default) would mislead
    # Bare flags that set a fixed raw value (uvicorn's --no-access-log, --date-header): (flag, raw value).
    switches: tuple[tuple[str, Any], ...] = ()
    # For a "value" setting: the raw value its flags give when used bare (uvicorn's bare --server-header).
    bare: str | None = None
    # The keyword of uvicorn.run() (and uvicorn.Config) for this setting; corral.run() accepts it too.
    uvicorn: str | None = None
    # A one-line notice for a value that is accepted but means nothing to corral (uvicorn's --ws wsproto).
    notice: Callable[[Any], str | None] | None = None
    # The field's type in the generated corral/core/settings.py, taken as written, for a validator whose return
    # annotation does not say it (None: derived from that annotation, see `annotation`).
    type: str | None = None

    @property
    def annotation(self) -> str:
        """The field's type in corral/core/settings.py, as Python source: the explicit `type`, else the
        validator's return annotation, its lists as tuples and its dicts as read-only mappings (the typed
        settings are immutable all through; Gunicorn's flat view keeps the validator's lists and dicts)."""
        if self.type is not None:
            return self.type
        annotation = getattr(self.validator, "__annotations__", {}).get("return")
        if not isinstance(annotation, str):  # every validator's module has `from __future__ import annotations`
            raise TypeError(f"setting {self.name}: its validator has no return annotation; give Setting a type")
        if match := re.fullmatch(r"list\[(.+)\]", annotation):
            return f"tuple[{match.group(1)}, ...]"
        if match := re.fullmatch(r"dict\[(.+)\]", annotation):
            return f"Mapping[{match.group(1)}]"
        return annotation

    @property
    def implemented(self) -> bool:
        return self.implemented_in is None and self.unsupported is None and self.ignored is None

    @property
    def status(self) -> str:
        """A short phrase for help and docs: "" when implemented."""
        if self.unsupported is not None:
            return f"not supported: {self.unsupported}"
        if self.ignored is not None:
            return f"accepted and ignored: {self.ignored}"
        if self.implemented_in is not None:
            return f"planned: issue {self.implemented_in}"
        return ""


# --------------------------------------------------------------------------------------------------
# Validators: each takes a raw value (a string from the CLI/env, or any Python object from a config
# file) and returns the typed value, or raises ValueError with a short reason.
# --------------------------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})


def _to_int(raw: Any, *, base: int = 10) -> int:
    """An int from an int, an integral float or a string; bool is refused (it is almost always a typo)."""
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip(), base)
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {raw!r}")


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {raw!r}")
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {raw!r}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def validate(raw: Any) -> int:
        value = _to_int(raw)
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}, got {value}")
        return value

    return validate


def seconds(minimum: float = 0.0) -> Validator:
    def validate(raw: Any) -> float:
        value = _to_float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"must be a finite number of seconds, got {raw!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum:g} seconds, got {value:g}")
        return value

    return validate


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"expected true or false, got {raw!r}")


def string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw.strip()


def optional_string(raw: Any) -> str | None:
    return None if raw is None else string(raw)


def choice(*options: str, aliases: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    def validate(raw: Any) -> str:
        text = string(raw).lower()
        text = (aliases or {}).get(text, text)
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {raw!r}")
        return text

    return validate


def string_list(raw: Any) -> list[str]:
    """A list of strings; a single string is a one-element list (Gunicorn's legacy form)."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw.strip()]
    if isinstance(raw, (list, tuple)):
        return [string(item) for item in raw]
    raise ValueError(f"expected a list of strings, got {raw!r}")


def key_value_list(raw: Any) -> list[str]:
    items = string_list(raw)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return items


def mapping(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"expected a dict, got {raw!r}")
    return dict(raw)


def header_dict(raw: Any) -> dict[str, str]:
    """Header name -> exact value; names are upper-cased because they are compared case-insensitively."""
    result: dict[str, str] = {}
    for name, value in mapping(raw).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"expected header names and values as strings, got {name!r}: {value!r}")
        result[name.strip().upper()] = value
    return result


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)


def byte_size(raw: Any) -> int:
    """Bytes from an int or a string such as "512M" or "1GiB" (1024-based); 0 means off."""
    if isinstance(raw, str):
        match = _SIZE_RE.match(raw)
        if not match:
            raise ValueError(f"expected a size in bytes such as 1048576, 512K, 64M or 1G; got {raw!r}")
        return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    return integer(minimum=0)(raw)


def _positive_byte_size(raw: Any) -> int:
    """A size in bytes, as byte_size, that may not be 0: a bound that cannot be turned off."""
    value = byte_size(raw)
    if value < 1:
        raise ValueError("must be at least 1 byte")
    return value


def _gunicorn_clamped(maximum: int) -> Validator:
    """Gunicorn's semantics for limit_request_line/fields: 0, or more than the maximum, means the maximum."""

    def validate(raw: Any) -> int:
        value = integer(minimum=0)(raw)
        return maximum if value == 0 or value > maximum else value

    return validate


def workers_value(raw: Any) -> int | str:
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return "auto"
    try:
        value = _to_int(raw)
    except ValueError:
        raise ValueError(f"expected an integer >= 1 or 'auto', got {raw!r}") from None
    if value < 1:
        raise ValueError(f"must be >= 1 or 'auto', got {value}")
    return value


def user_or_group(raw: Any) -> int | str | None:
    """A name or a numeric id; whether it exists is checked where privileges are dropped."""
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    return integer(minimum=0)(raw)


def user_value(raw: Any) -> int | str | None:
    """A user name or uid (that it exists is checked on the effective value: a flag may replace the file's)."""
    return user_or_group(raw)


def group_value(raw: Any) -> int | str | None:
    return user_or_group(raw)


def _check_accounts(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """The effective user and group must exist on this machine (workers switch to them after binding)."""
    import grp
    import pwd

    for name, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        try:
            _existing(values[name], lookup, name)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc} ({_from(sources[name])})") from None


def _existing(value: int | str | None, lookup: Callable[[str], Any], kind: str) -> int | str | None:
    if isinstance(value, str):
        try:
            lookup(value)
        except KeyError:
            raise ValueError(f"no such {kind} {value!r}") from None
    return value


def umask_value(raw: Any) -> int:
    # Like Gunicorn: a leading zero means octal ("0022"), and 0x/0o prefixes work.
    if isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"0\d+", text):
            text = "0o" + text[1:]
        value = _to_int(text, base=0)
    else:
        value = _to_int(raw)
    if not 0 <= value <= 0o777:
        raise ValueError(f"must be between 0 and 0o777, got {raw!r}")
    return value


def header_value(raw: Any) -> str:
    text = string(raw)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain control characters")
    return text


_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the server reads or writes itself: a request id there would change how requests are framed or routed.
_SERVER_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect", "te", "trailer", "date",
     "server", "keep-alive"}
)  # fmt: skip


def request_id_header_value(raw: Any) -> str:
    """A header name for request ids, or "" (off)."""
    text = string(raw)
    if text and not _HEADER_TOKEN.fullmatch(text):
        raise ValueError(f"expected a header name such as X-Request-ID (or '' for off), got {raw!r}")
    if text.lower() in _SERVER_HEADERS:
        raise ValueError(f"{text!r} is a header the server handles itself; use another name, e.g. X-Request-ID")
    return text


def root_path_value(raw: Any) -> str:
    text = string(raw)
    if text and not text.startswith("/"):
        raise ValueError(f"must be empty or start with '/', got {raw!r}")
    return text.rstrip("/")


def forwarded_ips(raw: Any) -> str:
    """A comma-separated list of IP addresses and networks, or "*"; normalised to "a,b,c"."""
    items = [string(item) for item in raw] if isinstance(raw, (list, tuple)) else string(raw).split(",")
    entries = [item.strip() for item in items if item.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address, a network (CIDR) or '*'") from None
    return ",".join(entries)


def bind_list(raw: Any) -> list[str]:
    addresses = string_list(raw)
    if not addresses:
        raise ValueError("needs at least one address")
    return [str(parse_bind(address)) for address in addresses]


def optional_bind(raw: Any) -> str | None:
    return None if raw is None or raw == "" else str(parse_bind(string(raw)))


def admin_bind_value(raw: Any) -> str | None:
    """An address for the admin endpoint; it needs prometheus-client to render /metrics."""
    value = optional_bind(raw)
    if value is not None and importlib.util.find_spec("prometheus_client") is None:
        raise ValueError(
            "the admin endpoint needs the prometheus-client package "
            "(pip install prometheus-client; from corral's checkout: pip install '.[metrics]')"
        )
    return value


def statsd_address(raw: Any) -> str | None:
    return None if raw is None or raw == "" else str(parse_statsd_address(string(raw)))


def statsd_prefix_value(raw: Any) -> str:
    prefix = string(raw)
    statsd_prefix(prefix)  # raises ValueError for characters the StatsD line format reserves
    return prefix


def statsd_tags_value(raw: Any) -> str:
    return statsd_tags(string(raw))


def duration_buckets(raw: Any) -> tuple[float, ...]:
    """Histogram bucket bounds in seconds: a list of numbers, or "0.001,0.01,0.1" from the command line."""
    if isinstance(raw, str):
        items: Any = [item for item in raw.split(",") if item.strip()]
    elif isinstance(raw, (list, tuple)):
        items = raw
    else:
        raise ValueError(f"expected a list of seconds, got {raw!r}")
    return check_latency_bounds(_to_float(item) for item in items)


_CORRAL_WORKERS = frozenset(
    {
        "corral",
        "uvicorn.workers.UvicornWorker",
        "uvicorn_worker.UvicornWorker",
        "uvicorn.workers.UvicornH11Worker",
    }
)


# Gunicorn's thread-based worker classes: the same asyncio worker, with their concurrency for WSGI apps
# (sync: one request in the app at a time; gthread: `threads`).
_THREAD_WORKERS = {
    "sync": "sync",
    "gunicorn.workers.sync.SyncWorker": "sync",
    "gthread": "gthread",
    "gunicorn.workers.gthread.ThreadWorker": "gthread",
}


def worker_class_value(raw: Any) -> str:
    """Every worker class that means "an asyncio ASGI worker" maps to corral's own worker."""
    if inspect.isclass(raw):
        name = f"{raw.__module__}.{raw.__qualname__}"
    elif isinstance(raw, str):
        name = raw.strip()
    else:
        raise ValueError(f"expected a worker class name, got {raw!r}")
    if name in _CORRAL_WORKERS:
        return "corral"
    thread_class = _THREAD_WORKERS.get(name)
    if thread_class is not None:
        return thread_class
    raise ValueError(
        f"corral runs its own asyncio worker; {name!r} is not supported "
        "(use sync, gthread, uvicorn.workers.UvicornWorker or leave it unset)"
    )


def _import_callable(path: str) -> Any:
    module_name, sep, attr = path.rpartition(".")
    if not sep:
        raise ValueError(f"expected a callable or 'module.function', got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # any import-time failure of the named module is a bad value here
        raise ValueError(f"cannot import {path!r}: {type(exc).__name__}: {exc}") from None


def _accepts(func: Callable[..., Any], arity: int) -> bool:
    try:
        inspect.signature(func).bind(*range(arity))
    except TypeError:
        return False
    except ValueError:  # no signature available (some builtins): give it the benefit of the doubt
        return True
    return True


def hook(*arities: int) -> Validator:
    """A callable (or 'module.function') that accepts one of the given numbers of positional arguments."""

    def validate(raw: Any) -> Callable[..., Any] | None:
        if raw is None:
            return None
        func: object = _import_callable(raw.strip()) if isinstance(raw, str) else raw
        if not callable(func):
            raise ValueError(f"expected a function, got {raw!r}")
        if not any(_accepts(func, arity) for arity in arities):
            wanted = " or ".join(str(arity) for arity in arities)
            plural = "" if arities == (1,) else "s"
            raise ValueError(f"must accept {wanted} positional argument{plural}, like Gunicorn's hook")
        return func

    return validate


# Gunicorn's ssl_version: an ssl.PROTOCOL_* number or name, or an ssl.TLSVersion. What it still means is the
# lowest TLS version accepted, so each value is named by that; corral/tls.py raises legacy ones to TLS 1.2.
_SSL_VERSION_NUMBERS: Mapping[int, str] = {
    0: "SSLv2", 1: "SSLv3", 2: "TLS", 3: "TLSv1", 4: "TLSv1_1", 5: "TLSv1_2", 17: "TLS",  # ssl.PROTOCOL_*
    768: "SSLv3", 769: "TLSv1", 770: "TLSv1_1", 771: "TLSv1_2", 772: "TLSv1_3",  # ssl.TLSVersion
}
_SSL_VERSION_NAMES: Mapping[str, str] = {
    "sslv2": "SSLv2", "sslv3": "SSLv3", "tls": "TLS", "sslv23": "TLS", "tls_server": "TLS",
    "tlsv1": "TLSv1", "tlsv1_0": "TLSv1", "tlsv1_1": "TLSv1_1", "tlsv1_2": "TLSv1_2", "tlsv1_3": "TLSv1_3",
}  # fmt: skip


def _ssl_version(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip().isdigit():  # uvicorn's --ssl-version takes ssl.PROTOCOL_* numbers
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        name = _SSL_VERSION_NUMBERS.get(int(raw))
    else:
        text = string(raw).lower().removeprefix("protocol_").replace(".", "_")
        name = _SSL_VERSION_NAMES.get(re.sub(r"^tls(?=\d)", "tlsv", text))
    if name is None:
        raise ValueError(f"expected TLSv1_2 or TLSv1_3 (or another of Gunicorn's protocol names), got {raw!r}")
    return name


_CERT_REQS_NAMES: Mapping[str, int] = {"none": 0, "optional": 1, "required": 2}


def _cert_reqs(raw: Any) -> int:
    """0, 1 or 2: ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED, as numbers or by name."""
    if isinstance(raw, str):
        named = _CERT_REQS_NAMES.get(raw.strip().lower().removeprefix("cert_"))
        if named is not None:
            return named
    return int(integer(minimum=0, maximum=2)(raw))


def _optional_bool(raw: Any) -> bool | None:
    return None if raw is None else boolean(raw)


def _on_unless_false(raw: Any) -> bool:
    """Gunicorn's switches that are on unless set to false: None (its default) means on."""
    return True if raw is None else boolean(raw)


def existing_loop(raw: Any) -> str:
    value = choice("auto", "uvloop", "asyncio")(raw)
    if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("uvloop is not installed (use --loop auto or asyncio)")
    return value


def _optional_int(raw: Any) -> int | None:
    return None if raw is None else integer(minimum=0)(raw)


def optional_port(raw: Any) -> int | None:
    return None if raw is None or raw == "" else integer(minimum=0, maximum=65535)(raw)


def optional_fd(raw: Any) -> int | None:
    return None if raw is None or raw == "" else integer(minimum=0)(raw)


# uvicorn's numeric levels (run(log_level=logging.DEBUG)) and its TRACE level (5).
_LEVEL_NUMBERS: Mapping[int, str] = {5: "trace", 10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def log_level_value(raw: Any) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in _LEVEL_NUMBERS:
        return _LEVEL_NUMBERS[raw]
    return choice("trace", "debug", "info", "warning", "error", "critical", aliases={"warn": "warning"})(raw)


def interface_value(raw: Any) -> str:
    return choice("auto", "asgi3", "asgi2", "wsgi", aliases={"asgi": "asgi3"})(raw)


def ws_value(raw: Any) -> str:
    # websockets and websockets-sansio name what corral uses (the websockets library's protocol), so they are auto.
    return choice("auto", "none", "wsproto", aliases={"websockets": "auto", "websockets-sansio": "auto"})(raw)


def _ws_notice(value: Any) -> str | None:
    if value == "wsproto":
        return "corral's WebSocket implementation is built on websockets, not wsproto; it serves the same protocol"
    return None


def header_lines(raw: Any) -> list[str]:
    """Response headers as "Name: value" lines, from NAME:VALUE strings or (name, value) pairs (uvicorn.run)."""
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    lines = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            name, value = (string(part) for part in item)
        else:
            name, sep, value = string(item).partition(":")
            if not sep:
                raise ValueError(f"expected NAME:VALUE, got {item!r}")
        name, value = name.strip(), value.strip()
        if not _HEADER_TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in _SERVER_HEADERS - {"server"}:
            raise ValueError(f"{name!r} is a header the server handles itself")
        lines.append(f"{name}: {header_value(value)}")
    return lines


def env_file_value(raw: Any) -> str | None:
    """A readable .env file; it is parsed here so that a bad line stops the start before anything is bound."""
    if raw is None or raw == "":
        return None
    from corral.envfile import read_env_file  # a small parser; no dependency

    path = string(raw)
    read_env_file(path)
    return path


# --------------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A section of the table: its title (in --help and docs/settings.md) and its typed class in
    corral/core/settings.py, which Settings holds as `attribute`."""

    title: str
    attribute: str
    class_name: str


SETTING_SECTIONS: tuple[Section, ...] = (
    Section("Config File", "config_file", "ConfigFileSettings"),
    Section("Application", "application", "ApplicationSettings"),
    Section("Server Socket", "socket", "SocketSettings"),
    Section("Worker Processes", "worker", "WorkerSettings"),
    Section("HTTP", "http", "HttpSettings"),
    Section("Security", "security", "SecuritySettings"),
    Section("Proxy", "proxy", "ProxySettings"),
    Section("Logging", "logging", "LoggingSettings"),
    Section("Metrics", "metrics", "MetricsSettings"),
    Section("Process", "process", "ProcessSettings"),
    Section("TLS", "tls", "TlsSettings"),
    Section("WebSocket", "websocket", "WebSocketSettings"),
    Section("Development", "development", "DevelopmentSettings"),
    Section("Server Hooks", "hooks", "HooksSettings"),
)
SECTIONS: tuple[str, ...] = tuple(section.title for section in SETTING_SECTIONS)

_STRICT_PARSER = "corral's HTTP parser is always strict (request-smuggling safety)"
_NO_WSGI = "it applies to WSGI servers; corral serves ASGI apps"
_NO_SYSLOG = "corral does not write to syslog; its logs go to stderr, which journald collects"

_HOOK_DOCS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("on_starting", (1,), "on_starting(server): called just before the master process is initialised."),
    ("on_reload", (1,), "on_reload(server): called when workers are recycled on SIGHUP."),
    ("when_ready", (1,), "when_ready(server): called just after the server is started."),
    ("pre_fork", (2,), "pre_fork(server, worker): called just before a worker is forked."),
    ("post_fork", (2,), "post_fork(server, worker): called just after a worker has been forked."),
    ("post_worker_init", (1,), "post_worker_init(worker): called after a worker has loaded the app."),
    ("worker_int", (1,), "worker_int(worker): called when a worker exits on SIGINT or SIGQUIT."),
    ("worker_abort", (1,), "worker_abort(worker): called when a worker gets SIGABRT (usually a timeout)."),
    ("pre_exec", (1,), "pre_exec(server): called just before a new master process is exec'd."),
    ("pre_request", (2,), "pre_request(worker, req): called just before a worker handles a request."),
    ("post_request", (2, 3, 4), "post_request(worker, req, environ, resp): called after a request."),
    ("child_exit", (2,), "child_exit(server, worker): called in the master after a worker exited."),
    ("worker_exit", (2,), "worker_exit(server, worker): called in the worker just before it exits."),
    (
        "nworkers_changed",
        (3,),
        "nworkers_changed(server, new_value, old_value): called when the worker count changes.",
    ),
    ("on_exit", (1,), "on_exit(server): called just before corral exits."),
)


def _hooks() -> tuple[Setting, ...]:
    return tuple(
        Setting(name, "Server Hooks", None, hook(*arities), doc, kind="hook")
        for name, arities, doc in _HOOK_DOCS
    )


_INT = "INT"
_SECONDS = "SECONDS"

SETTINGS: tuple[Setting, ...] = (
    # Config File
    Setting("config", "Config File", None, optional_string,
            f"Python config file (or file:PATH, python:MODULE); default ./{DEFAULT_CONFIG_FILE}, else "
            f"./{GUNICORN_CONFIG_FILE}, if present.",
            cli=("-c", "--config"), metavar="FILE"),
    Setting("print_config", "Config File", False, boolean,
            "Print every effective setting and where it came from, then exit.",
            cli=("--print-config",), kind="flag"),
    Setting("check_config", "Config File", False, boolean,
            "Check the configuration and that the app imports, then exit.",
            cli=("--check-config",), kind="flag"),
    Setting("wsgi_app", "Config File", None, optional_string,
            "The app (MODULE:ATTRIBUTE) when none is given on the command line (Gunicorn's name)."),
    # Application
    Setting("app_dir", "Application", ".", string,
            "Directory added to sys.path before importing the app.", cli=("--app-dir",), metavar="DIR",
            uvicorn="app_dir"),
    Setting("factory", "Application", False, boolean,
            "Treat APP as a factory: call it (no arguments) to get the ASGI app.",
            cli=("--factory",), kind="flag", uvicorn="factory"),
    Setting("lifespan", "Application", "auto", choice("auto", "on", "off"),
            "ASGI lifespan protocol: auto (use it if the app supports it), on (required), off.",
            cli=("--lifespan",), metavar="MODE", uvicorn="lifespan"),
    Setting("interface", "Application", "auto", interface_value,
            "How the app is called: auto (detected from the callable), asgi3 (or asgi), asgi2, wsgi.",
            cli=("--interface",), metavar="INTERFACE", uvicorn="interface"),
    Setting("loop", "Application", "auto", existing_loop,
            "Event loop: auto (uvloop when installed), uvloop, asyncio.", cli=("--loop",), metavar="LOOP",
            uvicorn="loop"),
    Setting("preload_app", "Application", False, boolean,
            "Import the app in the master before forking workers.",
            cli=("--preload",), kind="flag"),
    Setting("chdir", "Application", None, optional_string,
            "Change to this directory before loading the app.",
            cli=("--chdir",), metavar="DIR"),
    Setting("raw_env", "Application", [], key_value_list,
            "Set an environment variable (KEY=VALUE) for the app; repeatable.",
            cli=("-e", "--env"), metavar="ENV", kind="append"),
    Setting("env_file", "Application", None, env_file_value,
            "A .env file (KEY=VALUE lines) loaded into the environment at start and on HUP; variables already "
            "set keep their value, raw_env (-e) wins over the file.",
            cli=("--env-file",), metavar="FILE", uvicorn="env_file"),
    Setting("pythonpath", "Application", None, optional_string,
            "Comma-separated directories to add to sys.path.",
            cli=("--pythonpath",), metavar="PATHS"),
    Setting("paste", "Application", None, optional_string,
            "Load a PasteDeploy config file.", cli=("--paste", "--paster"), metavar="FILE",
            unsupported=_NO_WSGI),
    Setting("raw_paste_global_conf", "Application", [], key_value_list,
            "PasteDeploy global config variable (KEY=VALUE).", cli=("--paste-global",), metavar="CONF",
            kind="append", unsupported=_NO_WSGI),
    # Server Socket
    Setting("bind", "Server Socket", ["127.0.0.1:8000"], bind_list,
            "Address to listen on: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (HOST alone: port 8000); "
            "repeatable.",
            cli=("-b", "--bind"), env="PORT", env_template="0.0.0.0:{}", metavar="ADDRESS", kind="append",
            default_doc="['127.0.0.1:8000'], or ['0.0.0.0:$PORT'] when PORT is set"),
    Setting("host", "Server Socket", None, optional_string,
            "uvicorn's host: with port, listen on HOST:PORT instead of bind (HOST default 127.0.0.1); not read "
            "from config files, where `host` is left to the file's own use.",
            cli=("--host",), metavar="HOST", uvicorn="host"),
    Setting("port", "Server Socket", None, optional_port,
            "uvicorn's port: with host, listen on HOST:PORT instead of bind (PORT default 8000); not read from "
            "config files.",
            cli=("--port",), metavar="PORT", uvicorn="port"),
    Setting("uds", "Server Socket", None, optional_string,
            "uvicorn's unix domain socket: listen on unix:PATH instead of bind; not read from config files.",
            cli=("--uds",), metavar="PATH", uvicorn="uds"),
    Setting("fd", "Server Socket", None, optional_fd,
            "uvicorn's file descriptor: listen on the inherited socket fd://N instead of bind; not read from "
            "config files.",
            cli=("--fd",), metavar=_INT, uvicorn="fd"),
    Setting("backlog", "Server Socket", 2048, integer(minimum=1),
            "Maximum number of pending connections queued by the kernel.", cli=("--backlog",), metavar=_INT,
            uvicorn="backlog"),
    Setting("reuse_port", "Server Socket", False, boolean,
            "Set SO_REUSEPORT: each worker gets its own listening socket.",
            cli=("--reuse-port",), kind="flag"),
    # Worker Processes
    Setting("workers", "Worker Processes", "auto", workers_value,
            "Number of worker processes, or 'auto' (the CPUs this process may use).",
            cli=("-w", "--workers"), env="WEB_CONCURRENCY", metavar=_INT, uvicorn="workers",
            default_doc="'auto'; 1 with --reload"),
    Setting("worker_class", "Worker Processes", "corral", worker_class_value,
            "corral, a Uvicorn worker name, sync or gthread: all mean corral's worker; sync runs WSGI apps one "
            "request at a time.",
            cli=("-k", "--worker-class"), metavar="STRING"),
    Setting("worker_connections", "Worker Processes", 1000, integer(minimum=1),
            "Maximum simultaneous connections per worker; over the cap new ones are refused.",
            cli=("--worker-connections",), metavar=_INT),
    Setting("threads", "Worker Processes", 1, integer(minimum=1),
            "Requests running a WSGI app at once per worker; 1 (and sync) runs it on the worker's event-loop "
            "thread, more in a pool of this many threads.",
            cli=("--threads",), metavar=_INT),
    Setting("timeout", "Worker Processes", 30.0, seconds(),
            "Kill (with a traceback) and replace a worker whose event loop is silent this long; 0: off.",
            cli=("-t", "--timeout"), env="WEB_TIMEOUT", metavar=_SECONDS),
    Setting("graceful_timeout", "Worker Processes", 30.0, seconds(),
            "On shutdown or replacement, time for in-flight requests and app work after them (background tasks).",
            cli=("--graceful-timeout", "--timeout-graceful-shutdown"), metavar=_SECONDS,
            uvicorn="timeout_graceful_shutdown"),
    Setting("keepalive", "Worker Processes", 5.0, seconds(),
            "Seconds an idle keep-alive connection is kept open; 0 closes after each response.",
            cli=("--keep-alive", "--timeout-keep-alive"), metavar=_SECONDS, uvicorn="timeout_keep_alive"),
    Setting("max_requests", "Worker Processes", 0, integer(minimum=0),
            "Replace a worker after it has served this many requests; 0: never.",
            cli=("--max-requests", "--limit-max-requests"), env="WEB_MAX_REQUESTS", metavar=_INT,
            uvicorn="limit_max_requests"),
    Setting("max_requests_jitter", "Worker Processes", 0, integer(minimum=0),
            "Add a random 0..N to max_requests per worker, so workers are not all replaced at once.",
            cli=("--max-requests-jitter",), metavar=_INT),
    Setting("max_worker_memory", "Worker Processes", 0, byte_size,
            "Replace a worker whose RSS stays above this many bytes (512M, 1G); 0: off.",
            cli=("--max-worker-memory",), metavar="BYTES"),
    Setting("max_worker_lifetime", "Worker Processes", 0.0, seconds(),
            "Replace a worker after this many seconds (with jitter); 0: off.",
            cli=("--max-worker-lifetime",), metavar=_SECONDS),
    Setting("boot_timeout", "Worker Processes", 60.0, seconds(),
            "A worker that has not loaded the app and finished lifespan startup by then is killed; 0: off.",
            cli=("--boot-timeout",), metavar=_SECONDS),
    Setting("loop_lag_warn", "Worker Processes", 0.0, seconds(),
            "Log the loop's stack and in-flight requests when the event loop stalls this long; 0: off.",
            cli=("--loop-lag-warn",), metavar=_SECONDS),
    Setting("drain_delay", "Worker Processes", 0.0, seconds(),
            "On TERM, report not-ready and keep serving this long before draining (load balancers).",
            cli=("--drain-delay",), metavar=_SECONDS),
    Setting("crash_loop_isolation", "Worker Processes", True, boolean,
            "While a request keeps killing its worker (2 deaths within 10 s), each worker serves one HTTP "
            "connection at a time, so a crash takes no other request with it; --no-crash-loop-isolation keeps "
            "serving concurrently (more throughput, a few requests lost with each crash).",
            cli=("--no-crash-loop-isolation",), kind="negflag"),
    # HTTP
    Setting("root_path", "HTTP", "", root_path_value,
            "ASGI root_path: the prefix under which a proxy mounts the app.",
            cli=("--root-path",), metavar="PATH", uvicorn="root_path"),
    Setting("server_header", "HTTP", "corral", header_value,
            "Value of the Server response header; empty (--no-server-header): none; --server-header alone keeps "
            "the default.",
            cli=("--server-header",), metavar="STRING", bare="corral", switches=(("--no-server-header", ""),),
            uvicorn="server_header"),
    Setting("date_header", "HTTP", True, boolean,
            "Whether responses get a Date header (--no-date-header turns it off).",
            cli=("--no-date-header",), kind="negflag", switches=(("--date-header", True),), uvicorn="date_header"),
    Setting("headers", "HTTP", [], header_lines,
            "A header added to every response, NAME:VALUE (uvicorn's --header); repeatable. A Server header "
            "replaces server_header.",
            cli=("--header",), metavar="NAME:VALUE", kind="append", uvicorn="headers"),
    Setting("limit_concurrency", "HTTP", 0, integer(minimum=0),
            "A request that arrives while its worker has more connections open than this (each runs one "
            "request at a time) is answered 503 and its connection closed; 0: off.",
            cli=("--limit-concurrency",), metavar=_INT, uvicorn="limit_concurrency"),
    Setting("http", "HTTP", "auto", choice("auto", "h11", aliases={"httptools": "auto"}),
            "uvicorn's HTTP parser choice: corral always parses with httptools (auto and httptools).",
            cli=("--http",), metavar="PARSER", uvicorn="http",
            ignored="corral always parses HTTP/1.1 with httptools"),
    Setting("h11_max_incomplete_event_size", "HTTP", None, _optional_int,
            "uvicorn's buffer limit for the h11 parser.",
            cli=("--h11-max-incomplete-event-size",), metavar=_INT, uvicorn="h11_max_incomplete_event_size",
            ignored="corral parses with httptools; its request head is bounded by limit_request_line, "
                    "limit_request_fields and limit_request_field_size"),
    Setting("sendfile", "HTTP", True, _on_unless_false,
            "Send file responses (WSGI's wsgi.file_wrapper, ASGI's http.response.zerocopysend) with sendfile() "
            "on plain connections; --no-sendfile reads and writes them instead. None (Gunicorn's default) is on.",
            cli=("--no-sendfile",), env="SENDFILE", kind="negflag"),
    Setting("tmp_upload_dir", "HTTP", None, optional_string,
            "Directory for WSGI request bodies too large to keep in memory (default: the system's temp dir)."),
    Setting("header_map", "HTTP", "drop", choice("drop", "refuse", "dangerous"),
            "Gunicorn's mapping of header names into the WSGI environ.",
            cli=("--header-map",), metavar="MODE", ignored=_NO_WSGI),
    Setting("forwarder_headers", "HTTP", "SCRIPT_NAME,PATH_INFO", string,
            "Gunicorn's headers that may set WSGI environ variables.",
            cli=("--forwarder-headers",), metavar="LIST", ignored=_NO_WSGI),
    # Security
    Setting("limit_request_line", "Security", 4094, _gunicorn_clamped(8190),
            "Maximum request-line size in bytes (414 beyond); 0 or more than 8190 means 8190.",
            cli=("--limit-request-line",), metavar=_INT),
    Setting("limit_request_fields", "Security", 100, _gunicorn_clamped(32768),
            "Maximum number of request header fields (431 beyond); 0 or more than 32768 means 32768.",
            cli=("--limit-request-fields",), metavar=_INT),
    Setting("limit_request_field_size", "Security", 8190, integer(minimum=0),
            "Maximum size in bytes of one request header field (431 beyond); 0: no per-field limit.",
            cli=("--limit-request-field-size", "--limit-request-field_size"), metavar=_INT),
    Setting("limit_request_body", "Security", 0, byte_size,
            "Maximum request body size in bytes (413 beyond); 0: no limit.",
            cli=("--limit-request-body",), metavar="BYTES"),
    Setting("header_timeout", "Security", 10.0, seconds(),
            "Maximum time to receive a request's headers, against slow clients (slowloris); 0: off.",
            cli=("--header-timeout",), metavar=_SECONDS),
    Setting("body_timeout", "Security", 60.0, seconds(),
            "Close a connection whose request body sends nothing for this long while the app waits; 0: off.",
            cli=("--body-timeout",), metavar=_SECONDS),
    Setting("send_timeout", "Security", 60.0, seconds(),
            "Close a connection whose client reads nothing of its response for this long (writes blocked, or "
            "unsent data left at close); 0: off.",
            cli=("--send-timeout",), metavar=_SECONDS),
    Setting("strip_header_spaces", "Security", False, boolean,
            "Gunicorn's leniency for spaces before a header colon.",
            cli=("--strip-header-spaces",), kind="flag", ignored=_STRICT_PARSER),
    Setting("permit_unconventional_http_method", "Security", False, boolean,
            "Gunicorn's leniency for unusual request methods.",
            cli=("--permit-unconventional-http-method",), kind="flag", ignored=_STRICT_PARSER),
    Setting("permit_unconventional_http_version", "Security", False, boolean,
            "Gunicorn's leniency for unusual HTTP versions.",
            cli=("--permit-unconventional-http-version",), kind="flag", ignored=_STRICT_PARSER),
    Setting("casefold_http_method", "Security", False, boolean,
            "Gunicorn's upper-casing of request methods.",
            cli=("--casefold-http-method",), kind="flag", ignored=_STRICT_PARSER),
    Setting("permit_obsolete_folding", "Security", False, boolean,
            "Gunicorn's leniency for obsolete header line folding.",
            cli=("--permit-obsolete-folding",), kind="flag", ignored=_STRICT_PARSER),
    Setting("tolerate_dangerous_framing", "Security", False, boolean,
            "Gunicorn's leniency for ambiguous message framing.",
            cli=("--tolerate-dangerous-framing",), kind="flag", ignored=_STRICT_PARSER),
    # Proxy
    Setting("forwarded_allow_ips", "Proxy", "127.0.0.1,::1", forwarded_ips,
            "Comma-separated IPs/networks (or '*') whose X-Forwarded-*/Forwarded headers are trusted.",
            cli=("--forwarded-allow-ips",), env="FORWARDED_ALLOW_IPS", metavar="LIST",
            uvicorn="forwarded_allow_ips"),
    Setting("proxy_headers", "Proxy", True, boolean,
            "Honour X-Forwarded-*/Forwarded from forwarded_allow_ips (--no-proxy-headers: never, from anyone).",
            cli=("--proxy-headers",), kind="flag", switches=(("--no-proxy-headers", False),),
            uvicorn="proxy_headers"),
    Setting("secure_scheme_headers", "Proxy",
            {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"},
            header_dict,
            "Headers (and exact values) by which a trusted proxy says the request came over HTTPS."),
    Setting("proxy_protocol", "Proxy", False, boolean,
            "Read a PROXY protocol header (v1 or v2) first on connections from proxy_allow_ips (not with TLS).",
            cli=("--proxy-protocol",), kind="flag"),
    Setting("proxy_allow_ips", "Proxy", "127.0.0.1,::1", forwarded_ips,
            "Comma-separated IPs/networks (or '*') that must send a PROXY header when proxy_protocol is on.",
            cli=("--proxy-allow-from",), metavar="LIST"),
    # Logging
    Setting("accesslog", "Logging", None, optional_string,
            "Access log file; '-' is stdout; unset: no access log.",
            cli=("--access-logfile",), metavar="FILE"),
    Setting("access_log_format", "Logging", '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
            string, "Access log line format: Gunicorn's atoms, and %(request_id)s (docs/logging.md).",
            cli=("--access-logformat",), metavar="STRING"),
    Setting("errorlog", "Logging", "-", string,
            "Error log file; '-' is stderr.", cli=("--error-logfile", "--log-file"), metavar="FILE"),
    Setting("loglevel", "Logging", "info", log_level_value,
            "Error log level: trace, debug, info, warning, error, critical.", cli=("--log-level",),
            metavar="LEVEL", uvicorn="log_level"),
    Setting("access_log", "Logging", None, _optional_bool,
            "Access log on or off; unset: on (to stdout) when stderr is a terminal, else as accesslog says.",
            cli=("--access-log",), kind="flag", switches=(("--no-access-log", False),), uvicorn="access_log",
            default_doc="None (on when stderr is a terminal)"),
    Setting("use_colors", "Logging", None, _optional_bool,
            "Colour the log lines; unset: when stderr is a terminal (and the text log format is used).",
            cli=("--use-colors",), kind="flag", switches=(("--no-use-colors", False),), uvicorn="use_colors",
            default_doc="None (when stderr is a terminal)"),
    Setting("log_format", "Logging", "text", choice("text", "json"),
            "Line format of the error and access logs: text (Gunicorn's) or json (one object per line; fields in "
            "docs/logging.md).",
            cli=("--log-format",), metavar="FORMAT"),
    Setting("request_id_header", "Logging", "", request_id_header_value,
            "Request ids in this header (X-Request-ID, usually): a valid id the client sends is kept, else one "
            "is made; the app sees it in the request headers, the response echoes it, the access log has it "
            "(%(request_id)s); empty: off.",
            cli=("--request-id-header",), metavar="NAME"),
    Setting("logconfig", "Logging", None, optional_string,
            "A logging config file applied in the master before the workers start: .json and .yaml/.yml hold a "
            "dictConfig dictionary (YAML needs PyYAML), any other name is fileConfig (ini) format.",
            cli=("--log-config",), metavar="FILE", uvicorn="log_config"),
    Setting("logconfig_dict", "Logging", {}, mapping,
            "A logging.config.dictConfig dictionary; takes precedence over logconfig_json and logconfig."),
    Setting("logconfig_json", "Logging", None, optional_string,
            "A logging.config dictionary in a JSON file; takes precedence over logconfig.",
            cli=("--log-config-json",), metavar="FILE"),
    Setting("capture_output", "Logging", False, boolean,
            "Gunicorn's redirection of the app's stdout/stderr into the error log.",
            cli=("--capture-output",), kind="flag",
            ignored="corral leaves stdout/stderr alone; let the supervisor collect them"),
    Setting("logger_class", "Logging", "gunicorn.glogging.Logger", string,
            "Gunicorn's logger class.", cli=("--logger-class",), metavar="STRING",
            ignored="Gunicorn logger classes do not apply to corral's logs"),
    Setting("syslog", "Logging", False, boolean, "Send logs to syslog.",
            cli=("--log-syslog",), kind="flag", ignored=_NO_SYSLOG),
    Setting("syslog_addr", "Logging", None, optional_string, "Syslog address.",
            cli=("--log-syslog-to",), metavar="ADDRESS", ignored=_NO_SYSLOG),
    Setting("syslog_prefix", "Logging", None, optional_string, "Syslog program-name prefix.",
            cli=("--log-syslog-prefix",), metavar="PREFIX", ignored=_NO_SYSLOG),
    Setting("syslog_facility", "Logging", "user", string, "Syslog facility.",
            cli=("--log-syslog-facility",), metavar="FACILITY", ignored=_NO_SYSLOG),
    Setting("disable_redirect_access_to_syslog", "Logging", False, boolean,
            "Keep access logs out of syslog.", cli=("--disable-redirect-access-to-syslog",), kind="flag",
            ignored=_NO_SYSLOG),
    Setting("enable_stdio_inheritance", "Logging", False, boolean,
            "Gunicorn's stdio inheritance in daemon mode.", cli=("-R", "--enable-stdio-inheritance"),
            kind="flag", ignored="corral does not daemonize, so stdio is always inherited"),
    # Metrics
    Setting("admin_bind", "Metrics", None, admin_bind_value,
            "Address of the admin endpoint (/livez, /readyz, /metrics, /status, and what corral status reads), "
            "served by a child of the master, never by the app's workers: HOST:PORT or unix:PATH; unset: off.",
            cli=("--admin-bind",), metavar="ADDRESS"),
    Setting("request_metrics", "Metrics", True, boolean,
            "Time every request (the duration histogram) and count requests by method; --no-request-metrics "
            "saves that work. Read at start: a reload does not change it.",
            cli=("--no-request-metrics",), kind="negflag"),
    Setting("app_metrics", "Metrics", True, boolean,
            "With admin_bind: add the app's own prometheus_client metrics, summed over every worker, to /metrics "
            "(corral prepares PROMETHEUS_MULTIPROC_DIR, or uses yours); --no-app-metrics turns it off.",
            cli=("--no-app-metrics",), kind="negflag"),
    Setting("metrics_buckets", "Metrics", DEFAULT_LATENCY_BOUNDS, duration_buckets,
            "Upper bounds in seconds (1 to 15, ascending) of the request duration histogram's buckets; "
            "comma-separated on the command line. Read at start: a reload does not change them.",
            cli=("--metrics-buckets",), metavar="SECONDS"),
    Setting("statsd_host", "Metrics", None, statsd_address,
            "StatsD server, HOST:PORT (port 8125 when omitted) or unix:PATH: the master sends the pool's "
            "metrics there about once a second; unset: off.",
            cli=("--statsd-host",), metavar="ADDRESS"),
    Setting("statsd_prefix", "Metrics", "", statsd_prefix_value,
            "Prefix for StatsD metric names (a dot is added after it).", cli=("--statsd-prefix",),
            metavar="PREFIX"),
    Setting("dogstatsd_tags", "Metrics", "", statsd_tags_value,
            "Comma-separated DogStatsD tags (key:value) added to every StatsD metric.",
            cli=("--dogstatsd-tags",), metavar="TAGS"),
    # Process
    Setting("proc_name", "Process", None, optional_string,
            "Name shown in process titles (corral: master [NAME]).",
            cli=("-n", "--name"), metavar="STRING"),
    Setting("pidfile", "Process", None, optional_string,
            "Write the master's pid to this file.", cli=("-p", "--pid"), metavar="FILE"),
    Setting("user", "Process", None, user_value,
            "Run workers as this user (name or uid), after binding.", cli=("-u", "--user"), metavar="USER"),
    Setting("group", "Process", None, group_value,
            "Run workers as this group (name or gid), after binding.", cli=("-g", "--group"),
            metavar="GROUP"),
    Setting("umask", "Process", 0, umask_value,
            "umask applied while binding unix sockets (0022, 0o22 or 18); 0 leaves them open to all, as Gunicorn.",
            cli=("-m", "--umask"), metavar=_INT),
    Setting("initgroups", "Process", False, boolean,
            "Also give workers every supplementary group of the user.", cli=("--initgroups",), kind="flag"),
    Setting("worker_tmp_dir", "Process", None, optional_string,
            "Gunicorn's directory for worker heartbeat files.",
            cli=("--worker-tmp-dir",), metavar="DIR",
            ignored="corral's heartbeats live in shared memory, not in files"),
    Setting("daemon", "Process", False, boolean,
            "Gunicorn's daemon mode.", cli=("-D", "--daemon"), kind="flag",
            unsupported="corral does not daemonize; run it in the foreground under systemd, "
                        "a container runtime or another supervisor"),
    # TLS
    Setting("certfile", "TLS", None, optional_string,
            "TLS certificate file (PEM; intermediates after the certificate): every listener serves HTTPS. The "
            "master reads it (and keyfile, ca_certs) before binding and again on HUP.",
            cli=("--certfile", "--ssl-certfile"), uvicorn="ssl_certfile", metavar="FILE"),
    Setting("keyfile", "TLS", None, optional_string,
            "TLS private key file (PEM; encrypted only with keyfile_password); default: the key in certfile.",
            cli=("--keyfile", "--ssl-keyfile"), uvicorn="ssl_keyfile", metavar="FILE"),
    Setting("keyfile_password", "TLS", None, optional_string,
            "Password of an encrypted keyfile.", cli=("--ssl-keyfile-password",), metavar="PASSWORD",
            uvicorn="ssl_keyfile_password"),
    Setting("ca_certs", "TLS", None, optional_string,
            "PEM file of the CAs that sign client certificates; used with cert_reqs 1 or 2 (a warning at 0).",
            cli=("--ca-certs", "--ssl-ca-certs"), uvicorn="ssl_ca_certs", metavar="FILE"),
    Setting("cert_reqs", "TLS", 0, _cert_reqs,
            "Client certificates: 0 not asked, 1 optional, 2 required (ssl.CERT_* values work too); 1 and 2 "
            "need ca_certs.",
            cli=("--cert-reqs", "--ssl-cert-reqs"), uvicorn="ssl_cert_reqs", metavar=_INT),
    Setting("ciphers", "TLS", None, optional_string,
            "OpenSSL cipher list for TLS 1.2 (TLS 1.3 always uses OpenSSL's suites); default: Python's.",
            cli=("--ciphers", "--ssl-ciphers"), uvicorn="ssl_ciphers", metavar="CIPHERS"),
    Setting("ssl_version", "TLS", None, _ssl_version,
            "Lowest TLS version accepted: TLSv1_2 (the default) or TLSv1_3. Gunicorn's protocol names and "
            "numbers work: TLS, SSLv23 and TLS_SERVER mean TLSv1_2; SSLv3, TLSv1 and TLSv1_1 are raised to "
            "TLSv1_2 with a warning.",
            cli=("--ssl-version",), uvicorn="ssl_version", metavar="VERSION"),
    Setting("do_handshake_on_connect", "TLS", False, boolean,
            "Kept for Gunicorn config files; both values behave the same: asyncio does the handshake as soon "
            "as a connection is accepted, without blocking the worker, and the client must finish it within "
            "header_timeout (60 s when that is 0).",
            cli=("--do-handshake-on-connect",), kind="flag"),
    Setting("suppress_ragged_eofs", "TLS", True, boolean,
            "Treat a TLS connection closed without close_notify as a normal EOF.",
            cli=("--suppress-ragged-eofs",), kind="flag",
            ignored="asyncio always treats a TLS close without close_notify as the end of the stream; HTTP "
                    "framing (Content-Length, chunked) still tells a cut-short request from a whole one"),
    Setting("ssl_context", "TLS", None, hook(2),
            "ssl_context(config, default_ssl_context_factory): returns the SSLContext to use; the factory takes "
            "no argument and returns corral's context built from the settings above. Runs in the master, "
            "before binding and on HUP; needs certfile.",
            kind="hook"),
    # WebSocket
    Setting("ws_max_size", "WebSocket", 16 * 1024 * 1024, byte_size,
            "Largest WebSocket message accepted, in bytes (close 1009 beyond).",
            cli=("--ws-max-size",), metavar="BYTES", uvicorn="ws_max_size"),
    Setting("ws_max_queue", "WebSocket", 32, integer(minimum=1),
            "Incoming WebSocket messages buffered before reading pauses.",
            cli=("--ws-max-queue",), metavar=_INT, uvicorn="ws_max_queue"),
    Setting("ws_max_queue_bytes", "WebSocket", 4 * 1024 * 1024, _positive_byte_size,
            "Bytes of incoming WebSocket messages (decompressed) buffered before reading pauses.",
            cli=("--ws-max-queue-bytes",), metavar="BYTES"),
    Setting("ws_ping_interval", "WebSocket", 20.0, seconds(),
            "Seconds between keep-alive pings; 0: off.",
            cli=("--ws-ping-interval",), metavar=_SECONDS, uvicorn="ws_ping_interval"),
    Setting("ws_ping_timeout", "WebSocket", 20.0, seconds(),
            "Close the connection when a ping is not answered within this many seconds; 0: off.",
            cli=("--ws-ping-timeout",), metavar=_SECONDS, uvicorn="ws_ping_timeout"),
    Setting("ws_per_message_deflate", "WebSocket", True, boolean,
            "Negotiate permessage-deflate compression.",
            cli=("--ws-per-message-deflate",), metavar="BOOL", uvicorn="ws_per_message_deflate"),
    Setting("ws", "WebSocket", "auto", ws_value,
            "uvicorn's WebSocket implementation: auto, websockets and websockets-sansio all mean corral's own "
            "(built on websockets); none serves upgrade requests as plain HTTP; wsproto is accepted with a notice.",
            cli=("--ws",), metavar="IMPL", uvicorn="ws", notice=_ws_notice),
    # Development
    Setting("reload", "Development", False, boolean,
            "Replace the workers when a source file or the config file changes (development only; needs watchfiles).",
            cli=("--reload",), kind="flag", uvicorn="reload"),
    Setting("reload_delay", "Development", QUIET_PERIOD, seconds(),
            "Seconds without further changes before --reload acts on a burst of edits.",
            cli=("--reload-delay",), metavar=_SECONDS, uvicorn="reload_delay"),
    Setting("reload_engine", "Development", "auto", choice("auto", "poll", "inotify"),
            "How --reload sees changes: auto (native events, polling where they fail), poll, inotify.",
            cli=("--reload-engine",), metavar="ENGINE"),
    Setting("reload_dirs", "Development", [], string_list,
            "Directories watched instead of the current directory and app_dir; repeatable.",
            cli=("--reload-dir",), metavar="DIR", kind="append", uvicorn="reload_dirs"),
    Setting("reload_extra_files", "Development", [], string_list,
            "Files that always trigger a reload, wherever they are; repeatable.",
            cli=("--reload-extra-file",), metavar="FILE", kind="append"),
    Setting("reload_include", "Development", [], string_list,
            "Glob patterns of files that also trigger a reload, besides *.py; repeatable.",
            cli=("--reload-include",), metavar="GLOB", kind="append", uvicorn="reload_includes"),
    Setting("reload_exclude", "Development", [], string_list,
            "Glob patterns of files or directories that never trigger a reload; repeatable.",
            cli=("--reload-exclude",), metavar="GLOB", kind="append", uvicorn="reload_excludes"),
    Setting("spew", "Development", False, boolean,
            "Gunicorn's trace of every executed line.", cli=("--spew",), kind="flag",
            ignored="use a debugger or sys.settrace in the app instead"),
    # Server Hooks
    *_hooks(),
)  # fmt: skip

SETTINGS_BY_NAME: Mapping[str, Setting] = types.MappingProxyType({s.name: s for s in SETTINGS})
# What `corral --help` shows (two screens); `corral --help-all` shows every flag.
HELP_COMMON: frozenset[str] = frozenset(
    {"config", "print_config", "factory", "raw_env", "env_file", "bind", "host", "port", "uds", "workers",
     "timeout", "graceful_timeout", "keepalive", "max_requests", "root_path", "forwarded_allow_ips",
     "proxy_headers", "accesslog", "access_log", "loglevel", "log_format", "logconfig", "use_colors", "admin_bind",
     "certfile", "keyfile", "reload", "reload_dirs"}
)  # fmt: skip
_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({s.name: s.validator(s.default) for s in SETTINGS})
_FILE_IGNORED = frozenset({"config"})  # meaningless inside the file it would name
# uvicorn's socket settings come from the command line and corral.run() only: in a Gunicorn config file these
# names are the file's own helpers (`port = os.environ.get("PORT", "8000")` before `bind = ...`).
_SOCKET_PARTS = ("host", "port", "uds", "fd")
_FILE_LOCAL = frozenset(_SOCKET_PARTS)


# --------------------------------------------------------------------------------------------------
# The effective configuration.
# --------------------------------------------------------------------------------------------------


class Config:
    """The effective configuration, built once by the loader: the typed settings by section
    (`cfg.settings.worker.timeout`), the app, and where each value came from.

    Gunicorn's flat reads (`server.cfg.workers`, `worker.cfg.bind`) work too, for config files and server hooks
    written for Gunicorn. The type checker does not see them: corral's own code reads `settings`, whose
    sections are typed and frozen.
    """

    settings: Settings
    app: str | None  # the positional APP, or wsgi_app from the config file
    app_source: str
    sources: dict[str, str]  # setting name -> "default" | "env VAR" | "config file PATH" | ... | "command line"
    config_file: str | None
    warnings: tuple[str, ...]  # one line each, for the CLI to print

    def __init__(
        self,
        values: Mapping[str, Any],
        sources: Mapping[str, str],
        app: str | None = None,
        *,
        app_source: str = "default",
        config_file: str | None = None,
        warnings: Iterable[str] = (),
    ) -> None:
        # The flat view for Gunicorn-style reads: plain instance attributes, so a hook reads them at no cost.
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self.settings = settings_from_values(values)
        self.app = app
        self.app_source = app_source
        self.sources = dict(sources)
        self.config_file = config_file
        self.warnings = tuple(warnings)

    if not TYPE_CHECKING:  # hidden from mypy, so that a flat read in corral's own code is a type error

        def __getattr__(self, name: str) -> Any:
            # Only reached for names that are not attributes: say so clearly instead of a bare AttributeError.
            import difflib  # here, not at the top: workers never suggest, and it costs memory
            close = difflib.get_close_matches(name, SETTINGS_BY_NAME, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AttributeError(f"no setting named {name!r}{hint}")

    def values(self) -> dict[str, Any]:
        """Every setting's effective value, in table order."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated; source "override"); handy in tests."""
        values = self.values()
        sources = dict(self.sources)
        for name, raw in changes.items():
            _set(values, sources, name, raw, "override")
        warnings = (*self.warnings, *_check_supported(values, sources))
        return Config(values, sources, self.app, app_source=self.app_source,
                      config_file=self.config_file, warnings=warnings)  # fmt: skip

    def __repr__(self) -> str:
        return f"<Config app={self.app!r} config_file={self.config_file!r}>"


def format_value(value: Any) -> str:
    """How --print-config shows a value: repr, except callables by name."""
    if callable(value):
        return f"<{getattr(value, '__qualname__', type(value).__name__)}()>"
    return repr(value)


# --------------------------------------------------------------------------------------------------
# Command-line parsing (also used for CORRAL_CMD_ARGS and --help).
# --------------------------------------------------------------------------------------------------


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit: we want one line
        raise _ParseError(message)


def _help_text(setting: Setting) -> str:
    notes = []
    if setting.kind not in ("flag", "negflag"):
        notes.append(f"default: {setting.default_doc or format_value(setting.default)}")
    if setting.env:
        notes.append(f"env: {setting.env}")
    if setting.switches:
        notes.append("also " + ", ".join(flag for flag, _ in setting.switches))
    if setting.status:
        notes.append(setting.status)
    text = f"{setting.doc} [{'; '.join(notes)}]" if notes else setting.doc
    return text.replace("%", "%%")  # argparse %-formats help strings


def build_parser(*, common_only: bool = False) -> argparse.ArgumentParser:
    """The command-line parser, generated from SETTINGS and grouped by section. common_only: the one --help
    prints, whose help lists only HELP_COMMON (every flag is still parsed; --help-all lists them all)."""
    parser = _Parser(
        prog="corral",
        usage="corral [OPTIONS] APP",
        description="Serve an ASGI application. APP is MODULE:ATTRIBUTE, e.g. main:app.",
        epilog=(
            f"Precedence: defaults < env (PORT, WEB_CONCURRENCY, ...) < config file < ${CMD_ARGS_ENV}\n"
            f"(or ${GUNICORN_CMD_ARGS_ENV} when that is unset) < command line.\n"
            + ("Only common settings are shown: corral --help-all lists every flag, uvicorn's and Gunicorn's "
               "included.\n" if common_only else "")
            + "Every setting, config-file-only ones included: docs/settings.md\n"
            "(python -m corral.docs --stdout prints it)."
        ),
        add_help=False,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", nargs="?", default=None, metavar="APP", help=argparse.SUPPRESS)
    general = parser.add_argument_group("General")
    general.add_argument("-h", "--help", action="store_true", default=argparse.SUPPRESS,
                         help="Show this help and exit.")  # fmt: skip
    general.add_argument("--help-all", action="store_true", default=argparse.SUPPRESS,
                         help="Show every flag, including uvicorn's and Gunicorn's, and exit.")  # fmt: skip
    general.add_argument("-v", "--version", action="store_true", default=argparse.SUPPRESS,
                         help="Print the version and exit.")  # fmt: skip
    shown = {s.section for s in SETTINGS if s.cli and (not common_only or s.name in HELP_COMMON)}
    groups = {section: parser.add_argument_group(section) for section in SECTIONS if section in shown}
    for setting in SETTINGS:
        if setting.cli:
            if not common_only:
                _add_option(groups[setting.section], setting)
            elif setting.name in HELP_COMMON:  # the doc alone: the defaults are in --help-all
                also = f" [also {', '.join(flag for flag, _ in setting.switches)}]" if setting.switches else ""
                _add_option(groups[setting.section], setting, (setting.doc + also).replace("%", "%%"))
            else:
                _add_option(parser, setting, argparse.SUPPRESS)
    return parser


def _add_option(group: Any, setting: Setting, help_text: str | None = None) -> None:
    shown = _help_text(setting) if help_text is None else help_text
    common: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS, "help": shown}
    if setting.kind == "flag":
        group.add_argument(*setting.cli, action="store_const", const=True, **common)
    elif setting.kind == "negflag":
        group.add_argument(*setting.cli, action="store_const", const=False, **common)
    elif setting.bare is not None:
        # Optional argument: `--server-header` alone (uvicorn's bare flag) or `--server-header VALUE`.
        group.add_argument(*setting.cli, nargs="?", const=setting.bare, metavar=setting.metavar or "VALUE", **common)
    else:
        action = "append" if setting.kind == "append" else "store"
        group.add_argument(*setting.cli, action=action, metavar=setting.metavar or "VALUE", **common)
    for flag, raw in setting.switches:
        # Listed under the main flag's help line only: one line per setting keeps --help short.
        group.add_argument(flag, dest=setting.name, action="store_const", const=raw, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)  # fmt: skip


_FLAG_TO_SETTING: Mapping[str, str] = types.MappingProxyType(
    {flag: s.name for s in SETTINGS for flag in (*s.cli, *(switch for switch, _ in s.switches))}
)
_EXTRA_FLAGS = ("-h", "--help", "--help-all", "-v", "--version")


@dataclass(frozen=True)
class _Arguments:
    values: dict[str, Any]
    app: str | None


def _on(origin: str) -> str:
    return "on the command line" if origin == "command line" else f"in {origin}"


def _parse_error_line(message: str, origin: str) -> str:
    """Turn argparse's message into "<setting>: <problem>"."""
    match = re.match(r"argument ([^:]+): (.*)$", message)
    if match:
        flags, problem = match.groups()
        name = next((_FLAG_TO_SETTING[f] for f in flags.split("/") if f in _FLAG_TO_SETTING), flags)
        return f"{name}: {flags} {problem} ({_on(origin)})"
    return f"{message} ({_on(origin)})"


# Flags of uvicorn (and older uvicorns) that corral spells differently, with what to write instead.
_FOREIGN_FLAGS: Mapping[str, str] = types.MappingProxyType({
    "--limit-max-requests-jitter": "--max-requests-jitter N",
    "--timeout-worker-healthcheck": "--timeout SECONDS (the master replaces a worker silent that long)",
    "--timeout-notify": "--timeout SECONDS",
    "--debug": "--reload and --log-level debug",
    "--workers-auto": "--workers auto",
    "--unix-socket": "--uds PATH (or -b unix:PATH)",
    "--socket": "-b unix:PATH or --fd N",
})  # fmt: skip


def _unknown_argument_line(extra: str, app: str | None, origin: str) -> str:
    if extra.startswith("-") and extra != "-":
        flag = extra.split("=", 1)[0]
        import difflib  # here, not at the top: workers never suggest, and it costs memory
        close = difflib.get_close_matches(flag, [*_FLAG_TO_SETTING, *_EXTRA_FLAGS], n=1, cutoff=0.75)
        if flag in _FOREIGN_FLAGS:
            hint = f"; use {_FOREIGN_FLAGS[flag]}"
        else:
            hint = f"; did you mean {close[0]}?" if close else "; see corral --help-all"
        return f"{flag}: unknown option ({_on(origin)}){hint}"
    return f"APP: unexpected extra argument {extra!r}; only one APP may be given (APP is {app!r})"


_APP_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(.*\))?")


def _app_taken_by_a_bare_flag(values: dict[str, Any]) -> str | None:
    """`corral --server-header main:app`: uvicorn's bare flag before APP; argparse gave APP to the flag."""
    for setting in SETTINGS:
        value = values.get(setting.name)
        if setting.bare is not None and isinstance(value, str) and _APP_SPEC.fullmatch(value):
            values[setting.name] = setting.bare
            return value
    return None


def _parse_arguments(argv: list[str], origin: str) -> _Arguments:
    try:
        namespace, extras = build_parser().parse_known_args(argv)
    except _ParseError as exc:
        raise ConfigError(_parse_error_line(str(exc), origin)) from None
    values = vars(namespace)
    app = values.pop("app", None)
    if app is None:
        app = _app_taken_by_a_bare_flag(values)
    values.pop("help", None)
    values.pop("help_all", None)
    values.pop("version", None)
    if extras:
        raise ConfigError(_unknown_argument_line(extras[0], app, origin))
    return _Arguments(values, app)


# --------------------------------------------------------------------------------------------------
# Config files.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileSettings:
    values: dict[str, Any]
    warnings: list[str]


def _error_line_in(path: str, exc: BaseException) -> int | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return frames[-1].lineno if frames else None


def _execute_file(path: str, shown: str) -> dict[str, Any]:
    """Run the file at `path` (absolute); errors name it as `shown` (as the user wrote it)."""
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {shown}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config file {shown}: cannot read it: {exc.strerror or exc}") from None
    namespace: dict[str, Any] = {"__file__": path, "__name__": "__config__", "__builtins__": __builtins__}
    try:
        code = compile(source, path, "exec")
    except SyntaxError as exc:
        raise ConfigError(f"config file {shown}, line {exc.lineno}: syntax error: {exc.msg}") from None
    try:
        exec(code, namespace)  # a Gunicorn-style config file is Python by design
    except (Exception, SystemExit) as exc:
        line = _error_line_in(path, exc)
        where = f", line {line}" if line else ""
        problem = f"{type(exc).__name__}: {exc}".rstrip(": ").replace("\n", " ")
        raise ConfigError(f"config file {shown}{where}: {problem}") from None
    return namespace


def _import_module_settings(module_name: str) -> dict[str, Any]:
    try:
        return vars(importlib.import_module(module_name))
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ConfigError(f"config file python:{module_name}: {problem}") from None


def _looks_like_setting(name: str, value: Any) -> bool:
    """Module-level helpers in config files are normal; only plain lowercase data names deserve a warning."""
    return name.islower() and name.isidentifier() and not callable(value) and not isinstance(value, types.ModuleType)


def _read_config_file(spec: str, cwd: str) -> _FileSettings:
    if spec.startswith("python:"):
        namespace = _import_module_settings(spec[len("python:") :])
    else:
        path = spec.removeprefix("file:")
        namespace = _execute_file(os.path.join(cwd, path), spec)
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for name, value in namespace.items():
        if name.startswith("_"):
            continue
        if name in _FILE_IGNORED:
            warnings.append(f"config file {spec}: {name!r} is ignored inside a config file")
        elif name in _FILE_LOCAL:
            continue
        elif name in SETTINGS_BY_NAME:
            values[name] = value
        elif _looks_like_setting(name, value):
            import difflib  # here, not at the top: workers never suggest, and it costs memory
            close = difflib.get_close_matches(name, SETTINGS_BY_NAME, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.append(f"config file {spec}: unknown setting {name!r} ignored{hint}")
    return _FileSettings(values, warnings)


# --------------------------------------------------------------------------------------------------
# Loading: the layers, in precedence order.
# --------------------------------------------------------------------------------------------------


def _from(source: str) -> str:
    """Where a value came from, as a phrase: "from the command line", "from env PORT", ..."""
    return "from the command line" if source == "command line" else f"from {source}"


def _set(values: dict[str, Any], sources: dict[str, str], name: str, raw: Any, source: str) -> None:
    setting = SETTINGS_BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"{name}: no such setting ({_from(source)})")
    try:
        values[name] = setting.validator(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc} ({_from(source)})") from None
    sources[name] = source


def _apply(values: dict[str, Any], sources: dict[str, str], layer: Mapping[str, Any], source: str) -> None:
    for name, raw in layer.items():
        _set(values, sources, name, raw, source)


def _apply_env_vars(values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str]) -> None:
    # Like Gunicorn, these env vars replace the built-in default; a config file or flag still wins.
    for setting in SETTINGS:
        text = environ.get(setting.env) if setting.env else None
        if text:
            raw = setting.env_template.format(text.strip())
            _set(values, sources, setting.name, raw, f"env {setting.env}")


def _given(setting: Setting, value: Any, source: str) -> str:
    # The value matters for "workers = 9", not for a bare flag or a hook function.
    if setting.kind in ("flag", "negflag", "hook"):
        return f"set {_on(source)}"
    return f"got {format_value(value)} {_from(source)}"


def _check_proxy_protocol(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """The PROXY header comes before a TLS handshake, which the TLS layer would read as handshake bytes."""
    if values["proxy_protocol"] and values["certfile"]:
        raise ConfigError(
            f"proxy_protocol: cannot be combined with TLS (certfile {_from(sources['certfile'])}); terminate TLS "
            "at the proxy, or turn proxy_protocol off"
        )


def _check_supported(values: Mapping[str, Any], sources: Mapping[str, str]) -> list[str]:
    """A declared-but-unimplemented setting with a non-default value is an error; a Gunicorn setting corral
    has no use for is a warning (returned, one line each). Nothing is ever ignored silently."""
    warnings = []
    for setting in SETTINGS:
        notice = setting.notice(values[setting.name]) if setting.notice is not None else None
        if notice:
            warnings.append(f"{setting.name}: {notice}; {_given(setting, values[setting.name], sources[setting.name])}")
        if setting.implemented or values[setting.name] == _DEFAULTS[setting.name]:
            continue
        where = _given(setting, values[setting.name], sources[setting.name])
        if setting.ignored is not None:
            warnings.append(f"{setting.name}: ignored ({setting.ignored}); {where}")
        elif setting.unsupported is not None:
            raise ConfigError(f"{setting.name}: not supported ({setting.unsupported}); {where}")
        else:
            raise ConfigError(
                f"{setting.name}: not supported yet (planned in issue {setting.implemented_in}); {where}"
            )
    return warnings


def _combine_uvicorn_bind(values: dict[str, Any], sources: dict[str, str]) -> None:
    """uvicorn's --host/--port, --uds or --fd replace bind (one address, as uvicorn listens on one socket:
    fd first, then uds, then host:port). Given in the same place as bind, they contradict it: an error."""
    given = [name for name in _SOCKET_PARTS if values[name] is not None]
    if not given:
        return
    source = max((sources[name] for name in given), key=_precedence_rank)
    if sources["bind"] == source:
        flags = "/".join(f"--{name}" for name in given)
        raise ConfigError(f"bind: give either bind (-b) or {flags}, not both ({_from(source)})")
    if values["fd"] is not None:
        address = f"fd://{values['fd']}"
    elif values["uds"] is not None:
        address = f"unix:{values['uds']}"
    else:
        host = values["host"] if values["host"] is not None else "127.0.0.1"
        port = values["port"] if values["port"] is not None else 8000
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    _set(values, sources, "bind", [address], source)


def _precedence_rank(source: str) -> int:
    for rank, prefix in enumerate(("default", "env ", "config file", CMD_ARGS_ENV, GUNICORN_CMD_ARGS_ENV)):
        if source.startswith(prefix):
            return rank
    return 5  # the command line, or a keyword of corral.run()


def _development_defaults(values: dict[str, Any], sources: dict[str, str]) -> None:
    # uvicorn's --reload runs one worker; a workers value given anywhere (WEB_CONCURRENCY too) still wins.
    if values["reload"] and sources["workers"] == "default":
        values["workers"], sources["workers"] = 1, "default with reload"


def _cmd_args_variable(environ: Mapping[str, str]) -> str:
    """CORRAL_CMD_ARGS, or GUNICORN_CMD_ARGS when only that one is set."""
    if CMD_ARGS_ENV not in environ and GUNICORN_CMD_ARGS_ENV in environ:
        return GUNICORN_CMD_ARGS_ENV
    return CMD_ARGS_ENV


def _split_cmd_args(environ: Mapping[str, str], variable: str) -> list[str]:
    try:
        return shlex.split(environ.get(variable, ""))
    except ValueError as exc:
        raise ConfigError(f"{variable}: cannot split it like a shell would: {exc}") from None


def _choose_config_file(cli: _Arguments, env: _Arguments, env_source: str, cwd: str) -> tuple[str | None, str]:
    for arguments, source in ((cli, "command line"), (env, env_source)):
        spec = arguments.values.get("config")
        if spec is not None:
            if not spec.strip():
                raise ConfigError(f"config: empty file name ({_on(source)})")
            return spec.strip(), source
    for name in (DEFAULT_CONFIG_FILE, GUNICORN_CONFIG_FILE):
        default_path = os.path.join(cwd, name)
        if os.path.isfile(default_path):
            return default_path, "default"
    return None, "default"


def _choose_app(
    cli: _Arguments, env: _Arguments, env_source: str, values: Mapping[str, Any], sources: Mapping[str, str]
) -> tuple[str | None, str]:
    if cli.app:
        return cli.app, "command line"
    if env.app:
        return env.app, env_source
    if values["wsgi_app"]:
        return values["wsgi_app"], sources["wsgi_app"]
    return None, "default"


def config_from_keywords(settings: Mapping[str, Any], app: str | None, source: str) -> Config:
    """A Config from the defaults and settings given by name (corral.run()'s keywords): no config file, no
    environment variables, as with uvicorn.run()."""
    values = {name: copy.deepcopy(value) for name, value in _DEFAULTS.items()}
    sources = dict.fromkeys(values, "default")
    _apply(values, sources, settings, source)
    _combine_uvicorn_bind(values, sources)
    _development_defaults(values, sources)
    _check_accounts(values, sources)
    warnings = _check_supported(values, sources)
    return Config(values, sources, app, app_source=source, warnings=warnings)


def default_settings(**overrides: Any) -> Settings:
    """The table's defaults with some settings changed, validated as any other source is: what a test or a
    benchmark builds a ServerState or a section-taking function from."""
    return config_from_keywords(overrides, None, "override").settings


def load_config(argv: list[str], environ: Mapping[str, str] | None = None, cwd: str | None = None) -> Config:
    """Build the effective Config from argv (without the program name), the environment and cwd.

    Precedence, lowest first: defaults < setting env vars (PORT, WEB_CONCURRENCY, ...) < config file
    < CORRAL_CMD_ARGS (or GUNICORN_CMD_ARGS when that is unset) < command line. Raises ConfigError (one
    line) on any problem; settings corral has no use for give warnings (cfg.warnings).
    """
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    cli = _parse_arguments(list(argv), "command line")
    env_source = _cmd_args_variable(environ)
    env = _parse_arguments(_split_cmd_args(environ, env_source), env_source)

    values = {name: copy.deepcopy(value) for name, value in _DEFAULTS.items()}
    sources = dict.fromkeys(values, "default")
    warnings: list[str] = []
    _apply_env_vars(values, sources, environ)

    config_spec, config_source = _choose_config_file(cli, env, env_source, cwd)
    if config_spec is not None:
        file_settings = _read_config_file(config_spec, cwd)
        warnings.extend(file_settings.warnings)
        _apply(values, sources, file_settings.values, f"config file {config_spec}")
        values["config"], sources["config"] = config_spec, config_source
    _apply(values, sources, env.values, env_source)
    _apply(values, sources, cli.values, "command line")
    _combine_uvicorn_bind(values, sources)
    _development_defaults(values, sources)
    _check_accounts(values, sources)
    _check_proxy_protocol(values, sources)
    warnings.extend(_check_supported(values, sources))

    app, app_source = _choose_app(cli, env, env_source, values, sources)
    return Config(values, sources, app, app_source=app_source, config_file=config_spec, warnings=warnings)
