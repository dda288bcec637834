"""The compiled access log (every atom, escaping, buffering and output) and the error log's setup."""

from __future__ import annotations

import base64
import calendar
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral.logging as corral_logging
from corral.logging import (
    DEFAULT_ACCESS_LOG_FORMAT,
    AccessLog,
    compile_access_log_format,
    reopen_error_log,
    setup_error_log,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# 2026-11-22 10:00:00 UTC
EPOCH = calendar.timegm((2026, 11, 22, 10, 0, 0, 0, 0, 0))
GUIDE_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(D)sμs'


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
        ],
        "client": ("203.0.113.7", 51234),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(overrides)
    return scope


def render(
    access_log_format: str,
    scope: dict | None = None,
    status: int = 200,
    response_headers: list | None = None,
    response_length: int | None = 1234,
    request_time_ns: int = 1_500_000,
) -> str:
    line = compile_access_log_format(access_log_format)(
        make_scope() if scope is None else scope,
        status,
        response_headers or [],
        response_length,
        request_time_ns,
    )
    assert "\n" not in line
    return line


def with_header(name: bytes, value: bytes) -> dict:
    return make_scope(headers=[(b"host", b"example.com"), (name, value)])


class Untouchable(dict):
    """A scope or header list that fails the test if the compiled format reads it."""

    def __getitem__(self, key):
        raise AssertionError(f"the format read {key!r}")

    def get(self, key, default=None):
        raise AssertionError(f"the format read {key!r}")

    def __iter__(self):
        raise AssertionError("the format iterated over headers")


@pytest.fixture
def frozen_utc(monkeypatch):
    """Wall clock at EPOCH + 0.25 s in UTC; returns a setter for the clock."""
    saved_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    now = [EPOCH + 0.25]
    monkeypatch.setattr(corral_logging, "_wall_clock", lambda: now[0])
    monkeypatch.setattr(corral_logging, "_clf_second", -1)

    def set_clock(value: float) -> None:
        now[0] = value

    yield set_clock
    if saved_tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved_tz
    time.tzset()


# ------------------------------------------------------------------------------------------- atoms


def test_h_is_the_client_address_or_dash():
    assert render("%(h)s") == "203.0.113.7"
    assert render("%(h)s", make_scope(client=None)) == "-"
    assert render("%(h)s", make_scope(client=("2001:db8::1", 1))) == "2001:db8::1"


def test_l_is_always_dash():
    assert render("%(l)s") == "-"


def test_u_is_the_basic_auth_user():
    assert render("%(u)s", with_header(b"authorization", b"Basic YWxpY2U6c2VjcmV0")) == "alice"
    assert render("%(u)s", with_header(b"authorization", b"basic YWxpY2U6c2VjcmV0")) == "alice"
    assert render("%(u)s", with_header(b"authorization", b"Basic YWxpY2U6")) == "alice"


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer abc.def",
        b"Basic !!!notbase64",
        b"Basic YWxpY2U=",  # "alice" without a colon
        b"Basic OnNlY3JldA==",  # ":secret", empty user
        b"Basic",
        b"",
    ],
)
def test_u_is_dash_without_a_usable_basic_credential(authorization):
    assert render("%(u)s", with_header(b"authorization", authorization)) == "-"


def test_u_is_dash_without_an_authorization_header():
    assert render("%(u)s") == "-"


def test_u_escapes_and_keeps_unicode_user_names():
    credentials = b"Basic " + base64.b64encode("jösé\n\x1b[31m:pw".encode())
    assert render("%(u)s", with_header(b"authorization", credentials)) == "jösé\\x0A\\x1B[31m"


def test_t_is_common_log_format_time(frozen_utc):
    assert render("%(t)s") == "[22/Nov/2026:10:00:00 +0000]"


def test_t_shows_the_local_utc_offset(frozen_utc):
    os.environ["TZ"] = "XST-05:30"  # POSIX: five and a half hours east of UTC, no tz database needed
    time.tzset()
    assert render("%(t)s") == "[22/Nov/2026:15:30:00 +0530]"
    os.environ["TZ"] = "YST+03"
    time.tzset()
    corral_logging._clf_second = -1
    assert render("%(t)s") == "[22/Nov/2026:07:00:00 -0300]"


