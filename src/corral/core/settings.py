"""The settings, typed and frozen: one class per section of the settings table, and `Settings` holding them all.

Generated from corral/config.py by python -m corral.docs; do not edit (change the table, then regenerate).
No field has a default: the table's defaults are applied by the loader (corral.config), which validates every
value, builds `Settings` once with `settings_from_values`, and corral passes the sections on by value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "ApplicationSettings",
    "ConfigFileSettings",
    "DevelopmentSettings",
    "HooksSettings",
    "HttpSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ProcessSettings",
    "ProxySettings",
    "SecuritySettings",
    "Settings",
    "SocketSettings",
    "TlsSettings",
    "WebSocketSettings",
    "WorkerSettings",
    "settings_from_values",
]


@dataclass(frozen=True, slots=True)
class ConfigFileSettings:
    """The Config File settings (docs/settings.md)."""

    config: str | None
    print_config: bool
    check_config: bool
    wsgi_app: str | None


@dataclass(frozen=True, slots=True)
class ApplicationSettings:
    """The Application settings (docs/settings.md)."""

    app_dir: str
    factory: bool
    lifespan: str
    interface: str
    loop: str
    preload_app: bool
    chdir: str | None
    raw_env: tuple[str, ...]
    env_file: str | None
    pythonpath: str | None
    paste: str | None
    raw_paste_global_conf: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SocketSettings:
    """The Server Socket settings (docs/settings.md)."""

    bind: tuple[str, ...]
    host: str | None
    port: int | None
    uds: str | None
    fd: int | None
    backlog: int
    reuse_port: bool


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The Worker Processes settings (docs/settings.md)."""

    workers: int | str
    worker_class: str
    worker_connections: int
    threads: int
    timeout: float
    graceful_timeout: float
    keepalive: float
    max_requests: int
    max_requests_jitter: int
    max_worker_memory: int
    max_worker_lifetime: float
    boot_timeout: float
    loop_lag_warn: float
    drain_delay: float
    crash_loop_isolation: bool


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP settings (docs/settings.md)."""

    root_path: str
    server_header: str
    date_header: bool
    headers: tuple[str, ...]
    limit_concurrency: int
    http: str
    h11_max_incomplete_event_size: int | None
    sendfile: bool
    tmp_upload_dir: str | None
    header_map: str
    forwarder_headers: str


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """The Security settings (docs/settings.md)."""

    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    limit_request_body: int
    header_timeout: float
    body_timeout: float
    send_timeout: float
    strip_header_spaces: bool
    permit_unconventional_http_method: bool
    permit_unconventional_http_version: bool
    casefold_http_method: bool
    permit_obsolete_folding: bool
    tolerate_dangerous_framing: bool


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The Proxy settings (docs/settings.md)."""

    forwarded_allow_ips: str
    proxy_headers: bool
    secure_scheme_headers: Mapping[str, str]
    proxy_protocol: bool
    proxy_allow_ips: str


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """The Logging settings (docs/settings.md)."""

    accesslog: str | None
    access_log_format: str
    errorlog: str
    loglevel: str
    access_log: bool | None
    use_colors: bool | None
    log_format: str
    request_id_header: str
    logconfig: str | None
    logconfig_dict: Mapping[str, Any]
    logconfig_json: str | None
    capture_output: bool
    logger_class: str
    syslog: bool
    syslog_addr: str | None
    syslog_prefix: str | None
    syslog_facility: str
    disable_redirect_access_to_syslog: bool
    enable_stdio_inheritance: bool


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The Metrics settings (docs/settings.md)."""

    admin_bind: str | None
    request_metrics: bool
    app_metrics: bool
    metrics_buckets: tuple[float, ...]
    statsd_host: str | None
    statsd_prefix: str
    dogstatsd_tags: str


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    """The Process settings (docs/settings.md)."""

    proc_name: str | None
    pidfile: str | None
    user: int | str | None
    group: int | str | None
    umask: int
    initgroups: bool
    worker_tmp_dir: str | None
    daemon: bool


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The TLS settings (docs/settings.md)."""

    certfile: str | None
    keyfile: str | None
    keyfile_password: str | None
    ca_certs: str | None
    cert_reqs: int
    ciphers: str | None
    ssl_version: str | None
    do_handshake_on_connect: bool
    suppress_ragged_eofs: bool
    ssl_context: Callable[..., Any] | None


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """The WebSocket settings (docs/settings.md)."""

    ws_max_size: int
    ws_max_queue: int
    ws_max_queue_bytes: int
    ws_ping_interval: float
    ws_ping_timeout: float
    ws_per_message_deflate: bool
    ws: str


