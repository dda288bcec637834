"""What each Gunicorn setting and signal means under corral: the data behind docs/migrating-from-gunicorn.md.

Whether a setting is implemented, ignored or refused lives in the settings table (config.py); this module
only adds what differs from Gunicorn where corral implements the setting, and the signal table.
"""

from __future__ import annotations

from corral.core.contract import MasterSignal

__all__ = ["GUNICORN_SETTINGS", "SETTING_DIFFERENCES", "SIGNALS"]

# Every setting of Gunicorn 23, in its documentation's order.
GUNICORN_SETTINGS: tuple[str, ...] = (
    "config", "wsgi_app", "bind", "backlog", "workers", "worker_class", "threads", "worker_connections",
    "max_requests", "max_requests_jitter", "timeout", "graceful_timeout", "keepalive", "limit_request_line",
    "limit_request_fields", "limit_request_field_size", "reload", "reload_engine", "reload_extra_files", "spew",
    "check_config", "print_config", "preload_app", "sendfile", "reuse_port", "chdir", "daemon", "raw_env",
    "pidfile", "worker_tmp_dir", "user", "group", "umask", "initgroups", "tmp_upload_dir", "secure_scheme_headers",
    "forwarded_allow_ips", "accesslog", "disable_redirect_access_to_syslog", "access_log_format", "errorlog",
    "loglevel", "capture_output", "logger_class", "logconfig", "logconfig_dict", "logconfig_json", "syslog_addr",
    "syslog", "syslog_prefix", "syslog_facility", "enable_stdio_inheritance", "statsd_host", "dogstatsd_tags",
    "statsd_prefix", "proc_name", "pythonpath", "paste", "on_starting", "on_reload", "when_ready", "pre_fork",
    "post_fork", "post_worker_init", "worker_int", "worker_abort", "pre_exec", "pre_request", "post_request",
    "child_exit", "worker_exit", "nworkers_changed", "on_exit", "ssl_context", "proxy_protocol", "proxy_allow_ips",
    "keyfile", "certfile", "ssl_version", "cert_reqs", "ca_certs", "suppress_ragged_eofs",
    "do_handshake_on_connect", "ciphers", "raw_paste_global_conf", "strip_header_spaces",
    "permit_unconventional_http_method", "permit_unconventional_http_version", "casefold_http_method",
    "header_map", "forwarder_headers", "permit_obsolete_folding", "tolerate_dangerous_framing",
)  # fmt: skip