def test_t_is_formatted_once_per_second(frozen_utc, monkeypatch):
    formatted = []
    original = corral_logging._format_clf
    monkeypatch.setattr(corral_logging, "_format_clf", lambda second: formatted.append(second) or original(second))
    compiled = compile_access_log_format("%(t)s")
    first = compiled(make_scope(), 200, [], 0, 0)
    frozen_utc(EPOCH + 0.75)
    assert compiled(make_scope(), 200, [], 0, 0) is first
    frozen_utc(EPOCH + 1.01)
    assert compiled(make_scope(), 200, [], 0, 0) == "[22/Nov/2026:10:00:01 +0000]"
    assert formatted == [EPOCH, EPOCH + 1]


def test_t_month_names_do_not_follow_the_locale(frozen_utc):
    assert [corral_logging._format_clf(EPOCH - 86400 * 30 * i)[4:7] for i in range(0, 12, 3)] == [
        "Nov",
        "Aug",
        "May",
        "Feb",
    ]


def test_r_is_the_request_line():
    assert render("%(r)s") == "GET /items?page=2 HTTP/1.1"
    assert render("%(r)s", make_scope(query_string=b"")) == "GET /items HTTP/1.1"
    assert render("%(r)s", make_scope(method="POST", http_version="1.0")) == "POST /items?page=2 HTTP/1.0"


def test_r_and_u_use_the_raw_path_as_sent():
    scope = make_scope(path="/a b/é", raw_path=b"/a%20b/%C3%A9", query_string=b"")
    assert render("%(r)s %(U)s", scope) == "GET /a%20b/%C3%A9 HTTP/1.1 /a%20b/%C3%A9"


def test_r_falls_back_to_the_path_when_raw_path_is_none():
    assert render("%(r)s %(U)s", make_scope(raw_path=None, path="/é")) == "GET /é?page=2 HTTP/1.1 /é"


def test_websocket_scope_logs_its_get_handshake():
    scope = make_scope(type="websocket", scheme="ws")
    del scope["method"]
    assert render("%(m)s %(r)s", scope) == "GET GET /items?page=2 HTTP/1.1"


def test_m_u_q_h_atoms():
    assert render("%(m)s|%(U)s|%(q)s|%(H)s", make_scope(method="PATCH")) == "PATCH|/items|page=2|HTTP/1.1"
    assert render("%(H)s", make_scope(http_version="2")) == "HTTP/2"
    assert render("%(H)s", make_scope(http_version="1.0")) == "HTTP/1.0"


def test_q_is_empty_not_dash_without_a_query_like_gunicorn():
    assert render("[%(q)s]", make_scope(query_string=b"")) == "[]"


def test_status_and_length_atoms():
    assert render("%(s)s %(B)s %(b)s", status=404, response_length=17) == "404 17 17"
    assert render("%(s)s %(B)s %(b)s", status=204, response_length=0) == "204 0 0"
    assert render("%(s)s %(B)s %(b)s", status=500, response_length=None) == "500 0 -"


def test_f_and_a_are_referer_and_user_agent_or_dash():
    assert render('"%(f)s" "%(a)s"') == '"https://example.com/start" "curl/8.5.0"'
    assert render('"%(f)s" "%(a)s"', make_scope(headers=[])) == '"-" "-"'
    assert render('"%(a)s"', with_header(b"user-agent", b"")) == '""'


@pytest.mark.parametrize(
    ("nanoseconds", "expected"),
    [
        (0, "0 0 0 0.000000"),
        (1_500_000, "0 1500 1 0.001500"),
        (999, "0 0 0 0.000000"),
        (2_000_123_456, "2 2000123 2000 2.000123"),
        (61_999_999_999, "61 61999999 61999 61.999999"),
    ],
)
def test_request_time_atoms(nanoseconds, expected):
    assert render("%(T)s %(D)s %(M)s %(L)s", request_time_ns=nanoseconds) == expected


