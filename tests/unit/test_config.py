"""The settings table, validators, precedence of the layers, config files, and the CLI entry in-process."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest

from corral import __version__, cli, config, docs
from corral.compat import GUNICORN_SETTINGS, SETTING_DIFFERENCES
from corral.compiled import describe_build
from corral.config import (
    SECTIONS,
    SETTINGS,
    SETTINGS_BY_NAME,
    Config,
    ConfigError,
    load_config,
)
from corral.core.sockets import BindAddress, parse_bind

# Gunicorn's documented settings (its settings page), every one of which corral must at least declare.
HOOKS = [
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
]


def load(argv: list[str], environ: dict[str, str] | None = None, cwd: Path | None = None) -> Config:
    """load_config isolated from this process's environment and working directory."""
    return load_config(argv, environ=environ or {}, cwd=str(cwd) if cwd else "/nonexistent-corral-test-dir")


def load_error(argv: list[str], environ: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(argv, environ, cwd)
    message = str(info.value)
    assert "\n" not in message
    return message


def write_config(tmp_path: Path, text: str, name: str = "conf.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------------------
# The table itself.
# ---------------------------------------------------------------------------------------------------


def test_setting_names_are_unique():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))


def test_cli_flags_are_unique():
    flags = [flag for s in SETTINGS for flag in s.cli]
    assert len(flags) == len(set(flags))


def test_every_setting_has_a_known_section_and_a_one_line_doc():
    for setting in SETTINGS:
        assert setting.section in SECTIONS, setting.name
        assert setting.doc and "\n" not in setting.doc, setting.name


def test_every_default_passes_its_own_validator():
    for setting in SETTINGS:
        setting.validator(setting.default)


def test_every_gunicorn_setting_is_declared():
    missing = [name for name in GUNICORN_SETTINGS if name not in SETTINGS_BY_NAME]
    assert missing == []


def test_differences_from_gunicorn_are_only_noted_for_gunicorn_settings_corral_implements():
    for name in SETTING_DIFFERENCES:
        assert name in GUNICORN_SETTINGS and SETTINGS_BY_NAME[name].implemented, name


def test_migration_page_maps_every_gunicorn_setting_and_signal():
    text = docs.render_migrating()
    for name in GUNICORN_SETTINGS:
        assert f"| `{name}` |" in text, name
    for signal_name in ("TERM", "HUP", "TTIN", "USR1", "USR2", "WINCH"):
        assert f"| {signal_name}" in text, signal_name


def test_hooks_are_config_file_only_callables_defaulting_to_none():
    for name in HOOKS:
        setting = SETTINGS_BY_NAME[name]
        assert setting.kind == "hook"
        assert setting.default is None
        assert setting.cli == ()
        assert setting.implemented


def test_no_setting_is_left_planned():
    assert [s.name for s in SETTINGS if s.implemented_in is not None] == []


def test_settings_implemented_now_are_marked_implemented():
    implemented_now = [
        "bind",
        "backlog",
        "keepalive",
        "limit_request_body",
        "header_timeout",
        "root_path",
        "forwarded_allow_ips",
        "server_header",
        "date_header",
        "accesslog",
        "lifespan",
        "workers",
        "timeout",
        "max_requests",
        "preload_app",
        "boot_timeout",
        "loop_lag_warn",
        "pidfile",
        "user",
        "group",
        "umask",
        "chdir",
    ]
    for name in implemented_now:
        assert SETTINGS_BY_NAME[name].implemented, name


# ---------------------------------------------------------------------------------------------------
# Defaults and precedence.
# ---------------------------------------------------------------------------------------------------


