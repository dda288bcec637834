"""What each uvicorn option means under corral: the data behind docs/migrating-from-uvicorn.md.

Which setting a uvicorn flag or keyword sets lives in the settings table (Setting.uvicorn, and the flags in
Setting.cli/switches); this module only lists uvicorn's options in its own order and what differs.
"""

from __future__ import annotations

__all__ = ["UVICORN_DIFFERENCES", "UVICORN_OPTIONS"]

# (uvicorn's command-line flags, its uvicorn.run() keyword), in uvicorn's --help order.
UVICORN_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--host", "host"), ("--port", "port"), ("--uds", "uds"), ("--fd", "fd"), ("--reload", "reload"),
    ("--reload-dir", "reload_dirs"), ("--reload-include", "reload_includes"),
    ("--reload-exclude", "reload_excludes"), ("--reload-delay", "reload_delay"), ("--workers", "workers"),
    ("--loop", "loop"), ("--http", "http"), ("--ws", "ws"), ("--ws-max-size", "ws_max_size"),
    ("--ws-max-queue", "ws_max_queue"), ("--ws-ping-interval", "ws_ping_interval"),
    ("--ws-ping-timeout", "ws_ping_timeout"), ("--ws-per-message-deflate", "ws_per_message_deflate"),
    ("--lifespan", "lifespan"), ("--interface", "interface"), ("--env-file", "env_file"),
    ("--log-config", "log_config"), ("--log-level", "log_level"), ("--access-log / --no-access-log", "access_log"),
    ("--use-colors / --no-use-colors", "use_colors"), ("--proxy-headers / --no-proxy-headers", "proxy_headers"),
    ("--server-header / --no-server-header", "server_header"), ("--date-header / --no-date-header", "date_header"),
    ("--forwarded-allow-ips", "forwarded_allow_ips"), ("--root-path", "root_path"),
    ("--limit-concurrency", "limit_concurrency"), ("--backlog", "backlog"),
    ("--limit-max-requests", "limit_max_requests"), ("--timeout-keep-alive", "timeout_keep_alive"),
    ("--timeout-graceful-shutdown", "timeout_graceful_shutdown"), ("--ssl-keyfile", "ssl_keyfile"),
    ("--ssl-certfile", "ssl_certfile"), ("--ssl-keyfile-password", "ssl_keyfile_password"),
    ("--ssl-version", "ssl_version"), ("--ssl-cert-reqs", "ssl_cert_reqs"), ("--ssl-ca-certs", "ssl_ca_certs"),
    ("--ssl-ciphers", "ssl_ciphers"), ("--header", "headers"), ("--app-dir", "app_dir"),
    ("--h11-max-incomplete-event-size", "h11_max_incomplete_event_size"), ("--factory", "factory"),
)  # fmt: skip

# Where corral's meaning differs from uvicorn's, by uvicorn keyword; an option not listed means the same.
UVICORN_DIFFERENCES: dict[str, str] = {
    "host": "With --port, becomes one bind address (an IPv6 host is bracketed). From the command line it "
    "replaces a bind from a config file; given next to -b in the same place, it is an error.",
    "port": "See host. Default 8000 with --host; PORT in the environment still means 0.0.0.0:$PORT when "
    "neither --host nor --port is given (Gunicorn's rule).",
    "uds": "Becomes bind unix:PATH (umask applies while it is bound).",
    "fd": "Becomes bind fd://N.",
    "reload": "A change replaces the workers (new ones READY first), so an edit with a syntax error logs its "
    "traceback and the old code keeps serving. Needs watchfiles (pip install watchfiles, or "
    "pip install '.[reload]' from corral's checkout).",
    "reload_delay": "The quiet time after the last change of a burst (uvicorn: the time between checks).",
    "workers": "Default 1 with --reload and in corral.run(), as in uvicorn; otherwise `auto` (the CPUs the "
    "process may use). WEB_CONCURRENCY is read by both.",
    "http": "corral always parses with httptools: auto and httptools say so, h11 is accepted with a notice.",
    "ws": "auto, websockets and websockets-sansio mean corral's own implementation (built on the websockets "
    "library); none serves upgrade requests as plain HTTP; wsproto is accepted with a notice.",
    "interface": "wsgi serves the app as WSGI in a thread pool (`threads`); asgi3 and asgi2 force the "
    "calling convention as in uvicorn; auto detects all three from the callable.",
    "env_file": "Read by corral itself (KEY=VALUE, quotes, `export`, comments; no ${VAR} expansion), in the "
    "master at start and on HUP; variables already set keep their value, as with python-dotenv.",
    "log_config": "The same .json, .yaml/.yml (needs PyYAML) and ini files, and a dict in corral.run(). corral's "
    "loggers are corral.error and corral.access.",
    "log_level": "trace is accepted; corral writes nothing at that level beyond debug.",
    "access_log": "Unset, the access log is on when stderr is a terminal (uvicorn: always), to stdout, in "
    "Gunicorn's format (access_log_format); --access-logfile chooses a file.",
    "use_colors": "Unset: colours when stderr is a terminal, as uvicorn; the level name and the access line "
    "(by status class) are coloured.",
    "server_header": "The header says `server: corral`. corral also takes a value: --server-header NAME.",
    "forwarded_allow_ips": "Default 127.0.0.1,::1 (uvicorn: 127.0.0.1); FORWARDED_ALLOW_IPS is read by both.",
    "limit_concurrency": "Counts the worker's open connections (each runs one request at a time; uvicorn also "
    "counts its tasks), per worker; the 503 closes the connection.",
    "limit_max_requests": "The worker is replaced by a new one, READY before the old one stops, so capacity "
    "never drops (uvicorn with one process stops serving). Also --max-requests-jitter.",
    "timeout_graceful_shutdown": "Default 30 s (uvicorn: wait for ever); connections still open then are cut.",
    "ssl_version": "The lowest TLS version accepted; uvicorn's numbers (17, the default) mean TLS 1.2.",
    "ssl_ciphers": "Default: Python's cipher list for TLS 1.2 (uvicorn: 'TLSv1').",
    "headers": "A Server header replaces corral's.",
}
