"""Logs of a real server: JSON lines on stderr and stdout, request ids end to end, logging configs that route
corral's loggers to files, and logging settings that stop the start before anything is bound."""

from __future__ import annotations

import json
import re
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.apps.echo import decode_echo
from tests.integration.conftest import Response, Server, ServerFactory, exchange, wait_until

APP = "tests.apps.echo:app"
NEW_ID = re.compile(r"[0-9a-f]{32}")
EXIT_CONFIG_ERROR = 2
ERROR_FIELDS = ["time", "level", "logger", "pid", "message"]


def get(server: Server, path: str = "/", *headers: str) -> Response:
    head = "".join(f"{header}\r\n" for header in headers)
    request = f"GET {path} HTTP/1.1\r\nHost: corral.test\r\n{head}Connection: close\r\n\r\n".encode()
    (response,) = exchange(server.port, request).final_responses()
    assert response.status == 200, response
    return response


def request_ids_seen_by_the_app(response: Response) -> list[bytes]:
    return [value for name, value in decode_echo(response.body)["headers"] if name == b"x-request-id"]


def json_lines(text: str) -> list[dict]:
    """Every line parsed as a JSON object (fails the test on any other line)."""
    objects = []
    for line in text.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


def access_lines(read: Callable[[], str], count: int) -> list[dict]:
    """Wait until `count` access lines were written (the worker flushes about once a second)."""
    assert wait_until(lambda: len(read().splitlines()) >= count, 10), read()
    return json_lines(read())


def test_json_logs_are_one_object_per_line_on_stderr_and_stdout(serve: ServerFactory) -> None:
    server = serve(APP, "--log-format", "json", "--access-logfile", "-")
    get(server, "/json?q=1", "User-Agent: log-test/1.0", "Referer: http://referrer.test/")
    (line,) = access_lines(server.stdout_text, 1)
    assert line["logger"] == "corral.access"
    assert (line["method"], line["path"], line["query"], line["protocol"]) == ("GET", "/json", "q=1", "HTTP/1.1")
    assert (line["status"], line["remote_addr"]) == (200, "127.0.0.1")
    assert (line["user_agent"], line["referer"]) == ("log-test/1.0", "http://referrer.test/")
    assert line["bytes"] > 0 and line["duration_us"] >= 0
    assert line["request_id"] is None  # request ids are off by default
    assert server.stop() == 0
    records = json_lines(server.stderr_text())
    assert all(list(record)[:5] == ERROR_FIELDS for record in records)
    messages = [record["message"] for record in records]
    assert "Application startup complete" in messages
    worker_pid = next(r["pid"] for r in records if r["message"] == "Application startup complete")
    assert line["pid"] == worker_pid
    assert {record["pid"] for record in records} == {server.proc.pid, worker_pid}


def test_request_id_sent_by_the_client_is_kept_everywhere(serve: ServerFactory) -> None:
    server = serve(APP, "--request-id-header", "X-Request-ID", "--log-format", "json", "--access-logfile", "-")
    response = get(server, "/", "X-Request-ID: trace-7f3a-01")
    assert response.header("x-request-id") == b"trace-7f3a-01"
    assert request_ids_seen_by_the_app(response) == [b"trace-7f3a-01"]
    (line,) = access_lines(server.stdout_text, 1)
    assert line["request_id"] == "trace-7f3a-01"


def test_request_id_is_made_when_absent_and_replaces_an_invalid_one(serve: ServerFactory) -> None:
    server = serve(APP, "--request-id-header", "X-Request-ID", "--log-format", "json", "--access-logfile", "-")
    made = get(server, "/made")
    replaced = get(server, "/replaced", 'X-Request-ID: "><script>')
    ids = []
    for response in (made, replaced):
        value = response.header("x-request-id")
        assert value is not None and NEW_ID.fullmatch(value.decode()), response.raw_head
        assert request_ids_seen_by_the_app(response) == [value]
        ids.append(value.decode())
    assert ids[0] != ids[1]
    lines = access_lines(server.stdout_text, 2)
    assert {line["path"]: line["request_id"] for line in lines} == {"/made": ids[0], "/replaced": ids[1]}