def test_defaults_without_any_input():
    cfg = load(["main:app"])
    assert cfg.app == "main:app"
    assert cfg.bind == ["127.0.0.1:8000"]
    assert cfg.backlog == 2048
    assert cfg.worker_connections == 1000
    assert cfg.keepalive == 5.0
    assert cfg.graceful_timeout == 30.0
    assert cfg.header_timeout == 10.0
    assert cfg.limit_request_line == 4094
    assert cfg.limit_request_fields == 100
    assert cfg.limit_request_field_size == 8190
    assert cfg.limit_request_body == 0
    assert cfg.forwarded_allow_ips == "127.0.0.1,::1"
    assert cfg.secure_scheme_headers == {
        "X-FORWARDED-PROTOCOL": "ssl",
        "X-FORWARDED-PROTO": "https",
        "X-FORWARDED-SSL": "on",
    }
    assert cfg.server_header == "corral"
    assert cfg.date_header is True
    assert cfg.accesslog is None
    assert cfg.errorlog == "-"
    assert cfg.loglevel == "info"
    assert cfg.access_log_format == '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    assert (cfg.lifespan, cfg.factory, cfg.app_dir, cfg.loop) == ("auto", False, ".", "auto")
    assert cfg.worker_class == "corral"
    assert cfg.workers == "auto"
    assert cfg.on_starting is None
    assert set(cfg.sources.values()) == {"default"}
    assert cfg.config_file is None


def test_default_mutable_values_are_not_shared_between_loads():
    first = load([])
    first.bind.append("0.0.0.0:1")
    first.secure_scheme_headers["X"] = "y"
    second = load([])
    assert second.bind == ["127.0.0.1:8000"]
    assert "X" not in second.secure_scheme_headers


def test_precedence_default_config_file_cmd_args_env_command_line(tmp_path):
    conf = write_config(tmp_path, "backlog = 10\nkeepalive = 1\nheader_timeout = 2\nroot_path = '/f'\n")
    environ = {"CORRAL_CMD_ARGS": f"-c {conf} --keep-alive 3 --header-timeout 4"}
    cfg = load(["--header-timeout", "6"], environ)
    assert (cfg.backlog, cfg.sources["backlog"]) == (10, f"config file {conf}")
    assert (cfg.keepalive, cfg.sources["keepalive"]) == (3.0, "CORRAL_CMD_ARGS")
    assert (cfg.header_timeout, cfg.sources["header_timeout"]) == (6.0, "command line")
    assert (cfg.root_path, cfg.sources["root_path"]) == ("/f", f"config file {conf}")
    assert (cfg.limit_request_line, cfg.sources["limit_request_line"]) == (4094, "default")