def test_p_is_the_process_id():
    assert render("%(p)s") == f"<{os.getpid()}>"


def test_p_is_the_childs_after_a_fork():
    compiled = compile_access_log_format("%(p)s")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what it renders, and leave at once
        try:
            os.write(write_end, compiled(make_scope(), 200, [], 0, 0).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read().decode() == f"<{pid}>"


def test_request_header_atoms_ignore_name_case_and_join_repeats():
    scope = make_scope(
        headers=[
            (b"x-request-id", b"abc-123"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-for", b"10.0.0.1"),
        ]
    )
    assert render("%({X-Request-ID}i)s %({x-forwarded-for}i)s", scope) == "abc-123 1.2.3.4,10.0.0.1"
    assert render("%({x-missing}i)s", scope) == "-"


def test_response_header_atoms_ignore_name_case():
    headers = [(b"Content-Type", b"text/plain"), (b"x-cache", b"HIT")]
    assert render("%({content-type}o)s %({X-Cache}o)s %({etag}o)s", response_headers=headers) == "text/plain HIT -"


def test_environment_atoms_and_unknown_atoms_are_dash():
    assert render("%({HOME}e)s %(zz)s %({x}z)s %(R)s %()s") == "- - - - -"


def test_header_atom_with_an_empty_name_is_dash():
    assert render("%({}i)s %({}o)s") == "- -"


# ---------------------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        (b"curl/8.5.0", "curl/8.5.0"),
        (b'a "quoted" agent', 'a \\"quoted\\" agent'),
        (b"back\\slash", "back\\\\slash"),
        (b"line\r\nX-Injected: yes", "line\\x0D\\x0AX-Injected: yes"),
        (b"tab\there", "tab\\x09here"),
        (b"nul\x00del\x7f", "nul\\x00del\\x7F"),
        (b"\x1b[31mred", "\\x1B[31mred"),
        ("Mozilla μ 日本 🦊".encode(), "Mozilla μ 日本 🦊"),
        (b"latin1 \xe9t\xe9", "latin1 \\xE9t\\xE9"),
        ("next\u0085line\u2028sep".encode(), "next\\x85line\\u2028sep"),
        ("bidi \u202egpj.exe".encode(), "bidi \\u202Egpj.exe"),
        ("tag \U000e0041".encode(), "tag \\U000E0041"),
    ],
)
def test_header_values_are_escaped_against_log_injection(value, logged):
    assert render("%(a)s", with_header(b"user-agent", value)) == logged


def test_path_and_query_are_escaped_too():
    scope = make_scope(raw_path=b'/a"b\xff', query_string=b"x=\x01")
    assert render("%(r)s|%(U)s|%(q)s", scope) == 'GET /a\\"b\\xFF?x=\\x01 HTTP/1.1|/a\\"b\\xFF|x=\\x01'


def test_escaping_is_the_same_for_repeated_and_long_values():
    long_value = b"\n" + b"a" * 5000
    for _ in range(3):
        assert render("%(a)s", with_header(b"user-agent", long_value)) == "\\x0A" + "a" * 5000
        assert render("%(a)s", with_header(b"user-agent", b"x\ny")) == "x\\x0Ay"


def test_response_header_values_are_escaped():
    assert render("%({location}o)s", response_headers=[(b"location", b"/x\r\ny")]) == "/x\\x0D\\x0Ay"


@settings(max_examples=300, deadline=None)
@given(agent=st.binary(max_size=60), path=st.binary(max_size=30), query=st.binary(max_size=30))
def test_any_request_bytes_give_one_printable_line_with_intact_quotes(agent, path, query):
    scope = make_scope(raw_path=b"/" + path, query_string=query, headers=[(b"user-agent", agent)])
    line = render('"%(r)s" "%(a)s"', scope)
    assert line.isprintable()
    fields = re.fullmatch(r'"((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"', line)
    assert fields is not None, line
    assert fields[1].startswith("GET /")


# ---------------------------------------------------------------------------------- the format itself


