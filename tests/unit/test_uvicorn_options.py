"""uvicorn's options in the settings table: every flag and run() keyword lands on a setting, --host/--port
make the bind, notices and refusals are one line, --help is short, .env files, and corral.run()'s keywords."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from corral import api, cli
from corral.config import SETTINGS, Config, ConfigError, load_config
from corral.envfile import apply_env_file, read_env_file
from corral.logging import LogConfigError, _file_config
from corral.uvicorn_compat import UVICORN_DIFFERENCES, UVICORN_OPTIONS


def load(argv: list[str], environ: dict[str, str] | None = None, cwd: Path | None = None) -> Config:
    return load_config(argv, environ=environ or {}, cwd=str(cwd) if cwd else "/nonexistent-corral-test-dir")


def load_error(argv: list[str], environ: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(argv, environ, cwd)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- the table


def test_every_uvicorn_option_is_a_flag_and_a_keyword_of_one_setting() -> None:
    by_keyword = {s.uvicorn: s for s in SETTINGS if s.uvicorn}
    for flags, keyword in UVICORN_OPTIONS:
        setting = by_keyword[keyword]
        spelled = {*setting.cli, *(flag for flag, _ in setting.switches)}
        for flag in flags.split(" / "):
            assert flag in spelled, (flag, setting.name)
    assert set(UVICORN_DIFFERENCES) <= set(by_keyword)


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["--timeout-keep-alive", "7"], "keepalive", 7.0),
        (["--timeout-graceful-shutdown", "12"], "graceful_timeout", 12.0),
        (["--limit-max-requests", "1000"], "max_requests", 1000),
        (["--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"], "keyfile", "k.pem"),
        (["--ssl-cert-reqs", "2"], "cert_reqs", 2),
        (["--ssl-version", "17"], "ssl_version", "TLS"),
        (["--ssl-keyfile-password", "s3cret"], "keyfile_password", "s3cret"),
        (["--log-level", "trace"], "loglevel", "trace"),
        (["--no-access-log"], "access_log", False),
        (["--access-log"], "access_log", True),
        (["--use-colors"], "use_colors", True),
        (["--no-use-colors"], "use_colors", False),
        (["--no-proxy-headers"], "proxy_headers", False),
        (["--date-header"], "date_header", True),
        (["--no-date-header"], "date_header", False),
        (["--server-header"], "server_header", "corral"),
        (["--no-server-header"], "server_header", ""),
        (["--server-header", "edge"], "server_header", "edge"),
        (["--header", "X-A:1", "--header", "X-B: 2"], "headers", ["X-A: 1", "X-B: 2"]),
        (["--reload-delay", "0.5"], "reload_delay", 0.5),
        (["--ws", "websockets"], "ws", "auto"),
        (["--ws", "none"], "ws", "none"),
        (["--http", "httptools"], "http", "auto"),
        (["--interface", "asgi2"], "interface", "asgi2"),
        (["--limit-concurrency", "100"], "limit_concurrency", 100),
    ],
)
def test_uvicorn_flags_set_corral_settings(argv: list[str], name: str, value: object) -> None:
    cfg = load([*argv, "main:app"])
    assert getattr(cfg, name) == value
    assert not cfg.warnings


@pytest.mark.parametrize(
    ("argv", "bind"),
    [
        (["--host", "0.0.0.0", "--port", "8001"], ["0.0.0.0:8001"]),
        (["--port", "9000"], ["127.0.0.1:9000"]),
        (["--host", "0.0.0.0"], ["0.0.0.0:8000"]),
        (["--host", "::1", "--port", "8001"], ["[::1]:8001"]),
        (["--uds", "/tmp/app.sock"], ["unix:/tmp/app.sock"]),
        (["--fd", "3"], ["fd://3"]),
        (["--fd", "3", "--uds", "/tmp/app.sock", "--port", "1"], ["fd://3"]),  # uvicorn's order: fd, uds, host
    ],
)
def test_host_port_uds_and_fd_become_the_bind(argv: list[str], bind: list[str]) -> None:
    assert load([*argv, "main:app"]).bind == bind


def test_host_from_the_command_line_replaces_the_config_files_bind(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("bind = ['0.0.0.0:9999']\n")
    cfg = load(["--port", "8002", "main:app"], cwd=tmp_path)
    assert cfg.bind == ["127.0.0.1:8002"]
    assert cfg.sources["bind"] == "command line"
    assert load(["--port", "8002", "main:app"], environ={"PORT": "7000"}).bind == ["127.0.0.1:8002"]
    assert load(["main:app"], environ={"PORT": "7000"}).bind == ["0.0.0.0:7000"]


def test_a_config_files_own_port_variable_is_not_the_uvicorn_setting(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("host = '0.0.0.0'\nport = '8123'\nbind = [f'{host}:{port}']\n")
    cfg = load(["main:app"], cwd=tmp_path)
    assert cfg.bind == ["0.0.0.0:8123"]
    assert cfg.port is None
    assert not cfg.warnings


def test_host_next_to_bind_in_the_same_place_is_one_error_line() -> None:
    message = load_error(["-b", "127.0.0.1:1", "--host", "0.0.0.0", "main:app"])
    assert message == "bind: give either bind (-b) or --host, not both (from the command line)"


def test_reload_runs_one_worker_unless_workers_are_given() -> None:
    assert load(["--reload", "main:app"]).workers == 1
    assert load(["--reload", "-w", "3", "main:app"]).workers == 3
    assert load(["--reload", "main:app"], environ={"WEB_CONCURRENCY": "2"}).workers == 2
    assert load(["main:app"]).workers == "auto"


@pytest.mark.parametrize(
    ("argv", "notice"),
    [
        (["--http", "h11"], "http: ignored (corral always parses HTTP/1.1 with httptools); got 'h11'"),
        (["--ws", "wsproto"], "ws: corral's WebSocket implementation is built on websockets"),
        (["--h11-max-incomplete-event-size", "16384"], "h11_max_incomplete_event_size: ignored"),
    ],
)
def test_uvicorn_values_without_meaning_are_accepted_with_one_notice(argv: list[str], notice: str) -> None:
    warnings = load([*argv, "main:app"]).warnings
    assert len(warnings) == 1
    assert warnings[0].startswith(notice)


def test_interface_wsgi_is_accepted() -> None:
    assert load_config(["--interface", "wsgi", "main:app"]).interface == "wsgi"


@pytest.mark.parametrize(
    ("flag", "hint"),
    [
        ("--timeout-keepalive", "did you mean --timeout-keep-alive?"),
        ("--forwarded-allow-ip", "did you mean --forwarded-allow-ips?"),
        ("--limit-max-requests-jitter", "use --max-requests-jitter N"),
        ("--debug", "use --reload and --log-level debug"),
        ("--no-acces-log", "did you mean --no-access-log?"),
    ],
)
def test_unknown_flags_suggest_the_corral_or_uvicorn_spelling(flag: str, hint: str) -> None:
    assert load_error([flag, "main:app"]).endswith(hint)


def test_help_fits_two_screens_and_help_all_lists_every_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.main(["--help"]) == 0
    short = capsys.readouterr().out
    assert len(short.splitlines()) <= 110
    assert "--host HOST" in short and "--reload" in short and "--help-all" in short
    assert "--threads" not in short
    assert cli.main(["--help-all"]) == 0
    full = capsys.readouterr().out
    for flag in ("--threads", "--h11-max-incomplete-event-size", "--ws-max-queue", "--statsd-host"):
        assert flag in full


# ---------------------------------------------------------------------------------------------- .env files


def test_env_file_lines_are_read_like_dotenv(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        textwrap.dedent(
            """\
            # a comment

            export A=1
            B = two words  # a comment
            C='single # kept'
            D="line\\nbreak \\"quoted\\""
            E=
            """
        )
    )
    assert read_env_file(str(path)) == {
        "A": "1",
        "B": "two words",
        "C": "single # kept",
        "D": 'line\nbreak "quoted"',
        "E": "",
    }


def test_env_file_keeps_variables_already_set(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=file\nB=file\n")
    environ = {"A": "process"}
    apply_env_file(str(path), environ)
    assert environ == {"A": "process", "B": "file"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("just words\n", "line 1: expected KEY=VALUE, got 'just words'"),
        ("A='open\n", "line 1: unterminated single quote"),
    ],
)
def test_a_bad_env_file_is_one_line_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / ".env"
    path.write_text(text)
    assert load_error(["--env-file", str(path), "main:app"]) == f"env_file: {path}, {problem} (from the command line)"


# ---------------------------------------------------------------------------------------------- --log-config


def test_log_config_reads_json_by_its_extension(tmp_path: Path) -> None:
    path = tmp_path / "logging.json"
    path.write_text('{"version": 1, "loggers": {"corral.test.json_config": {"level": "WARNING"}}}')
    _file_config(str(path))
    assert logging.getLogger("corral.test.json_config").level == logging.WARNING


def test_log_config_yaml_without_pyyaml_or_broken_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "logging.yaml"
    path.write_text("version: [1\n")
    with pytest.raises(LogConfigError) as info:
        _file_config(str(path))
    assert str(info.value).startswith(f"logconfig: {path} ")


# ---------------------------------------------------------------------------------------------- corral.run() keywords


def test_run_keywords_are_uvicorns_and_corrals() -> None:
    config = api.Config(
        "main:app", host="0.0.0.0", port=8005, timeout_keep_alive=9, log_level=logging.DEBUG, server_header=False,
        headers=[("X-A", "1")], reload_includes=["*.html"], log_config={"version": 1}, max_worker_memory="512M",
        ssl_keyfile=None,
    )  # fmt: skip
    settings = config.settings
    assert settings.bind == ["0.0.0.0:8005"]
    assert settings.keepalive == 9.0
    assert settings.loglevel == "debug"
    assert settings.server_header == ""
    assert settings.headers == ["X-A: 1"]
    assert settings.reload_include == ["*.html"]
    assert settings.logconfig_dict == {"version": 1}
    assert settings.max_worker_memory == 512 * 1024 * 1024
    assert settings.workers == 1  # uvicorn.run()'s default
    assert config.timeout_keep_alive == 9.0


def test_run_ignores_the_environment_and_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gunicorn.conf.py").write_text("workers = 5\n")
    monkeypatch.setenv("PORT", "7001")
    settings = api.Config("main:app").settings
    assert settings.bind == ["127.0.0.1:8000"]
    assert settings.workers == 1


def test_run_unknown_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'prot'"):
        api.Config("main:app", prot=8000)


@pytest.mark.parametrize("keywords", [{"workers": 2}, {"reload": True}])
def test_run_needs_an_import_string_for_workers_or_reload(keywords: dict[str, object]) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        pass

    with pytest.raises(ConfigError, match="You must pass the application as an import string to enable 'reload' or"):
        api.Config(app, **keywords)
    api.Config("main:app", **keywords)  # an import string may have both


# ---------------------------------------------------------------------------------------------- --interface


def test_interface_asgi2_calls_the_app_with_the_scope_first() -> None:
    import asyncio

    from corral.loading import app_as_asgi3

    calls: list[object] = []

    class Asgi2App:  # ambiguous to detection (it takes *args), so the interface setting decides
        def __call__(self, *args: object) -> object:
            calls.append(args)

            async def instance(receive: object, send: object) -> None:
                calls.append("instance")

            return instance

    asyncio.run(app_as_asgi3(Asgi2App(), "asgi2")({"type": "http"}, None, None))
    assert calls == [({"type": "http"},), "instance"]
