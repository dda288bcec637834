"""The Python API for embedding corral as uvicorn users write it: `corral.run(app, **kwargs)`, and
`corral.Config` + `corral.Server` for code that builds the configuration first.

Keywords are uvicorn.run()'s (`host`, `port`, `timeout_keep_alive`, `log_level`, ...) or corral's own setting
names (`keepalive`, `max_worker_memory`, ...), both checked against the settings table; an unknown keyword is
a TypeError naming it. As with uvicorn.run(), no config file and no environment variable (PORT,
WEB_CONCURRENCY, CORRAL_CMD_ARGS) is read, and `workers` defaults to 1.

An app object (not an import string) is served by one worker that the master forks after it has the object,
as with preload_app: nothing is imported twice. `workers` > 1 and `reload` need an import string, so that
every worker (and every reload) imports the app afresh; with an object they fail with uvicorn's message.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

from corral.config import SETTINGS, ConfigError, Setting, config_from_keywords
from corral.config import Config as _CorralConfig
from corral.core.contract import ExitCode

__all__ = ["Config", "Server", "run"]

_SOURCE = "corral.run()"
_IMPORT_STRING_NEEDED = "You must pass the application as an import string to enable 'reload' or 'workers'."

# Keyword -> setting: uvicorn's names first, then corral's (a name that is both means the same setting).
_KEYWORDS: Mapping[str, Setting] = types.MappingProxyType(
    {**{s.name: s for s in SETTINGS if s.kind != "hook"}, **{s.uvicorn: s for s in SETTINGS if s.uvicorn}}
)


def _raw_value(keyword: str, setting: Setting, value: Any) -> tuple[str, Any]:
    """The setting and raw value a keyword gives: uvicorn's booleans and log_config forms become corral's."""
    if keyword == "log_config":
        return ("logconfig_dict", value) if isinstance(value, dict) else ("logconfig", value)
    if isinstance(value, bool) and setting.bare is not None:  # server_header=False
        return setting.name, setting.bare if value else setting.switches[0][1]
    return setting.name, value


def _settings(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for keyword, value in kwargs.items():
        setting = _KEYWORDS.get(keyword)
        if setting is None:
            raise TypeError(f"corral.run() got an unexpected keyword argument {keyword!r}")
        if value is None:
            continue  # uvicorn's "not set": the table's default applies
        name, raw = _raw_value(keyword, setting, value)
        settings[name] = raw
    settings.setdefault("workers", 1)  # uvicorn.run()'s default; "auto" must be asked for
    return settings


class Config:
    """The app and its settings, validated at once (ConfigError names the setting; TypeError an unknown
    keyword). `config.settings` is the effective corral configuration."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        self.app = app
        settings = _settings(kwargs)
        is_string = isinstance(app, str)
        self.settings: _CorralConfig = config_from_keywords(settings, app if is_string else _label(app), _SOURCE)
        reload, workers = self.settings.settings.development.reload, self.settings.settings.worker.workers
        if not is_string and (reload or workers != 1):
            raise ConfigError(f"{'reload' if reload else 'workers'}: {_IMPORT_STRING_NEEDED}")

    def __getattr__(self, name: str) -> Any:
        # config.port, config.timeout_keep_alive: read as uvicorn's Config exposes them.
        setting = _KEYWORDS.get(name)
        if setting is None:
            raise AttributeError(name)
        return getattr(self.settings, setting.name)


class Server:
    """Runs a Config: `Server(config).run()` binds, forks the workers and supervises them until TERM/INT."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def run(self) -> None:
        """Serve until told to stop; a failed start raises SystemExit with corral's exit status (as
        uvicorn's Server.run() exits on a startup failure)."""
        from corral.master.arbiter import run as run_master  # imported late: a config error costs no server import

        settings = self.config.settings
        for warning in settings.warnings:
            print(f"corral: warning: {warning}", file=sys.stderr)
        app = None if isinstance(self.config.app, str) else self.config.app
        status = run_master(settings, reload_config=lambda: settings, app=app)
        if status:
            raise SystemExit(status)

    async def serve(self) -> None:
        raise NotImplementedError(
            "corral runs a master and worker processes, not a server inside your event loop; call "
            "corral.Server(config).run() (or corral.run()) from the main thread instead"
        )


def run(app: Any, **kwargs: Any) -> None:
    """Serve `app` (an import string "module:attribute", or an ASGI app object) with uvicorn.run()'s keywords."""
    try:
        config = Config(app, **kwargs)
    except ConfigError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG) from None
    Server(config).run()


def _label(app: Any) -> str:
    """How an app object is named in process titles and logs: module:qualname."""
    module = getattr(app, "__module__", None) or type(app).__module__
    name = getattr(app, "__qualname__", None) or type(app).__qualname__
    return f"{module}:{name}"