def test_gunicorn_default_format(frozen_utc):
    scope = make_scope(
        headers=[
            (b"host", b"example.com"),
            (b"authorization", b"Basic YWxpY2U6c2VjcmV0"),
            (b"referer", b"https://example.com/start"),
            (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
        ]
    )
    assert render(DEFAULT_ACCESS_LOG_FORMAT, scope, status=200, response_length=5120) == (
        '203.0.113.7 - alice [22/Nov/2026:10:00:00 +0000] "GET /items?page=2 HTTP/1.1" 200 5120 '
        '"https://example.com/start" "Mozilla/5.0 (X11; Linux x86_64)"'
    )


def test_gunicorn_default_format_for_a_bare_request(frozen_utc):
    scope = make_scope(headers=[], query_string=b"", client=None)
    assert render(DEFAULT_ACCESS_LOG_FORMAT, scope, status=500, response_length=None) == (
        '- - - [22/Nov/2026:10:00:00 +0000] "GET /items HTTP/1.1" 500 - "-" "-"'
    )


def test_deployment_guide_format_with_a_unicode_unit():
    assert render(GUIDE_FORMAT, request_time_ns=2_345_678) == '203.0.113.7 "GET /items?page=2 HTTP/1.1" 200 1234 2345μs'


def test_conversion_flags_and_percent_signs_work_like_python_formatting():
    assert render("[%(s)5s] [%(m)-6s] [%(D)06d] 100%%") == "[  200] [GET   ] [001500] 100%"
    assert render("%(l)5s|%({x}e)-3s|") == "    -|-  |"


@pytest.mark.parametrize(
    ("bad_format", "reason"),
    [
        ("50% off", "not a %"),
        ("%s", "not a %"),
        ("%(h)s 100%", "lone"),
        ("%(a)d", "cannot be rendered"),
        ("%(b)d", "cannot be rendered"),
        ("%(l)d", "cannot format"),
        ("%(h)", "lone"),
    ],
)
def test_format_errors_are_reported_when_compiling(bad_format, reason):
    with pytest.raises(ValueError, match=reason):
        compile_access_log_format(bad_format)


def test_format_with_only_status_reads_nothing_else():
    compiled = compile_access_log_format("%(s)s")
    assert compiled(Untouchable(), 418, Untouchable(), None, 0) == "418"


def test_format_without_header_atoms_never_walks_the_headers():
    compiled = compile_access_log_format(GUIDE_FORMAT)
    scope = make_scope(headers=Untouchable())
    assert compiled(scope, 200, Untouchable(), 10, 1000) == '203.0.113.7 "GET /items?page=2 HTTP/1.1" 200 10 1μs'


def test_default_format_never_walks_the_response_headers():
    compiled = compile_access_log_format(DEFAULT_ACCESS_LOG_FORMAT)
    assert compiled(make_scope(), 200, Untouchable(), 10, 1000).startswith("203.0.113.7 - - [")


def test_header_names_from_the_format_cannot_inject_code():
    hostile = "%({x' + open + '\\\"}i)s"
    assert render(hostile) == "-"
    scope = with_header(b"x' + open + '\\\"", b"value")
    assert render(hostile, scope) == "value"


# ------------------------------------------------------------------------------- buffering and output


def test_open_returns_none_when_the_access_log_is_off():
    assert AccessLog.open(None, DEFAULT_ACCESS_LOG_FORMAT) is None
    assert AccessLog.open("", DEFAULT_ACCESS_LOG_FORMAT) is None


def test_open_rejects_a_bad_format_before_opening_anything(tmp_path):
    with pytest.raises(ValueError):
        AccessLog.open(str(tmp_path / "access.log"), "%(a)d")
    assert not (tmp_path / "access.log").exists()


def test_lines_are_buffered_until_flush(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "%(s)s %(U)s")
    try:
        access_log.log(make_scope(), 200, [], 5, 1000)
        access_log.log(make_scope(raw_path=b"/other"), 404, [], 5, 1000)
        assert path.read_bytes() == b""
        access_log.flush()
        assert path.read_bytes() == b"200 /items\n404 /other\n"
        access_log.flush()
        assert path.read_bytes() == b"200 /items\n404 /other\n"
    finally:
        access_log.close()


def test_file_is_appended_to_and_written_as_utf8(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"earlier line\n")
    access_log = AccessLog.open(str(path), GUIDE_FORMAT)
    access_log.log(make_scope(), 200, [], 1234, 2_345_678)
    access_log.close()
    assert path.read_text("utf-8") == 'earlier line\n203.0.113.7 "GET /items?page=2 HTTP/1.1" 200 1234 2345μs\n'


def test_a_full_buffer_is_flushed_without_waiting(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "%({x-pad}i)s")
    padding = b"p" * 1000
    scope = with_header(b"x-pad", padding)
    lines_per_flush = corral_logging.FLUSH_THRESHOLD // len(padding) + 1
    try:
        for _ in range(lines_per_flush - 1):
            access_log.log(scope, 200, [], 0, 0)
        assert path.stat().st_size == 0
        access_log.log(scope, 200, [], 0, 0)
        assert path.stat().st_size == lines_per_flush * (len(padding) + 1)
    finally:
        access_log.close()


def test_close_flushes_and_is_idempotent(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "%(s)s")
    access_log.log(make_scope(), 201, [], 0, 0)
    access_log.close()
    access_log.close()
    assert path.read_bytes() == b"201\n"


def test_reopen_writes_to_a_new_file_after_logrotate_moved_the_old_one(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "%(s)s")
    try:
        access_log.log(make_scope(), 200, [], 0, 0)
        path.rename(tmp_path / "access.log.1")
        access_log.log(make_scope(), 201, [], 0, 0)
        access_log.reopen()
        access_log.log(make_scope(), 202, [], 0, 0)
        access_log.flush()
    finally:
        access_log.close()
    assert (tmp_path / "access.log.1").read_bytes() == b"200\n201\n"
    assert path.read_bytes() == b"202\n"


def test_writes_to_a_pipe_are_whole_lines_of_at_most_pipe_buf(monkeypatch):
    read_end, write_end = os.pipe()
    writes = []
    real_write = os.write
    monkeypatch.setattr(corral_logging.os, "write", lambda fd, data: writes.append(bytes(data)) or real_write(fd, data))
    access_log = AccessLog(compile_access_log_format("%(s)s %({x-pad}i)s"), write_end)
    lines = [b"200 " + bytes([97 + i % 26]) * (30 + i * 7 % 300) for i in range(150)]
    long_line = b"200 " + b"L" * (corral_logging._PIPE_BUF + 100)
    try:
        for line in [*lines[:75], long_line, *lines[75:]]:
            access_log.log(with_header(b"x-pad", line[4:]), 200, [], 0, 0)
        access_log.flush()
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        received = reader.read()
    assert received == b"\n".join([*lines[:75], long_line, *lines[75:]]) + b"\n"
    assert len(writes) > 1
    assert all(chunk.endswith(b"\n") for chunk in writes)
    assert all(len(chunk) <= corral_logging._PIPE_BUF for chunk in writes if long_line not in chunk)
    assert [chunk for chunk in writes if long_line in chunk] == [long_line + b"\n"]


def test_a_full_non_blocking_pipe_keeps_lines_for_the_next_flush():
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        filled = 0
        while filled < 16 * 1024 * 1024:  # bounded: a pipe holds far less
            try:
                filled += os.write(write_end, b"x" * 65536)
            except BlockingIOError:
                break
        access_log = AccessLog(compile_access_log_format("%(s)s"), write_end)
        access_log.log(make_scope(), 200, [], 0, 0)
        access_log.flush()  # must not raise
        assert access_log.dropped_bytes == 0
        drained = 0
        while drained < filled:
            drained += len(os.read(read_end, filled - drained))
        access_log.flush()
        assert os.read(read_end, 100) == b"200\n"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_closed_reader_drops_lines_and_warns_once(caplog):
    read_end, write_end = os.pipe()
    os.close(read_end)
    access_log = AccessLog(compile_access_log_format("%(s)s"), write_end)
    try:
        with caplog.at_level(logging.WARNING, logger="corral.error"):
            for _ in range(3):
                access_log.log(make_scope(), 200, [], 0, 0)
                access_log.flush()
        assert access_log.dropped_bytes == 12
        assert len([record for record in caplog.records if "access log write failed" in record.message]) == 1
    finally:
        os.close(write_end)


def test_a_forked_child_does_not_write_its_parents_buffered_lines(tmp_path):
    path = tmp_path / "access.log"
    access_log = AccessLog.open(str(path), "%(s)s")
    access_log.log(make_scope(), 200, [], 0, 0)
    pid = os.fork()
    if pid == 0:  # child: log its own line and leave at once
        try:
            access_log.log(make_scope(), 299, [], 0, 0)
            access_log.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    access_log.close()
    assert path.read_bytes() == b"299\n200\n"


def test_dash_writes_to_stdout_when_stdout_is_a_pipe():
    program = textwrap.dedent(
        """
        from corral.logging import AccessLog
        access_log = AccessLog.open("-", '%(h)s "%(r)s" %(s)s %(b)s %(D)sμs')
        scope = {"method": "GET", "raw_path": b"/", "query_string": b"", "http_version": "1.1",
                 "client": ("127.0.0.1", 1)}
        for status in range(200, 1200):
            access_log.log(scope, status, [], 2, 3000)
        access_log.flush()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    lines = result.stdout.decode("utf-8").splitlines()
    assert len(lines) == 1000
    assert lines[0] == '127.0.0.1 "GET / HTTP/1.1" 200 2 3μs'
    assert lines[-1] == '127.0.0.1 "GET / HTTP/1.1" 1199 2 3μs'


# ------------------------------------------------------------------------------------------ error log

ERROR_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] \[(\w+)\] (.*)")


@pytest.fixture
def error_logger():
    yield
    logger = logging.getLogger("corral.error")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    corral_logging._error_handlers.clear()


def test_error_log_line_format_matches_gunicorn(tmp_path, error_logger):
    path = tmp_path / "error.log"
    logger = setup_error_log(str(path), "info")
    assert logger.name == "corral.error"
    logger.info("Listening at: %s", "http://127.0.0.1:8000")
    line = path.read_text().splitlines()[0]
    match = ERROR_LINE.fullmatch(line)
    assert match, line
    assert match.groups() == (str(os.getpid()), "INFO", "Listening at: http://127.0.0.1:8000")


def test_error_log_appends_and_honours_the_level(tmp_path, error_logger):
    path = tmp_path / "error.log"
    path.write_text("old line\n")
    logger = setup_error_log(str(path), "WARNING")
    logger.info("hidden")
    logger.warning("shown")
    lines = path.read_text().splitlines()
    assert lines[0] == "old line"
    assert len(lines) == 2
    assert lines[1].endswith("[WARNING] shown")


def test_error_log_dash_is_stderr(capsys, error_logger):
    logger = setup_error_log("-", "debug")
    logger.debug("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ERROR_LINE.fullmatch(captured.err.strip()).group(3) == "to stderr"


def test_error_log_setup_again_replaces_the_handler(tmp_path, error_logger):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    setup_error_log(str(first), "info")
    logger = setup_error_log(str(second), "info")
    logger.info("once")
    assert first.read_text() == ""
    assert len(second.read_text().splitlines()) == 1


def test_error_log_rejects_an_unknown_level(error_logger):
    with pytest.raises(ValueError, match="loglevel"):
        setup_error_log("-", "verbose")


def test_error_log_reopen_after_logrotate(tmp_path, error_logger):
    path = tmp_path / "error.log"
    logger = setup_error_log(str(path), "info")
    logger.info("before")
    path.rename(tmp_path / "error.log.1")
    reopen_error_log()
    logger.info("after")
    assert (tmp_path / "error.log.1").read_text().endswith("before\n")
    assert path.read_text().endswith("after\n")