def test_setting_env_vars_replace_the_default_only(tmp_path):
    cfg = load([], {"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert cfg.forwarded_allow_ips == "10.0.0.1"
    assert cfg.sources["forwarded_allow_ips"] == "env FORWARDED_ALLOW_IPS"
    conf = write_config(tmp_path, "forwarded_allow_ips = '*'\n")
    cfg = load(["-c", str(conf)], {"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert cfg.forwarded_allow_ips == "*"


def test_port_env_binds_all_interfaces_when_bind_is_not_given():
    cfg = load(["main:app"], {"PORT": "9123"})
    assert cfg.bind == ["0.0.0.0:9123"]
    assert cfg.sources["bind"] == "env PORT"


def test_port_env_is_ignored_when_bind_is_given_anywhere(tmp_path):
    assert load(["-b", "127.0.0.1:1"], {"PORT": "9123"}).bind == ["127.0.0.1:1"]
    assert load([], {"PORT": "9123", "CORRAL_CMD_ARGS": "-b 127.0.0.1:2"}).bind == ["127.0.0.1:2"]
    conf = write_config(tmp_path, "bind = '127.0.0.1:3'\n")
    assert load(["-c", str(conf)], {"PORT": "9123"}).bind == ["127.0.0.1:3"]


def test_bad_port_env_names_bind_and_the_env_var():
    message = load_error([], {"PORT": "http"})
    assert message.startswith("bind: ")
    assert "env PORT" in message


def test_repeated_bind_flags_accumulate_and_replace_the_config_file_list(tmp_path):
    conf = write_config(tmp_path, "bind = ['127.0.0.1:1', '127.0.0.1:2']\n")
    assert load(["-c", str(conf)]).bind == ["127.0.0.1:1", "127.0.0.1:2"]
    cfg = load(["-c", str(conf), "-b", "127.0.0.1:3", "--bind", "unix:/tmp/x.sock"])
    assert cfg.bind == ["127.0.0.1:3", "unix:/tmp/x.sock"]


def test_cmd_args_env_is_split_like_a_shell():
    cfg = load([], {"CORRAL_CMD_ARGS": "--server-header 'my server' main:app"})
    assert cfg.server_header == "my server"
    assert cfg.app == "main:app"
    assert cfg.app_source == "CORRAL_CMD_ARGS"


def test_cmd_args_env_that_cannot_be_split_is_an_error():
    assert load_error([], {"CORRAL_CMD_ARGS": "--server-header 'unclosed"}).startswith("CORRAL_CMD_ARGS: ")


def test_command_line_app_wins_over_cmd_args_env():
    assert load(["cli:app"], {"CORRAL_CMD_ARGS": "env:app"}).app == "cli:app"


def test_gunicorn_cmd_args_is_read_when_corral_cmd_args_is_unset():
    cfg = load([], {"GUNICORN_CMD_ARGS": "--workers 4 -k uvicorn.workers.UvicornWorker"})
    assert (cfg.workers, cfg.sources["workers"]) == (4, "GUNICORN_CMD_ARGS")


def test_corral_cmd_args_wins_over_gunicorn_cmd_args():
    cfg = load([], {"GUNICORN_CMD_ARGS": "--workers 4", "CORRAL_CMD_ARGS": "--workers 3"})
    assert (cfg.workers, cfg.sources["workers"]) == (3, "CORRAL_CMD_ARGS")


def test_bad_gunicorn_cmd_args_names_that_variable():
    assert load_error([], {"GUNICORN_CMD_ARGS": "--workers nine"}).endswith("(from GUNICORN_CMD_ARGS)")


def test_gunicorn_conf_py_in_the_working_directory_is_read_by_default(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 3\n")
    cfg = load_config([], {}, cwd=str(tmp_path))
    assert (cfg.workers, cfg.config_file) == (3, str(tmp_path / "gunicorn.conf.py"))


def test_corral_conf_py_wins_over_gunicorn_conf_py(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 3\n")
    (tmp_path / "corral.conf.py").write_text("workers = 2\n")
    assert load_config([], {}, cwd=str(tmp_path)).workers == 2


# ---------------------------------------------------------------------------------------------------
# Coercion and validation.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["--backlog", "64"], "backlog", 64),
        (["--keep-alive", "2.5"], "keepalive", 2.5),
        (["--keep-alive", "0"], "keepalive", 0.0),
        (["--graceful-timeout", "1"], "graceful_timeout", 1.0),
        (["--limit-request-line", "0"], "limit_request_line", 8190),
        (["--limit-request-line", "100000"], "limit_request_line", 8190),
        (["--limit-request-line", "8190"], "limit_request_line", 8190),
        (["--limit-request-fields", "0"], "limit_request_fields", 32768),
        (["--limit-request-field_size", "0"], "limit_request_field_size", 0),
        (["--limit-request-field-size", "100"], "limit_request_field_size", 100),
        (["--limit-request-body", "1M"], "limit_request_body", 1024 * 1024),
        (["--limit-request-body", "512k"], "limit_request_body", 512 * 1024),
        (["--limit-request-body", "1000"], "limit_request_body", 1000),
        (["--forwarded-allow-ips", " 10.0.0.0/8 , ::1,*"], "forwarded_allow_ips", "10.0.0.0/8,::1,*"),
        (["--root-path", "/api/"], "root_path", "/api"),
        (["--server-header", ""], "server_header", ""),
        (["--no-date-header"], "date_header", False),
        (["--log-level", "WARNING"], "loglevel", "warning"),
        (["--log-level", "warn"], "loglevel", "warning"),
        (["--access-logfile", "-"], "accesslog", "-"),
        (["--log-file", "/tmp/e.log"], "errorlog", "/tmp/e.log"),
        (["--lifespan", "off"], "lifespan", "off"),
        (["--loop", "asyncio"], "loop", "asyncio"),
        (["--factory"], "factory", True),
        (["--app-dir", "src"], "app_dir", "src"),
        (["-k", "uvicorn.workers.UvicornWorker"], "worker_class", "corral"),
        (["-k", "uvicorn_worker.UvicornWorker"], "worker_class", "corral"),
        (["--worker-class", "uvicorn.workers.UvicornH11Worker"], "worker_class", "corral"),
        (["--workers", "1"], "workers", 1),
        (["--workers=1"], "workers", 1),
    ],
)
def test_command_line_strings_are_coerced(argv, name, value):
    assert getattr(load(argv), name) == value


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--backlog", "0"], "backlog"),
        (["--backlog", "many"], "backlog"),
        (["--worker-connections", "-1"], "worker_connections"),
        (["--keep-alive", "soon"], "keepalive"),
        (["--keep-alive", "-1"], "keepalive"),
        (["--keep-alive", "nan"], "keepalive"),
        (["--header-timeout", "inf"], "header_timeout"),
        (["--limit-request-line", "-5"], "limit_request_line"),
        (["--limit-request-body", "lots"], "limit_request_body"),
        (["--forwarded-allow-ips", "proxy.local"], "forwarded_allow_ips"),
        (["--root-path", "api"], "root_path"),
        (["--server-header", "a\r\nX-Evil: 1"], "server_header"),
        (["--log-level", "loud"], "loglevel"),
        (["--lifespan", "maybe"], "lifespan"),
        (["--loop", "trio"], "loop"),
        (["-b", "127.0.0.1:http"], "bind"),
        (["-w", "zero"], "workers"),
        (["-w", "0"], "workers"),
        (["-k", "gevent"], "worker_class"),
    ],
)
def test_bad_values_name_the_setting_in_one_line(argv, name):
    message = load_error(argv)
    assert message.startswith(f"{name}: ")
    assert "from the command line" in message


def test_worker_class_corral_cannot_be_says_what_is_supported():
    message = load_error(["-k", "gevent"])
    assert message.startswith("worker_class: corral runs its own asyncio worker;")
    assert "'gevent' is not supported" in message
    assert "sync, gthread, uvicorn.workers.UvicornWorker" in message


@pytest.mark.parametrize(
    ("value", "meaning"),
    [("sync", "sync"), ("gthread", "gthread"), ("gunicorn.workers.gthread.ThreadWorker", "gthread")],
)
def test_gunicorns_thread_worker_classes_are_accepted(value, meaning):
    assert load(["-k", value]).worker_class == meaning


@pytest.mark.parametrize("value", ["auto", "asgi", "asgi3", "asgi2", "wsgi"])
def test_every_interface_is_accepted(value):
    assert load(["--interface", value]).interface == ("asgi3" if value == "asgi" else value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", BindAddress("tcp", host="127.0.0.1", port=8000)),
        ("0.0.0.0:0", BindAddress("tcp", host="0.0.0.0", port=0)),
        ("localhost", BindAddress("tcp", host="localhost", port=8000)),
        ("Example.COM:80", BindAddress("tcp", host="example.com", port=80)),
        (":9000", BindAddress("tcp", host="0.0.0.0", port=9000)),
        ("tcp://127.0.0.1:81", BindAddress("tcp", host="127.0.0.1", port=81)),
        ("[::1]:8080", BindAddress("tcp", host="::1", port=8080)),
        ("[::]", BindAddress("tcp", host="::", port=8000)),
        ("unix:/run/corral.sock", BindAddress("unix", path="/run/corral.sock")),
        ("unix:///run/corral.sock", BindAddress("unix", path="/run/corral.sock")),
        ("fd://3", BindAddress("fd", fd=3)),
    ],
)
def test_bind_forms_parse(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("localhost", "localhost:8000"), ("[::1]", "[::1]:8000"), ("unix:///x.sock", "unix:/x.sock"),
     ("fd://4", "fd://4"), (" 127.0.0.1:1 ", "127.0.0.1:1")],
)  # fmt: skip
def test_bind_values_are_stored_in_canonical_form(text, canonical):
    assert load(["-b", text]).bind == [canonical]


