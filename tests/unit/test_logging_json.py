"""log_format json: the compiled JSON access line (fields, nulls, escaping, time) and the error log's JSON records."""

from __future__ import annotations

import calendar
import json
import logging
import os
import sys
import time
from enum import IntEnum
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral.logging as corral_logging
from corral.logging import (
    JSON_ACCESS_FIELDS,
    AccessLog,
    JsonFormatter,
    LoggedAccessLog,
    compile_access_log_format,
    compile_json_access_log,
    setup_error_log,
)

# 2026-11-22 10:00:00 UTC
EPOCH = calendar.timegm((2026, 11, 22, 10, 0, 0, 0, 0, 0))


def make_scope(**overrides) -> dict:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items",
        "raw_path": b"/items",
        "query_string": b"page=2",
        "headers": [
            (b"host", b"example.com"),
            (b"user-agent", b"curl/8.5.0"),
            (b"referer", b"https://example.com/start"),
            (b"authorization", b"Basic YWxpY2U6c2VjcmV0"),  # alice:secret
            (b"x-request-id", b"req-42"),
        ],
        "client": ("203.0.113.7", 51234),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(overrides)
    return scope


def record(
    scope: dict | None = None,
    *,
    access_log_format: str = "",
    request_id_header: str = "",
    status: int = 200,
    response_headers: list | None = None,
    response_length: int | None = 1234,
    request_time_ns: int = 1_500_000,
) -> dict:
    """Render one JSON access line and parse it back, checking it is one line of ASCII."""
    render = compile_json_access_log(access_log_format, request_id_header=request_id_header)
    line = render(
        make_scope() if scope is None else scope, status, response_headers or [], response_length, request_time_ns
    )
    assert "\n" not in line and "\r" not in line
    assert line.isascii()
    return json.loads(line)


@pytest.fixture
def timezone_and_clock(monkeypatch):
    """Set TZ (a POSIX rule, so no tz database is needed) and the wall clock; both restored afterwards."""
    saved_tz = os.environ.get("TZ")
    now = [EPOCH + 0.25]
    monkeypatch.setattr(corral_logging, "_wall_clock", lambda: now[0])
    monkeypatch.setattr(corral_logging, "_iso_second", -1)
    monkeypatch.setattr(corral_logging, "_iso_millisecond", -1)

    def set_zone_and_clock(zone: str, clock: float) -> None:
        os.environ["TZ"] = zone
        time.tzset()
        corral_logging._iso_second = corral_logging._iso_millisecond = -1
        now[0] = clock

    yield set_zone_and_clock
    if saved_tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved_tz
    time.tzset()


# ------------------------------------------------------------------------------------------ access lines


def test_json_access_line_has_the_documented_fields_in_order():
    assert list(record()) == list(JSON_ACCESS_FIELDS)


def test_json_access_line_carries_each_request_fact_under_a_readable_name():
    fields = record(request_id_header="X-Request-ID", status=404, response_length=17, request_time_ns=2_345_678)
    assert fields["level"] == "INFO"
    assert fields["logger"] == "corral.access"
    assert fields["pid"] == os.getpid()
    assert fields["remote_addr"] == "203.0.113.7"
    assert fields["user"] == "alice"
    assert fields["method"] == "GET"
    assert fields["path"] == "/items"
    assert fields["query"] == "page=2"
    assert fields["protocol"] == "HTTP/1.1"
    assert fields["status"] == 404
    assert fields["bytes"] == 17
    assert fields["duration_us"] == 2345
    assert fields["referer"] == "https://example.com/start"
    assert fields["user_agent"] == "curl/8.5.0"
    assert fields["request_id"] == "req-42"


def test_json_access_line_says_null_for_what_the_request_did_not_have():
    scope = make_scope(client=None, headers=[(b"host", b"example.com")], query_string=b"")
    fields = record(scope, response_length=None)
    assert fields["remote_addr"] is None
    assert fields["user"] is None
    assert fields["referer"] is None
    assert fields["user_agent"] is None
    assert fields["request_id"] is None  # request ids are off
    assert fields["query"] == ""  # like Gunicorn's %(q)s: empty, not absent
    assert fields["bytes"] == 0


def test_json_request_id_is_null_when_request_ids_are_off_even_if_the_client_sent_one():
    assert record(request_id_header="")["request_id"] is None


def test_json_request_id_reads_the_configured_header_whatever_its_case():
    scope = make_scope(headers=[(b"host", b"h"), (b"x-correlation-id", b"abc")])
    assert record(scope, request_id_header="X-Correlation-ID")["request_id"] == "abc"


def test_json_user_is_null_for_a_non_basic_or_malformed_authorization():
    for value in (b"Bearer abc", b"Basic !!!", b"Basic " + b"bm9jb2xvbg=="):  # the last decodes without a colon
        scope = make_scope(headers=[(b"host", b"h"), (b"authorization", value)])
        assert record(scope)["user"] is None


def test_json_method_and_protocol_beyond_the_common_ones():
    fields = record(make_scope(method="PROPFIND", http_version="2"))
    assert (fields["method"], fields["protocol"]) == ("PROPFIND", "HTTP/2")