@dataclass(frozen=True, slots=True)
class DevelopmentSettings:
    """The Development settings (docs/settings.md)."""

    reload: bool
    reload_delay: float
    reload_engine: str
    reload_dirs: tuple[str, ...]
    reload_extra_files: tuple[str, ...]
    reload_include: tuple[str, ...]
    reload_exclude: tuple[str, ...]
    spew: bool


@dataclass(frozen=True, slots=True)
class HooksSettings:
    """The Server Hooks settings (docs/settings.md)."""

    on_starting: Callable[..., Any] | None
    on_reload: Callable[..., Any] | None
    when_ready: Callable[..., Any] | None
    pre_fork: Callable[..., Any] | None
    post_fork: Callable[..., Any] | None
    post_worker_init: Callable[..., Any] | None
    worker_int: Callable[..., Any] | None
    worker_abort: Callable[..., Any] | None
    pre_exec: Callable[..., Any] | None
    pre_request: Callable[..., Any] | None
    post_request: Callable[..., Any] | None
    child_exit: Callable[..., Any] | None
    worker_exit: Callable[..., Any] | None
    nworkers_changed: Callable[..., Any] | None
    on_exit: Callable[..., Any] | None


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, by section."""

    config_file: ConfigFileSettings
    application: ApplicationSettings
    socket: SocketSettings
    worker: WorkerSettings
    http: HttpSettings
    security: SecuritySettings
    proxy: ProxySettings
    logging: LoggingSettings
    metrics: MetricsSettings
    process: ProcessSettings
    tls: TlsSettings
    websocket: WebSocketSettings
    development: DevelopmentSettings
    hooks: HooksSettings


def settings_from_values(values: Mapping[str, Any]) -> Settings:
    """Settings from validated values by setting name; every setting must be there."""
    return Settings(
        config_file=ConfigFileSettings(
            config=values["config"],
            print_config=values["print_config"],
            check_config=values["check_config"],
            wsgi_app=values["wsgi_app"],
        ),
        application=ApplicationSettings(
            app_dir=values["app_dir"],
            factory=values["factory"],
            lifespan=values["lifespan"],
            interface=values["interface"],
            loop=values["loop"],
            preload_app=values["preload_app"],
            chdir=values["chdir"],
            raw_env=tuple(values["raw_env"]),
            env_file=values["env_file"],
            pythonpath=values["pythonpath"],
            paste=values["paste"],
            raw_paste_global_conf=tuple(values["raw_paste_global_conf"]),
        ),
        socket=SocketSettings(
            bind=tuple(values["bind"]),
            host=values["host"],
            port=values["port"],
            uds=values["uds"],
            fd=values["fd"],
            backlog=values["backlog"],
            reuse_port=values["reuse_port"],
        ),
        worker=WorkerSettings(
            workers=values["workers"],
            worker_class=values["worker_class"],
            worker_connections=values["worker_connections"],
            threads=values["threads"],
            timeout=values["timeout"],
            graceful_timeout=values["graceful_timeout"],
            keepalive=values["keepalive"],
            max_requests=values["max_requests"],
            max_requests_jitter=values["max_requests_jitter"],
            max_worker_memory=values["max_worker_memory"],
            max_worker_lifetime=values["max_worker_lifetime"],
            boot_timeout=values["boot_timeout"],
            loop_lag_warn=values["loop_lag_warn"],
            drain_delay=values["drain_delay"],
            crash_loop_isolation=values["crash_loop_isolation"],
        ),
        http=HttpSettings(
            root_path=values["root_path"],
            server_header=values["server_header"],
            date_header=values["date_header"],
            headers=tuple(values["headers"]),
            limit_concurrency=values["limit_concurrency"],
            http=values["http"],
            h11_max_incomplete_event_size=values["h11_max_incomplete_event_size"],
            sendfile=values["sendfile"],
            tmp_upload_dir=values["tmp_upload_dir"],
            header_map=values["header_map"],
            forwarder_headers=values["forwarder_headers"],
        ),
        security=SecuritySettings(
            limit_request_line=values["limit_request_line"],
            limit_request_fields=values["limit_request_fields"],
            limit_request_field_size=values["limit_request_field_size"],
            limit_request_body=values["limit_request_body"],
            header_timeout=values["header_timeout"],
            body_timeout=values["body_timeout"],
            send_timeout=values["send_timeout"],
            strip_header_spaces=values["strip_header_spaces"],
            permit_unconventional_http_method=values["permit_unconventional_http_method"],
            permit_unconventional_http_version=values["permit_unconventional_http_version"],
            casefold_http_method=values["casefold_http_method"],
            permit_obsolete_folding=values["permit_obsolete_folding"],
            tolerate_dangerous_framing=values["tolerate_dangerous_framing"],
        ),
        proxy=ProxySettings(
            forwarded_allow_ips=values["forwarded_allow_ips"],
            proxy_headers=values["proxy_headers"],
            secure_scheme_headers=MappingProxyType(dict(values["secure_scheme_headers"])),
            proxy_protocol=values["proxy_protocol"],
            proxy_allow_ips=values["proxy_allow_ips"],
        ),
        logging=LoggingSettings(
            accesslog=values["accesslog"],
            access_log_format=values["access_log_format"],
            errorlog=values["errorlog"],
            loglevel=values["loglevel"],
            access_log=values["access_log"],
            use_colors=values["use_colors"],
            log_format=values["log_format"],
            request_id_header=values["request_id_header"],
            logconfig=values["logconfig"],
            logconfig_dict=MappingProxyType(dict(values["logconfig_dict"])),
            logconfig_json=values["logconfig_json"],
            capture_output=values["capture_output"],
            logger_class=values["logger_class"],
            syslog=values["syslog"],
            syslog_addr=values["syslog_addr"],
            syslog_prefix=values["syslog_prefix"],
            syslog_facility=values["syslog_facility"],
            disable_redirect_access_to_syslog=values["disable_redirect_access_to_syslog"],
            enable_stdio_inheritance=values["enable_stdio_inheritance"],
        ),
        metrics=MetricsSettings(
            admin_bind=values["admin_bind"],
            request_metrics=values["request_metrics"],
            app_metrics=values["app_metrics"],
            metrics_buckets=tuple(values["metrics_buckets"]),
            statsd_host=values["statsd_host"],
            statsd_prefix=values["statsd_prefix"],
            dogstatsd_tags=values["dogstatsd_tags"],
        ),
        process=ProcessSettings(
            proc_name=values["proc_name"],
            pidfile=values["pidfile"],
            user=values["user"],
            group=values["group"],
            umask=values["umask"],
            initgroups=values["initgroups"],
            worker_tmp_dir=values["worker_tmp_dir"],
            daemon=values["daemon"],
        ),
        tls=TlsSettings(
            certfile=values["certfile"],
            keyfile=values["keyfile"],
            keyfile_password=values["keyfile_password"],
            ca_certs=values["ca_certs"],
            cert_reqs=values["cert_reqs"],
            ciphers=values["ciphers"],
            ssl_version=values["ssl_version"],
            do_handshake_on_connect=values["do_handshake_on_connect"],
            suppress_ragged_eofs=values["suppress_ragged_eofs"],
            ssl_context=values["ssl_context"],
        ),
        websocket=WebSocketSettings(
            ws_max_size=values["ws_max_size"],
            ws_max_queue=values["ws_max_queue"],
            ws_max_queue_bytes=values["ws_max_queue_bytes"],
            ws_ping_interval=values["ws_ping_interval"],
            ws_ping_timeout=values["ws_ping_timeout"],
            ws_per_message_deflate=values["ws_per_message_deflate"],
            ws=values["ws"],
        ),
        development=DevelopmentSettings(
            reload=values["reload"],
            reload_delay=values["reload_delay"],
            reload_engine=values["reload_engine"],
            reload_dirs=tuple(values["reload_dirs"]),
            reload_extra_files=tuple(values["reload_extra_files"]),
            reload_include=tuple(values["reload_include"]),
            reload_exclude=tuple(values["reload_exclude"]),
            spew=values["spew"],
        ),
        hooks=HooksSettings(
            on_starting=values["on_starting"],
            on_reload=values["on_reload"],
            when_ready=values["when_ready"],
            pre_fork=values["pre_fork"],
            post_fork=values["post_fork"],
            post_worker_init=values["post_worker_init"],
            worker_int=values["worker_int"],
            worker_abort=values["worker_abort"],
            pre_exec=values["pre_exec"],
            pre_request=values["pre_request"],
            post_request=values["post_request"],
            child_exit=values["child_exit"],
            worker_exit=values["worker_exit"],
            nworkers_changed=values["nworkers_changed"],
            on_exit=values["on_exit"],
        ),
    )