@pytest.mark.parametrize(
    "text",
    ["", "unix:", "fd://", "fd://x", "1.2.3.4:65536", "1.2.3.4:-1", "999.1.1.1:80", "[::1", "[::1]x",
     "[nothost]:80", "::1", "::1:80", "bad host:80", "host:"],
)  # fmt: skip
def test_bad_bind_values_are_refused(text):
    with pytest.raises(ValueError):
        parse_bind(text)


def test_secure_scheme_headers_names_are_upper_cased(tmp_path):
    conf = write_config(tmp_path, "secure_scheme_headers = {'x-forwarded-proto': 'https'}\n")
    assert load(["-c", str(conf)]).secure_scheme_headers == {"X-FORWARDED-PROTO": "https"}


def test_config_file_python_values_are_validated_too(tmp_path):
    conf = write_config(tmp_path, "keepalive = '2'\nbacklog = 64.0\nbind = ('127.0.0.1:1',)\ndate_header = 0")
    cfg = load(["-c", str(conf)])
    assert (cfg.keepalive, cfg.backlog, cfg.bind, cfg.date_header) == (2.0, 64, ["127.0.0.1:1"], False)
    bad = write_config(tmp_path, "backlog = True\n", "bad.py")
    assert load_error(["-c", str(bad)]).startswith("backlog: expected an integer")