def test_request_id_atom_in_a_text_access_log(serve: ServerFactory, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = serve(
        APP, "--request-id-header", "X-Request-ID", "--access-logfile", str(log),
        "--access-logformat", "%(U)s %(s)s %(request_id)s",
    )  # fmt: skip
    get(server, "/text", "X-Request-ID: text-log-id")
    assert wait_until(lambda: log.exists() and "text-log-id" in log.read_text(), 10)
    assert log.read_text() == "/text 200 text-log-id\n"


def test_app_exception_is_one_json_record_with_its_traceback_and_the_500_has_the_request_id(
    serve: ServerFactory,
) -> None:
    server = serve("tests.apps.behaviours:app", "--log-format", "json", "--request-id-header", "X-Request-ID")
    request = b"GET /raise-before-start HTTP/1.1\r\nHost: corral.test\r\nX-Request-ID: failing-7\r\n\r\n"
    (response,) = exchange(server.port, request).final_responses()
    assert response.status == 500
    assert response.header("x-request-id") == b"failing-7"
    assert wait_until(lambda: "Exception in ASGI application" in server.stderr_text(), 10)
    (record,) = [r for r in json_lines(server.stderr_text()) if r["message"] == "Exception in ASGI application"]
    assert record["level"] == "ERROR"
    assert record["exception"].startswith("Traceback (most recent call last):")


def logging_config_file(tmp_path: Path, loggers: dict[str, str]) -> Path:
    """A config file whose logconfig_dict sends each named logger to its own file."""
    handlers = {
        name: {"class": "logging.FileHandler", "filename": str(tmp_path / file), "formatter": "plain"}
        for name, file in loggers.items()
    }
    config = {
        "formatters": {"plain": {"format": "%(name)s %(message)s"}},
        "handlers": handlers,
        "loggers": {name: {"handlers": [name], "propagate": False} for name in loggers},
    }
    path = tmp_path / "logging.conf.py"
    path.write_text(f"logconfig_dict = {config!r}\n")
    return path


def test_logconfig_dict_routes_the_error_and_access_loggers_to_files(serve: ServerFactory, tmp_path: Path) -> None:
    config = logging_config_file(tmp_path, {"corral.error": "error.log", "corral.access": "access.log"})
    server = serve(APP, "-c", str(config))
    get(server, "/routed")
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    # The access log is on without accesslog: the config gave its logger a handler, as Gunicorn does.
    assert wait_until(lambda: "GET /routed" in access_log.read_text(), 10), access_log.read_text()
    assert re.fullmatch(
        r'corral\.access 127\.0\.0\.1 - - \[.*\] "GET /routed HTTP/1\.1" 200 \d+ "-" "-"\n', access_log.read_text()
    )
    assert "corral.error Application startup complete" in error_log.read_text()
    assert "Application startup complete" not in server.stderr_text()


def test_gunicorn_logger_names_in_logconfig_dict_route_corrals_logs(serve: ServerFactory, tmp_path: Path) -> None:
    files = {"gunicorn.error": "gunicorn-error.log", "gunicorn.access": "gunicorn-access.log"}
    config = logging_config_file(tmp_path, files)
    server = serve(APP, "-c", str(config))
    get(server, "/gunicorn-names")
    access_log = tmp_path / "gunicorn-access.log"
    assert wait_until(lambda: "GET /gunicorn-names" in access_log.read_text(), 10), access_log.read_text()
    assert "corral.error Application startup complete" in (tmp_path / "gunicorn-error.log").read_text()


def test_usr1_reopens_a_json_error_log_file(serve: ServerFactory, tmp_path: Path) -> None:
    log, rotated = tmp_path / "error.log", tmp_path / "error.log.1"
    server = serve(APP, "--log-format", "json", "--error-logfile", str(log))
    assert wait_until(lambda: "Application startup complete" in log.read_text(), 10)
    log.rename(rotated)
    server.signal(signal.SIGUSR1)
    assert wait_until(log.exists, 10), "USR1 did not reopen the error log"
    server.signal(signal.SIGTTIN)  # the master logs it, through the reopened file
    assert wait_until(lambda: "TTIN" in log.read_text(), 10), log.read_text()
    assert all(record["message"] for record in json_lines(log.read_text()))
    assert "TTIN" not in rotated.read_text()


def test_a_logging_setting_that_cannot_be_applied_stops_the_start_before_binding(
    serve: ServerFactory, tmp_path: Path
) -> None:
    bad_dict = tmp_path / "bad.conf.py"
    bad_dict.write_text(
        textwrap.dedent(
            """
            logconfig_dict = {"handlers": {"h": {"class": "logging.FileHandler", "filename": "/no/such/dir/x.log"}}}
            """
        )
    )
    cases = [
        (("-c", str(bad_dict)), "corral: error: logconfig_dict: Unable to configure handler 'h': "),
        (("--log-config-json", str(tmp_path / "missing.json")), "corral: error: logconfig_json: cannot read "),
        (("--log-config", str(tmp_path / "missing.ini")), "corral: error: logconfig: "),
    ]
    for args, expected in cases:
        server = serve(APP, *args, wait_ready=False)
        assert server.wait(30) == EXIT_CONFIG_ERROR, server.stderr_text()
        lines = server.stderr_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert "Listening" not in server.stderr_text()