# Where corral implements a Gunicorn setting differently; a setting not listed here means the same.
SETTING_DIFFERENCES: dict[str, str] = {
    "config": "Without -c, ./corral.conf.py is read, else ./gunicorn.conf.py, as Gunicorn reads the latter.",
    "workers": "Default `auto` (Gunicorn: 1): the CPUs this process may use (cgroup quota, affinity), capped "
    "so the workers fit the memory limit.",
    "worker_class": "Every Uvicorn worker name (`uvicorn.workers.UvicornWorker`, `uvicorn_worker.UvicornWorker`, "
    "`uvicorn.workers.UvicornH11Worker`) means corral's own worker; `sync` and `gthread` too (for a WSGI "
    "app, `sync` runs one request at a time, on the worker's event-loop thread, and `gthread` `threads` at "
    "once in a pool, while the event loop reads requests and writes responses); an ASGI app is served as ASGI "
    "whatever the class. `gevent`, "
    "`eventlet` and other classes are refused in one line.",
    "threads": "Requests running a WSGI app at once per worker (1 with `-k sync`: then on the event-loop "
    "thread, else in a pool of threads); no effect on ASGI apps.",
    "tmp_upload_dir": "Where WSGI request bodies over 1 MiB are kept until the app reads them.",
    "proxy_protocol": "v1 and v2 (LOCAL, TLVs skipped); a peer in proxy_allow_ips must send the header (400 "
    "without one; Gunicorn serves it); a header from any other peer gets 403; not with TLS (exit 2).",
    "proxy_allow_ips": "Also a unix-socket peer must send the header. After a PROXY header, X-Forwarded-* are "
    "believed only when the header's client is itself in forwarded_allow_ips.",
    "worker_connections": "Applies to corral's asyncio worker (Gunicorn: only to eventlet/gevent workers): a "
    "connection over the cap gets 503 at once.",
    "timeout": "The heartbeat comes from the worker's event loop, so a blocked loop counts as silent; the master "
    "then sends SIGABRT and the worker's traceback (every thread) goes to the error log before it is replaced.",
    "keepalive": "Default 5 s (Gunicorn: 2 s).",
    "max_requests": "The replacement starts and is READY before the old worker stops: capacity never drops.",
    "reload": "Uses watchfiles (pip install watchfiles, or '.[reload]' from corral's checkout); a change does "
    "what HUP does, so a broken edit keeps the previous workers serving.",
    "reload_engine": "`poll` makes watchfiles poll; `auto` and `inotify` use the native watcher.",
    "check_config": "Also imports the app, like Gunicorn.",
    "print_config": "Also shows where each value came from (default, env, file, flag).",
    "reuse_port": "Each worker listens on its own SO_REUSEPORT socket (Gunicorn only sets the option on the "
    "shared socket).",
    "pidfile": "Same, including `<pidfile>.2` while a binary upgrade's new master waits for the old one.",
    "umask": "Applied while unix sockets are bound, so their mode follows it.",
    "user": "A user that does not exist stops corral at start (exit 2), before anything is bound.",
    "group": "A group that does not exist stops corral at start (exit 2), before anything is bound.",
    "proc_name": "Process titles read `corral: master [NAME]` and `corral: worker [NAME]`.",
    "access_log_format": "Gunicorn's atoms; the line is compiled once, so logging costs little per request.",
    "pre_request": "`req` has Gunicorn's fields (method, path, uri, query, version, headers, scheme, peer_addr), "
    "built from the ASGI scope; called for HTTP requests, not WebSockets.",
    "post_request": "`environ` is WSGI-like (REQUEST_METHOD, PATH_INFO, HTTP_*...) plus `asgi.scope`; `resp` has "
    "status, status_code, headers and sent.",
    "worker_abort": "Runs when the aborted worker next executes Python code; a worker stuck inside C code still "
    "gets killed, without the hook.",
    "when_ready": "As in Gunicorn: after the sockets are bound, before the first workers start. systemd's READY=1 "
    "waits for every worker instead.",
    "ssl_version": "The lowest TLS version accepted (TLS 1.2 by default, or 1.3); Gunicorn's older protocol "
    "names are raised to TLS 1.2 with a warning.",
    "ssl_context": "Called in the master at start and on each HUP (Gunicorn: per connection in the workers).",
    "cert_reqs": "1 and 2 need ca_certs, whose CAs are then the only ones trusted for client certificates.",
    "do_handshake_on_connect": "Both values behave the same: asyncio handshakes at accept without blocking, "
    "within header_timeout.",
    "certfile": "HUP re-reads it (and keyfile, ca_certs); a broken new certificate aborts the reload.",
    "logconfig": "corral's loggers are `corral.error` and `corral.access`; a config naming only `gunicorn.error`/"
    "`gunicorn.access` routes corral's lines the same way. Only `version: 1` and `disable_existing_loggers: "
    "False` are filled in (Gunicorn merges its whole default config).",
    "logconfig_dict": "corral's loggers are `corral.error` and `corral.access`; a config naming only `gunicorn.error`/"
    "`gunicorn.access` routes corral's lines the same way. Only `version: 1` and `disable_existing_loggers: "
    "False` are filled in (Gunicorn merges its whole default config).",
    "logconfig_json": "corral's loggers are `corral.error` and `corral.access`; a config naming only `gunicorn.error`/"
    "`gunicorn.access` routes corral's lines the same way. Only `version: 1` and `disable_existing_loggers: "
    "False` are filled in (Gunicorn merges its whole default config).",
    "statsd_host": "The master sends the pool's metrics about once a second, aggregated from the scoreboard "
    "(Gunicorn: a packet per request); status classes (`gunicorn.request.status.2xx`) instead of codes; "
    "`gunicorn.request.duration` is one mean per flush with a sample rate; `unix:PATH` accepted. See metrics.md.",
    "statsd_prefix": "Applies to every metric corral sends (see statsd_host).",
    "dogstatsd_tags": "Added to every metric corral sends (see statsd_host).",
    "on_starting": "The one hook whose exception stops corral (exit 1); any other hook that raises is logged "
    "with its traceback and the server carries on.",
}

# (signals, what Gunicorn does, what corral does); every MasterSignal but CHLD, each once.
SIGNALS: tuple[tuple[tuple[MasterSignal, ...], str, str], ...] = (
    ((MasterSignal.TERM,), "Graceful shutdown.",
     "The same, after `drain_delay` (readiness reports draining first); each worker also waits for app work "
     "still running after its response (background tasks), up to `graceful_timeout`."),
    ((MasterSignal.INT, MasterSignal.QUIT), "Quick shutdown.",
     "The same; lifespan shutdown still runs, for up to 2 s."),
    ((MasterSignal.HUP,), "Reload the config, start new workers, stop the old ones gracefully.",
     "The same, new-before-old: old workers stop only once their successors are READY, and a deploy whose "
     "workers fail to boot is rolled back (the old workers keep serving)."),
    ((MasterSignal.TTIN, MasterSignal.TTOU), "One worker more / fewer.", "The same."),
    ((MasterSignal.USR1,), "Reopen the log files.", "The same."),
    ((MasterSignal.USR2,), "Binary upgrade: exec a new master on the same sockets.",
     "The same (`pre_exec` hook, `<pidfile>.2`); the sockets travel in `CORRAL_FDS`."),
    ((MasterSignal.WINCH,), "Stop the workers gracefully (when daemonized).",
     "Stops the old master's workers during a binary upgrade; ignored otherwise, since a terminal sends it on "
     "every resize."),
)  # fmt: skip