def test_forwarded_allow_ips_accepts_a_list_in_a_config_file(tmp_path):
    conf = write_config(tmp_path, "forwarded_allow_ips = ['10.0.0.1', '192.168.0.0/16']\n")
    assert load(["-c", str(conf)]).forwarded_allow_ips == "10.0.0.1,192.168.0.0/16"


# ---------------------------------------------------------------------------------------------------
# Unknown flags and arguments.
# ---------------------------------------------------------------------------------------------------


def test_unknown_flag_is_named_with_a_suggestion():
    message = load_error(["--workerz", "2", "main:app"])
    assert message.startswith("--workerz: unknown option")
    assert "--workers" in message


def test_unknown_flag_in_cmd_args_env_says_where_it_was():
    assert "in CORRAL_CMD_ARGS" in load_error([], {"CORRAL_CMD_ARGS": "--nope"})


def test_abbreviated_flags_are_not_guessed():
    assert load_error(["--keep", "3"]).startswith("--keep: unknown option")


def test_flag_missing_its_value_names_the_setting():
    assert load_error(["main:app", "--backlog"]).startswith("backlog: ")


def test_more_than_one_app_is_an_error():
    assert load_error(["a:app", "b:app"]).startswith("APP: ")


# ---------------------------------------------------------------------------------------------------
# Declared but not implemented (or not applicable) settings.
# ---------------------------------------------------------------------------------------------------


def test_planned_setting_with_non_default_value_fails_naming_the_issue(monkeypatch):
    planned = dataclasses.replace(SETTINGS_BY_NAME["statsd_prefix"], implemented_in=7)
    monkeypatch.setattr(config, "SETTINGS", tuple(planned if s.name == "statsd_prefix" else s for s in SETTINGS))
    message = load_error(["--statsd-prefix", "shop", "main:app"])
    assert message.startswith("statsd_prefix: not supported yet (planned in issue 7)")
    assert "from the command line" in message


def test_unimplemented_setting_at_its_default_value_is_accepted(tmp_path):
    conf = write_config(tmp_path, "workers = 1\ntimeout = 30\nmax_requests = 0\npreload_app = False\n")
    cfg = load(["-c", str(conf)])
    assert (cfg.workers, cfg.sources["workers"]) == (1, f"config file {conf}")


def test_workers_auto_is_valid():
    assert load(["-w", "auto"]).workers == "auto"


def test_workers_computed_from_the_cpu_count_passes_validation(tmp_path):
    conf = write_config(tmp_path, "import multiprocessing\nworkers = multiprocessing.cpu_count() * 2 + 1\n")
    assert load(["-c", str(conf)]).workers >= 3


def test_web_concurrency_env_sets_workers():
    cfg = load([], {"WEB_CONCURRENCY": "4"})
    assert (cfg.workers, cfg.sources["workers"]) == (4, "env WEB_CONCURRENCY")


def test_hook_defined_in_a_config_file_is_loaded(tmp_path):
    conf = write_config(tmp_path, "def on_starting(server):\n    pass\n")
    assert load(["-c", str(conf)]).on_starting.__name__ == "on_starting"