def test_json_websocket_scope_without_method_says_get():
    scope = make_scope(type="websocket")
    del scope["method"]
    assert record(scope)["method"] == "GET"


def test_json_path_falls_back_to_path_when_raw_path_is_absent():
    scope = make_scope(path="/café")
    del scope["raw_path"]
    assert record(scope)["path"] == "/café"


def test_json_status_is_a_number_even_for_an_int_enum():
    class Status(IntEnum):
        CREATED = 201

    assert record(status=Status.CREATED)["status"] == 201


def test_json_escapes_keep_one_line_and_round_trip_the_text():
    hostile = b'evil"\\\n\r\t\x00\x1b[31m \xe2\x80\xae \xe2\x80\xa8 \xc3\xa9'
    scope = make_scope(headers=[(b"host", b"h"), (b"user-agent", hostile)], raw_path=b'/a"b\\c')
    fields = record(scope)
    assert fields["user_agent"] == hostile.decode("utf-8")
    assert fields["path"] == '/a"b\\c'


def test_json_bytes_that_are_not_utf8_appear_as_backslash_x_escapes():
    scope = make_scope(headers=[(b"host", b"h"), (b"referer", b"/\xff\xfe")], raw_path=b"/\xc3")
    fields = record(scope)
    assert fields["referer"] == "/\\xff\\xfe"
    assert fields["path"] == "/\\xc3"


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=300), path=st.binary(min_size=1, max_size=100))
def test_json_line_is_valid_ascii_json_on_one_line_for_any_request_bytes(value: bytes, path: bytes):
    scope = make_scope(headers=[(b"host", b"h"), (b"user-agent", value), (b"x-request-id", value)], raw_path=path)
    fields = record(scope, request_id_header="x-request-id")
    assert fields["user_agent"] == fields["request_id"]


