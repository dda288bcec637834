"""The `corral` command: load the configuration, handle --help/--version/--print-config/--check-config,
then hand the Config to the server. Every configuration problem ends here as one line and exit status 2.

`corral status`, `corral reload` and `corral scale N` talk to a running corral instead (corral/admin/client.py).
They are commands only as the first word: an app module of one of those names is written `status:app`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from corral import __version__
from corral.config import Config, ConfigError, build_parser, format_value, load_config
from corral.core.contract import ExitCode

__all__ = ["COMMANDS", "format_config", "main"]

_MISSING_APP = "APP: missing; give the application as MODULE:ATTRIBUTE, e.g. corral main:app (see --help)"

COMMANDS = ("status", "reload", "scale")
_COMMANDS_HELP = """
Commands (talk to a running corral; give them the server's options, e.g. -c FILE, --admin-bind, -p):
  corral status [--json]            the pool like ps: master, listeners, one line per worker (admin_bind)
  corral reload                     HUP the master: rolling reload (finds it by pidfile or admin_bind)
  corral scale N [--timeout SECS]   TTIN/TTOU the master until its target is N workers (admin_bind)
An app module named like a command is written MODULE:ATTRIBUTE, e.g. corral status:app.
"""


def _early_action(argv: Iterable[str]) -> str | None:
    """--help and --version work even when the rest of the configuration is broken."""
    for token in argv:
        if token == "--":
            return None
        if token in ("-h", "--help"):
            return "help"
        if token == "--help-all":
            return "help-all"
        if token in ("-v", "--version"):
            return "version"
    return None


def format_config(cfg: Config) -> str:
    """One line per setting, `name = value  # source`, in table order; the app first."""
    rows = [("app", format_value(cfg.app), cfg.app_source)]
    rows += [(name, format_value(value), cfg.sources[name]) for name, value in cfg.values().items()]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}} = {value}  # {source}" for name, value, source in rows)


def _error(message: str, status: int, stream: TextIO) -> int:
    print(f"corral: error: {message}", file=stream)
    return status


def _check_app(cfg: Config, app: str) -> int:
    from corral.loading import AppLoadError, load_app  # imported late: only --check-config needs it here
    from corral.logging import LogConfigError, configure_logging
    from corral.tls import TLSConfigError, server_context

    try:
        configure_logging(cfg.settings.logging)  # the log files open and any logging config applies
        server_context(cfg)  # certificate and key files exist, parse and match
    except (LogConfigError, TLSConfigError) as exc:
        return _error(str(exc), ExitCode.CONFIG, sys.stderr)
    try:
        application = cfg.settings.application
        load_app(app, factory=application.factory, app_dir=application.app_dir, interface=application.interface)
    except AppLoadError as exc:
        return _error(str(exc), ExitCode.APP, sys.stderr)
    print(f"corral: configuration OK; {app} loads")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run corral with argv (default sys.argv[1:]); returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    early = _early_action(args)
    if args and args[0] in COMMANDS:
        return _run_command(args[0], args[1:])
    if early in ("help", "help-all"):
        print(build_parser(common_only=early == "help").format_help(), end="")
        print(_COMMANDS_HELP, end="")
        return 0
    if early == "version":
        from corral.compiled import describe_build

        print(f"corral {__version__} ({describe_build()})")
        return 0
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        return _error(str(exc), ExitCode.CONFIG, sys.stderr)
    for warning in cfg.warnings:
        print(f"corral: warning: {warning}", file=sys.stderr)
    config_file = cfg.settings.config_file
    if config_file.print_config:
        print(format_config(cfg))
    if config_file.check_config:
        return _check_app(cfg, cfg.app) if cfg.app else _error(_MISSING_APP, ExitCode.CONFIG, sys.stderr)
    if config_file.print_config:
        return 0
    if not cfg.app:
        return _error(_MISSING_APP, ExitCode.CONFIG, sys.stderr)
    from corral.master.arbiter import run  # imported late: config errors must not pay for the server import

    start_cwd = os.getcwd()  # HUP re-reads relative paths (-c FILE) from here, even after chdir
    return run(cfg, reload_config=lambda: load_config(args, cwd=start_cwd))


_COMMAND_USAGE = {
    "status": "corral status [--json] [SERVER OPTIONS]: show the pool of a running corral (master, listeners, "
    "one line per worker); --json prints the /status document as it is.",
    "reload": "corral reload [SERVER OPTIONS]: send HUP to the master of a running corral; it re-reads its "
    "configuration and replaces every worker, new ones READY first.",
    "scale": "corral scale N [--timeout SECONDS] [SERVER OPTIONS]: send TTIN/TTOU to the master of a running "
    "corral, one at a time, until its target is N workers (default timeout 30 s).",
}
_SERVER_OPTIONS = (
    "SERVER OPTIONS are the server's own (-c FILE, --admin-bind ADDRESS, -p PIDFILE, ...), read as the server reads "
    "them (with CORRAL_CMD_ARGS and ./corral.conf.py): they say where the running corral is."
)


class _UsageError(Exception):
    pass


def _command_options(command: str, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The command's own options, and the rest (the server's options) for load_config."""
    options: dict[str, Any] = {"json": False, "timeout": 30.0, "workers": 0, "help": False}
    args = list(argv)
    if command == "scale" and not any(arg in ("-h", "--help") for arg in args):
        if not args or not args[0].isdigit():
            raise _UsageError("corral scale: give the number of workers first, e.g. corral scale 4")
        options["workers"] = int(args.pop(0))
    rest: list[str] = []
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            options["help"] = True
        elif arg == "--json" and command == "status":
            options["json"] = True
        elif command == "scale" and (arg == "--timeout" or arg.startswith("--timeout=")):
            value = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            try:
                options["timeout"] = float(value)
            except ValueError:
                raise _UsageError(f"corral scale: --timeout expects seconds, got {value!r}") from None
        else:
            rest.append(arg)
    return options, rest


def _run_command(command: str, argv: list[str]) -> int:
    """`corral status|reload|scale ...`: 0 when done, 1 when the running corral could not be reached or
    would not do it, 2 for a usage or configuration problem."""
    from corral.admin import client  # imported late: only the commands need it

    try:
        options, rest = _command_options(command, argv)
    except _UsageError as exc:
        return _error(str(exc), ExitCode.CONFIG, sys.stderr)
    if options["help"]:
        print(f"usage: {_COMMAND_USAGE[command]}\n{_SERVER_OPTIONS}")
        return 0
    try:
        cfg = load_config(rest)
    except ConfigError as exc:
        return _error(str(exc), ExitCode.CONFIG, sys.stderr)
    if cfg.app and cfg.app_source == "command line":
        return _error(f"corral {command}: unexpected argument {cfg.app!r} (see corral {command} --help)",
                      ExitCode.CONFIG, sys.stderr)  # fmt: skip
    try:
        if command == "status":
            print(client.status(cfg.settings, as_json=options["json"]))
        elif command == "reload":
            print(client.reload(cfg.settings))
        else:
            print(client.scale(cfg.settings, options["workers"], timeout=options["timeout"]))
    except client.NotConfigured as exc:
        hint = f"; an app module named {command!r} is served with corral {command}:ATTRIBUTE"
        return _error(f"{exc}{hint}", ExitCode.CONFIG, sys.stderr)
    except client.CommandError as exc:
        return _error(str(exc), ExitCode.FAILED, sys.stderr)
    return 0