def test_hook_with_the_wrong_signature_is_refused(tmp_path):
    conf = write_config(tmp_path, "def pre_fork(server):\n    pass\n")
    assert load_error(["-c", str(conf)]).startswith("pre_fork: must accept 2 positional arguments")


def test_gunicorn_setting_without_use_in_corral_is_accepted_with_a_warning_naming_it():
    cfg = load(["--worker-tmp-dir", "/tmp"])
    assert cfg.worker_tmp_dir == "/tmp"
    assert [w for w in cfg.warnings if w.startswith("worker_tmp_dir: ignored (")]


def test_threads_is_a_setting_with_a_use_and_gives_no_warning():
    cfg = load(["--threads", "4"])
    assert cfg.threads == 4
    assert cfg.warnings == ()


def test_gunicorn_setting_without_use_in_corral_at_its_default_gives_no_warning(tmp_path):
    conf = write_config(tmp_path, "threads = 1\nsendfile = None\n")
    assert load(["-c", str(conf)]).warnings == ()


def test_sendfile_env_var_replaces_the_default_as_in_gunicorn(tmp_path):
    assert load([], {"SENDFILE": "0"}).sendfile is False
    assert load([], {"SENDFILE": "yes"}).sendfile is True
    conf = write_config(tmp_path, "sendfile = True\n")
    assert load(["-c", str(conf)], {"SENDFILE": "0"}).sendfile is True  # a config file still wins
    assert load_error([], {"SENDFILE": "maybe"}).startswith("sendfile: ")


def test_sendfile_is_on_unless_set_false_as_in_gunicorn(tmp_path):
    assert load([]).sendfile is True
    assert load(["--no-sendfile"]).sendfile is False
    assert load(["-c", str(write_config(tmp_path, "sendfile = None\n"))]).sendfile is True  # Gunicorn's default


def test_setting_that_cannot_apply_is_an_error_naming_it():
    assert load_error(["--paste", "app.ini"]).startswith("paste: not supported (")


def test_daemon_flag_says_corral_does_not_daemonize():
    message = load_error(["-D", "main:app"])
    assert message.startswith("daemon: not supported (corral does not daemonize")


def test_every_setting_without_effect_fails_or_warns_when_changed():
    changed = {"flag": ["--{}"], "negflag": ["--{}"]}
    for setting in SETTINGS:
        if setting.implemented or not setting.cli or setting.kind not in changed:
            continue
        if setting.default is not False and setting.kind == "flag":
            continue  # a flag that sets its own default (suppress_ragged_eofs) changes nothing
        if setting.ignored is not None:
            warnings = load([setting.cli[-1]]).warnings
            assert [w for w in warnings if w.startswith(f"{setting.name}: ignored (")], warnings
        else:
            message = load_error([setting.cli[-1]])
            assert message.startswith(f"{setting.name}: not supported"), message


def test_config_replace_validates_and_checks_support():
    cfg = load(["main:app"])
    changed = cfg.replace(keepalive="1")
    assert (changed.keepalive, changed.sources["keepalive"], cfg.keepalive) == (1.0, "override", 5.0)
    with pytest.raises(ConfigError):
        cfg.replace(paste="app.ini")
    with pytest.raises(ConfigError):
        cfg.replace(backlog=0)


def test_unknown_attribute_on_config_suggests_a_setting():
    with pytest.raises(AttributeError, match="keepalive"):
        _ = load([]).keep_alive


# ---------------------------------------------------------------------------------------------------
# Config files.
# ---------------------------------------------------------------------------------------------------