def test_json_format_headers_become_request_and_response_header_objects():
    fields = record(
        make_scope(headers=[(b"host", b"h"), (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")]),
        access_log_format='%(h)s %({X-Forwarded-For}i)s %({x-missing}i)s %({Content-Type}o)s "%(r)s"',
        response_headers=[(b"Content-Type", b"text/html"), (b"content-type", b"charset=utf-8")],
    )
    assert fields["request_headers"] == {"x-forwarded-for": "10.0.0.1,10.0.0.2", "x-missing": None}
    assert fields["response_headers"] == {"content-type": "text/html,charset=utf-8"}
    assert list(fields)[: len(JSON_ACCESS_FIELDS)] == list(JSON_ACCESS_FIELDS)


def test_json_format_without_header_atoms_adds_no_header_objects():
    fields = record(access_log_format='%(h)s "%(r)s" %(s)s %({x}e)s')
    assert "request_headers" not in fields and "response_headers" not in fields


def test_json_header_names_with_a_percent_or_quote_stay_valid_keys():
    fields = record(access_log_format='%({x-100%}i)s %({a"b}i)s')
    assert fields["request_headers"] == {"x-100%": None, 'a"b': None}


def test_json_header_atom_named_twice_is_one_key():
    fields = record(access_log_format="%({referer}i)s %({Referer}i)s")
    assert fields["request_headers"] == {"referer": "https://example.com/start"}


def test_json_time_is_iso_8601_with_milliseconds_and_the_utc_offset(timezone_and_clock):
    timezone_and_clock("UTC0", EPOCH + 0.25)
    assert record()["time"] == "2026-11-22T10:00:00.250+00:00"
    timezone_and_clock("IST-5:30", EPOCH + 59.999)
    assert record()["time"] == "2026-11-22T15:30:59.999+05:30"
    timezone_and_clock("NST3:30", EPOCH + 1.5)
    assert record()["time"] == "2026-11-22T06:30:01.500-03:30"


def test_json_time_moves_with_the_clock_across_milliseconds_and_seconds(timezone_and_clock):
    timezone_and_clock("UTC0", EPOCH + 0.001)
    render = compile_json_access_log()
    times = []
    for clock in (EPOCH + 0.001, EPOCH + 0.0015, EPOCH + 0.002, EPOCH + 1.0):
        corral_logging._wall_clock = lambda clock=clock: clock  # restored by the fixture's monkeypatch
        times.append(json.loads(render(make_scope(), 200, [], 0, 0))["time"])
    assert times == [
        "2026-11-22T10:00:00.001+00:00",
        "2026-11-22T10:00:00.001+00:00",
        "2026-11-22T10:00:00.002+00:00",
        "2026-11-22T10:00:01.000+00:00",
    ]


def test_json_access_log_ignores_the_text_atoms_of_access_log_format():
    # A format only the text log can use (a lone %) does not stop the JSON log: it reads only header atoms.
    assert list(record(access_log_format="100% %(h)s")) == list(JSON_ACCESS_FIELDS)


def test_json_access_log_open_writes_json_lines_to_its_file(tmp_path: Path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "", log_format="json", request_id_header="X-Request-ID")
    assert access_log is not None and not isinstance(access_log, LoggedAccessLog)
    access_log.log(make_scope(), 200, [], 5, 1000)
    access_log.log(make_scope(method="POST"), 201, [], 0, 2000)
    access_log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["method"], line["status"], line["request_id"]) for line in lines] == [
        ("GET", 200, "req-42"),
        ("POST", 201, "req-42"),
    ]


# --------------------------------------------------------------------------------- request_id text atom


def test_text_request_id_atom_is_the_request_id_header_when_on_and_dash_when_off():
    line_format = "%(s)s %(request_id)s"
    on = compile_access_log_format(line_format, request_id_header="X-Request-ID")
    off = compile_access_log_format(line_format)
    assert on(make_scope(), 200, [], 0, 0) == "200 req-42"
    assert off(make_scope(), 200, [], 0, 0) == "200 -"
    assert on(make_scope(headers=[(b"host", b"h")]), 200, [], 0, 0) == "200 -"


def test_text_request_id_atom_is_escaped_like_any_request_text():
    render = compile_access_log_format("%(request_id)s", request_id_header="x-request-id")
    assert render(make_scope(headers=[(b"x-request-id", b'a"b\n')]), 200, [], 0, 0) == 'a\\"b\\x0A'


# ------------------------------------------------------------------------------------- logged access log


@pytest.fixture
def access_logger():
    """The "corral.access" logger with a recording handler, as a logging config would leave it."""
    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("corral.access")
    handler = Recorder()
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(saved_level)


def test_configured_access_logger_gets_each_line_even_without_accesslog(access_logger):
    access_log = AccessLog.open(None, "%(s)s 100%% %(m)s")
    assert isinstance(access_log, LoggedAccessLog)
    access_log.log(make_scope(), 200, [], 0, 0)
    access_log.flush()
    access_log.reopen()
    access_log.close()
    assert [record.getMessage() for record in access_logger] == ["200 100% GET"]
    assert access_logger[0].levelno == logging.INFO


def test_configured_access_logger_gets_json_lines_in_json_format(access_logger):
    access_log = AccessLog.open("-", "", log_format="json")
    assert access_log is not None
    access_log.log(make_scope(), 204, [], None, 0)
    assert json.loads(access_logger[0].getMessage())["status"] == 204


def test_without_a_configured_access_logger_no_accesslog_means_no_access_log():
    assert AccessLog.open(None, "%(s)s", log_format="json") is None
    assert AccessLog.open("", "%(s)s") is None


# -------------------------------------------------------------------------------------------- error log


def make_record(message: str = "hello %s", args: tuple = ("world",), exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("corral.error", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_error_record_has_time_level_logger_pid_and_message():
    fields = json.loads(JsonFormatter().format(make_record()))
    assert list(fields) == ["time", "level", "logger", "pid", "message"]
    assert fields["level"] == "WARNING"
    assert fields["logger"] == "corral.error"
    assert fields["pid"] == os.getpid()
    assert fields["message"] == "hello world"


def test_json_error_record_time_is_iso_8601_with_offset(timezone_and_clock):
    timezone_and_clock("IST-5:30", EPOCH)
    record_ = make_record()
    record_.created = EPOCH + 0.125
    assert json.loads(JsonFormatter().format(record_))["time"] == "2026-11-22T15:30:00.125+05:30"


def test_json_error_record_carries_the_exception_text_on_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        line = JsonFormatter().format(make_record("failed", (), sys.exc_info()))
    assert "\n" not in line and line.isascii()
    fields = json.loads(line)
    assert fields["message"] == "failed"
    assert fields["exception"].startswith("Traceback (most recent call last):")
    assert fields["exception"].endswith("ValueError: bad\nthing")


def test_json_error_record_escapes_what_a_message_carries():
    fields = json.loads(JsonFormatter().format(make_record("path %s", ("/\u202e\n\x1b",))))
    assert fields["message"] == "path /\u202e\n\x1b"


def test_json_error_record_with_stack_info_has_a_stack_field():
    record_ = make_record()
    record_.stack_info = "Stack (most recent call last):\n  here"
    assert json.loads(JsonFormatter().format(record_))["stack"].endswith("here")


@pytest.fixture
def fresh_error_log():
    yield
    logger = logging.getLogger("corral.error")
    for handler in list(corral_logging._error_handlers):
        logger.removeHandler(handler)
        handler.close()
    corral_logging._error_handlers.clear()


def test_setup_error_log_in_json_writes_one_object_per_line(tmp_path: Path, fresh_error_log):
    path = tmp_path / "error.log"
    logger = setup_error_log(str(path), "info", "json")
    logger.info("Booting %s", "worker")
    logger.debug("not at info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("Worker crashed")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("INFO", "Booting worker"),
        ("ERROR", "Worker crashed"),
    ]
    assert "RuntimeError: boom" in lines[1]["exception"]


def test_setup_error_log_refuses_an_unknown_log_format(fresh_error_log):
    with pytest.raises(ValueError, match="log_format"):
        setup_error_log("-", "info", "xml")
