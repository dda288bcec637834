"""The PROXY protocol on a real server: through a real HAProxy (deploy/haproxy/haproxy.cfg, with `send-proxy-v2`
and `send-proxy`), and from raw sockets for what a proxy would never send.

HAProxy connects to corral from 127.0.0.2, the only address in `proxy_allow_ips`; the test's own sockets
connect from 127.0.0.1 (untrusted) or bind 127.0.0.2 (trusted) as each test needs.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.echo import decode_echo
from tests.integration.conftest import (
    REPO_ROOT,
    Server,
    ServerFactory,
    free_port,
    parse_responses,
    read_to_eof,
    wait_until,
)

HAPROXY_TEMPLATE = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
TRUSTED = "127.0.0.2"
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
REQUEST = b"GET /whoami HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def _substitute(text: str, pattern: str, replacement: str) -> str:
    new, found = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    assert found == 1, f"{HAPROXY_TEMPLATE.name}: expected one line matching {pattern!r}, found {found}"
    return new


def render_haproxy(*, listen_port: int, corral_port: int, send_proxy: str) -> str:
    """The deploy example with this test's ports, HAProxy's source address, faster checks, and v1 or v2."""
    text = HAPROXY_TEMPLATE.read_text()
    text = _substitute(text, r"^    bind \S+", f"    bind 127.0.0.1:{listen_port}")
    text = _substitute(text, r"^    server corral1 \S+", f"    server corral1 127.0.0.1:{corral_port} source {TRUSTED}")
    text = _substitute(
        text, r"\bsend-proxy-v2 check check-send-proxy inter 2s", f"{send_proxy} check check-send-proxy inter 100ms"
    )
    return text


@contextlib.contextmanager
def haproxy(tmp_path: Path, corral_port: int, send_proxy: str) -> Iterator[int]:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("HAProxy is not installed (Debian package haproxy: scripts/install-system-packages)")
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy(listen_port=port, corral_port=corral_port, send_proxy=send_proxy))
    log = tmp_path / "haproxy.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_until(lambda: _accepts(port) or proc.poll() is not None, 10), log.read_text()
        assert proc.poll() is None, log.read_text()
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def ask(port: int, data: bytes = REQUEST, source: str | None = None) -> tuple[bytes, tuple[str, int]]:
    """Send `data` on a new connection (from `source` if given); what came back before EOF, and our address."""
    sock = socket.socket()
    with sock:
        sock.settimeout(5)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        received, _ = read_to_eof(sock)
        return received, sock.getsockname()


def client_seen(answer: bytes) -> list:
    [response] = parse_responses(answer)
    assert response.status == 200, answer
    return decode_echo(response.body)["client"]


def refusal(answer: bytes) -> int:
    """The status of the one response before the close, which must say Connection: close."""
    [response] = parse_responses(answer)
    assert response.closes, answer
    return response.status


@pytest.fixture
def corral(serve: ServerFactory) -> Server:
    return serve("tests.apps.echo:app", "--proxy-protocol", "--proxy-allow-from", TRUSTED, "--access-logfile", "-")


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_through_haproxy_the_app_sees_the_real_client_and_health_checks_pass(
    corral,
    tmp_path: Path,
    send_proxy: str,
) -> None:
    with haproxy(tmp_path, corral.port, send_proxy) as port:
        # HAProxy's health checks (v2 LOCAL with check-send-proxy, or v1 from HAProxy itself) reach the app
        # from HAProxy's own address: the server is up, and requests are answered.
        assert wait_until(lambda: f"{TRUSTED} - - [" in corral.stdout_text(), 10), corral.stdout_text()
        for _ in range(3):
            answer, (host, client_port) = ask(port)
            # Our own address and port, not HAProxy's connection from 127.0.0.2.
            assert client_seen(answer) == [host, client_port]
    # The access log (flushed once a second) shows the real client too.
    whoami = re.compile(r'^127\.0\.0\.1 - - \[.*"GET /whoami HTTP/1\.1" 200', re.MULTILINE)
    assert wait_until(lambda: whoami.search(corral.stdout_text()), 10), corral.stdout_text()
    assert "Closing a connection" not in corral.stderr_text()


def test_a_proxy_header_from_a_peer_not_in_proxy_allow_ips_closes_the_connection(corral) -> None:
    answer, _ = ask(corral.port, b"PROXY TCP4 203.0.113.7 127.0.0.1 1234 80\r\n" + REQUEST)
    assert refusal(answer) == 403
    assert corral.wait_for_stderr("not in proxy_allow_ips"), corral.stderr_text()
    # The same untrusted peer without a header is plain HTTP, with its own address.
    answer, (host, client_port) = ask(corral.port)
    assert client_seen(answer) == [host, client_port]


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n",
        b"PROXY TCP4 garbage\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c",
    ],
)
def test_a_malformed_header_from_a_trusted_peer_closes_the_connection(corral, header: bytes) -> None:
    answer, _ = ask(corral.port, header + bytes(12) + REQUEST, source=TRUSTED)
    assert refusal(answer) == 400
    assert corral.wait_for_stderr(f"Closing a connection from {TRUSTED}:"), corral.stderr_text()


def test_a_trusted_peer_must_send_a_header(corral) -> None:
    answer, _ = ask(corral.port, REQUEST, source=TRUSTED)
    assert refusal(answer) == 400
    assert corral.wait_for_stderr("no PROXY protocol header"), corral.stderr_text()


def test_a_v2_local_header_keeps_the_connection_address(corral) -> None:
    answer, (host, client_port) = ask(corral.port, V2_LOCAL + REQUEST, source=TRUSTED)
    assert client_seen(answer) == [host, client_port]


def test_refused_headers_are_counted_in_the_metrics(serve: ServerFactory) -> None:
    admin_port = free_port()
    server = serve(
        "tests.apps.echo:app", "--proxy-protocol", "--proxy-allow-from", TRUSTED,
        "--admin-bind", f"127.0.0.1:{admin_port}",
    )  # fmt: skip

    def refusals() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        match = re.search(r'^corral_http_responses_total\{status_class="4xx"\} (\S+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    assert wait_until(lambda: _accepts(admin_port), 10)
    before = refusals()
    ask(server.port, b"PROXY TCP4 garbage\r\n", source=TRUSTED)
    ask(server.port, b"PROXY UNKNOWN\r\n" + REQUEST)  # untrusted peer
    assert wait_until(lambda: refusals() >= before + 2, 10), server.stderr_text()


def test_proxy_protocol_with_tls_stops_corral_with_one_line(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve(
        "tests.apps.echo:app", "--proxy-protocol", "--certfile", str(tmp_path / "cert.pem"), wait_ready=False
    )
    assert server.wait(15) == 2
    lines = server.stderr_text().strip().splitlines()
    assert len(lines) == 1 and "proxy_protocol: cannot be combined with TLS" in lines[0], lines


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_client_from_a_header_reaches_the_app_on_either_event_loop(serve: ServerFactory, loop: str) -> None:
    server = serve("tests.apps.echo:app", "--proxy-protocol", "--proxy-allow-from", TRUSTED, "--loop", loop)
    # The header and the request in one segment, as a proxy sends them when the client spoke first.
    answer, _ = ask(server.port, b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n" + REQUEST, source=TRUSTED)
    assert client_seen(answer) == ["2001:db8::7", 51000]


def test_a_websocket_session_after_a_header_sees_the_real_client(serve: ServerFactory) -> None:
    from websockets.sync.client import connect

    server = serve("tests.apps.websocket_apps:app", "--proxy-protocol", "--proxy-allow-from", TRUSTED)
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((TRUSTED, 0))
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n")
    with connect(f"ws://127.0.0.1:{server.port}/scope", sock=sock, open_timeout=5, close_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["client"] == ["203.0.113.7", 51000]


def test_the_haproxy_deploy_example_is_a_valid_haproxy_config() -> None:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("HAProxy is not installed (Debian package haproxy: scripts/install-system-packages)")
    checked = subprocess.run([binary, "-c", "-f", str(HAPROXY_TEMPLATE)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