def test_gunicorn_style_config_file_with_implemented_settings_loads(tmp_path):
    conf = write_config(
        tmp_path,
        """
        import multiprocessing
        import os

        bind = "0.0.0.0:8000"
        backlog = 2048
        worker_class = "uvicorn.workers.UvicornWorker"
        worker_connections = 1000
        graceful_timeout = 30
        keepalive = 5
        accesslog = "-"
        errorlog = "-"
        loglevel = "info"
        access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sμs'
        limit_request_line = 8190
        limit_request_fields = 100
        limit_request_field_size = 8190
        forwarded_allow_ips = os.environ.get("MY_PROXY", "127.0.0.1")
        """,
    )
    cfg = load(["-c", str(conf), "main:app"])
    assert cfg.bind == ["0.0.0.0:8000"]
    assert cfg.worker_class == "corral"
    assert cfg.access_log_format.endswith("%(D)sμs")
    assert cfg.limit_request_line == 8190
    assert cfg.config_file == str(conf)
    assert cfg.sources["config"] == "command line"
    assert cfg.warnings == ()


def test_default_config_file_is_read_from_the_working_directory(tmp_path):
    (tmp_path / "corral.conf.py").write_text("backlog = 77\n")
    cfg = load([], cwd=tmp_path)
    assert cfg.backlog == 77
    assert cfg.sources["backlog"] == f"config file {tmp_path / 'corral.conf.py'}"
    assert cfg.sources["config"] == "default"


def test_relative_config_path_is_resolved_against_the_working_directory(tmp_path):
    write_config(tmp_path, "backlog = 5\n", "rel.py")
    assert load(["-c", "rel.py"], cwd=tmp_path).backlog == 5
    assert load(["-c", "file:rel.py"], cwd=tmp_path).backlog == 5


def test_config_file_given_in_cmd_args_env_is_read(tmp_path):
    conf = write_config(tmp_path, "backlog = 6\n")
    assert load([], {"CORRAL_CMD_ARGS": f"--config {conf}"}).backlog == 6


def test_missing_config_file_is_an_error_naming_it(tmp_path):
    message = load_error(["-c", "missing.py"], cwd=tmp_path)
    assert message == "config file missing.py: no such file"


def test_config_file_syntax_error_names_the_file_and_line(tmp_path):
    conf = write_config(tmp_path, "backlog = 1\nworkers = = 2\n")
    message = load_error(["-c", str(conf)])
    assert message.startswith(f"config file {conf}, line 2: syntax error")


def test_config_file_exception_names_the_file_and_line(tmp_path):
    conf = write_config(tmp_path, "import os\n\nbacklog = int(os.environ['NOPE_NOT_SET_ANYWHERE'])\n")
    message = load_error(["-c", str(conf)])
    assert message.startswith(f"config file {conf}, line 3: KeyError")


def test_config_file_calling_exit_is_an_error(tmp_path):
    conf = write_config(tmp_path, "import sys\nsys.exit(5)\n")
    assert load_error(["-c", str(conf)]).startswith(f"config file {conf}, line 2: SystemExit")


def test_config_file_unknown_lowercase_names_are_warned_about_not_fatal(tmp_path):
    conf = write_config(
        tmp_path,
        """
        import os
        from os.path import join
        _private = 1
        CONSTANT = 2
        worker = 4
        cpu_budget = 2

        def helper():
            return 1

        class Thing:
            pass
        """,
    )
    warnings = load(["-c", str(conf)]).warnings
    assert len(warnings) == 2
    assert "unknown setting 'worker' ignored; did you mean 'workers'?" in warnings[0]
    assert "'cpu_budget'" in warnings[1]


def test_config_setting_inside_a_config_file_is_ignored_with_a_warning(tmp_path):
    conf = write_config(tmp_path, "config = 'other.py'\n")
    cfg = load(["-c", str(conf)])
    assert cfg.config == str(conf)
    assert any("'config' is ignored" in warning for warning in cfg.warnings)


def test_wsgi_app_in_a_config_file_names_the_app(tmp_path):
    conf = write_config(tmp_path, "wsgi_app = 'pkg.main:app'\n")
    cfg = load(["-c", str(conf)])
    assert (cfg.app, cfg.app_source) == ("pkg.main:app", f"config file {conf}")
    assert load(["-c", str(conf), "other:app"]).app == "other:app"


