"""The `corral` command: load the configuration, handle --help/--version/--print-config/--check-config,
then hand the Config to the server. Every configuration problem ends here as one line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from corral import __version__
from corral.config import SETTINGS, Config, ConfigError, build_parser, format_value, load_config

__all__ = ["EXIT_APP_ERROR", "EXIT_CONFIG_ERROR", "format_config", "main"]

EXIT_CONFIG_ERROR = 2
EXIT_APP_ERROR = 3

_MISSING_APP = "APP: missing; give the application as MODULE:ATTRIBUTE, e.g. corral main:app (see --help)"


def _early_action(argv: Iterable[str]) -> str | None:
    """--help and --version work even when the rest of the configuration is broken."""
    for token in argv:
        if token == "--":
            return None
        if token in ("-h", "--help"):
            return "help"
        if token in ("-v", "--version"):
            return "version"
    return None


def format_config(cfg: Config) -> str:
    """One line per setting, `name = value  # source`, in table order; the app first."""
    rows = [("app", format_value(cfg.app), cfg.app_source)]
    rows += [(s.name, format_value(getattr(cfg, s.name)), cfg.sources[s.name]) for s in SETTINGS]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}} = {value}  # {source}" for name, value, source in rows)


def _error(message: str, status: int, stream: TextIO) -> int:
    print(f"corral: error: {message}", file=stream)
    return status


def _check_app(cfg: Config) -> int:
    from corral.loading import AppLoadError, load_app  # imported late: only --check-config needs it here
    from corral.tls import TLSConfigError, server_context

    try:
        server_context(cfg)  # certificate and key files exist, parse and match
    except TLSConfigError as exc:
        return _error(str(exc), EXIT_CONFIG_ERROR, sys.stderr)
    try:
        load_app(cfg.app, factory=cfg.factory, app_dir=cfg.app_dir)
    except AppLoadError as exc:
        return _error(str(exc), EXIT_APP_ERROR, sys.stderr)
    print(f"corral: configuration OK; {cfg.app} loads")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run corral with argv (default sys.argv[1:]); returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    early = _early_action(args)
    if early == "help":
        print(build_parser().format_help(), end="")
        return 0
    if early == "version":
        print(f"corral {__version__}")
        return 0
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        return _error(str(exc), EXIT_CONFIG_ERROR, sys.stderr)
    for warning in cfg.warnings:
        print(f"corral: warning: {warning}", file=sys.stderr)
    if cfg.print_config:
        print(format_config(cfg))
    if cfg.check_config:
        return _check_app(cfg) if cfg.app else _error(_MISSING_APP, EXIT_CONFIG_ERROR, sys.stderr)
    if cfg.print_config:
        return 0
    if not cfg.app:
        return _error(_MISSING_APP, EXIT_CONFIG_ERROR, sys.stderr)
    from corral.master.arbiter import run  # imported late: config errors must not pay for the server import

    return run(cfg, reload_config=lambda: load_config(args))