def test_config_from_a_python_module(tmp_path, monkeypatch):
    (tmp_path / "corral_test_settings_mod.py").write_text("backlog = 9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load(["-c", "python:corral_test_settings_mod"])
    assert cfg.backlog == 9
    assert load_error(["-c", "python:no_such_module_for_corral"]).startswith("config file python:")


# ---------------------------------------------------------------------------------------------------
# The command line entry, in-process (it never reaches the server here).
# ---------------------------------------------------------------------------------------------------


def test_version_prints_name_and_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"corral {__version__} ({describe_build()})\n"


def test_help_is_grouped_by_section_and_works_with_a_broken_config(capsys):
    assert cli.main(["-c", "/nonexistent/conf.py", "--help-all"]) == 0
    out = capsys.readouterr().out
    for section in ("Server Socket:", "Worker Processes:", "Security:", "Logging:", "Proxy:"):
        assert section in out
    assert "--keep-alive SECONDS" in out
    assert out.index("Server Socket:") < out.index("--backlog") < out.index("Worker Processes:")


def test_print_config_shows_each_setting_value_and_source(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("CORRAL_CMD_ARGS", "PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS", "WEB_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["--print-config", "--backlog", "12", "main:app"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SETTINGS) + 1
    line_re = re.compile(r"^(\w+) *= (.*)  # (.*)$")
    parsed = {m.group(1): (m.group(2), m.group(3)) for m in map(line_re.match, lines)}
    assert parsed["app"] == ("'main:app'", "command line")
    assert parsed["backlog"] == ("12", "command line")
    assert parsed["keepalive"] == ("5.0", "default")


def test_missing_app_exits_2(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_CMD_ARGS", raising=False)
    assert cli.main([]) == 2
    assert capsys.readouterr().err.startswith("corral: error: APP: missing")


def test_config_error_exits_2_with_one_line(capsys):
    assert cli.main(["main:app", "--backlog", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("corral: error: backlog: ")


def test_check_config_imports_the_app(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_CMD_ARGS", raising=False)
    (tmp_path / "corral_check_ok_app.py").write_text("async def app(scope, receive, send):\n    pass\n")
    assert cli.main(["--check-config", "--app-dir", str(tmp_path), "corral_check_ok_app:app"]) == 0
    assert cli.main(["--check-config", "--app-dir", str(tmp_path), "corral_no_such_module_x:app"]) == 3
    assert capsys.readouterr().err.startswith("corral: error: ")


# ---------------------------------------------------------------------------------------------------
# docs/settings.md.
# ---------------------------------------------------------------------------------------------------


def test_docs_page_lists_every_setting_with_its_status():
    text = docs.render_settings()
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in text
    assert "Accepted and ignored: corral's heartbeats live in shared memory" in text
    assert "Not supported: corral does not daemonize" in text


def test_docs_check_reports_a_stale_page(tmp_path):
    page = tmp_path / "settings.md"
    assert docs.main(["--output-dir", str(tmp_path)]) == 0
    assert docs.main(["--check", "--output-dir", str(tmp_path)]) == 0
    page.write_text(page.read_text() + "edited\n")
    assert docs.main(["--check", "--output-dir", str(tmp_path)]) == 1


def test_committed_docs_page_is_up_to_date():
    assert docs.main(["--check"]) == 0


def test_empty_config_file_name_is_an_error():
    assert load_error(["-c", ""]) == "config: empty file name (on the command line)"


def test_hook_given_as_an_import_string_that_fails_is_a_bad_value(tmp_path):
    conf = write_config(tmp_path, "when_ready = 'no_such_module_for_corral.ready'\n")
    assert load_error(["-c", str(conf)]).startswith("when_ready: cannot import 'no_such_module_for_corral.ready'")


def test_user_that_does_not_exist_is_a_configuration_error():
    assert load_error(["-u", "no-such-user-here", "main:app"]).startswith("user: no such user 'no-such-user-here'")


def test_group_that_does_not_exist_is_a_configuration_error():
    assert load_error(["-g", "no-such-group-here", "main:app"]).startswith("group: no such group")


def test_ws_max_queue_bytes_takes_a_size_and_cannot_be_turned_off():
    assert load(["--ws-max-queue-bytes", "2M"]).ws_max_queue_bytes == 2 * 1024 * 1024
    assert load_error(["--ws-max-queue-bytes", "0"]).startswith("ws_max_queue_bytes: must be at least 1 byte")
