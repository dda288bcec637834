"""File responses served by real corral processes: WSGI's wsgi.file_wrapper (bare and through Flask's send_file)
and ASGI's http.response.zerocopysend, with sendfile() on plain connections and read-and-written blocks with
--no-sendfile and over TLS. The bytes arrive exact in every framing; a slow reader holds neither an app thread
nor memory; a client that leaves midway costs nothing more than its connection; the file is closed after."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.integration.conftest import (
    READ_TIMEOUT,
    Conn,
    Server,
    ServerFactory,
    child_pids,
    wait_until,
)

WSGI = "tests.apps.file_apps:wsgi_files"
ASGI = "tests.apps.file_apps:asgi_files"
FLASK = "tests.apps.file_apps:flask_app"
FILE_SIZE = 6 * 1024 * 1024 + 17  # several MiB, and not a multiple of any block size
BIG_FILE_SIZE = 48 * 1024 * 1024  # for the slow reader: far more than any buffer on the way


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    content = os.urandom(FILE_SIZE)
    path = tmp_path_factory.mktemp("files") / "data.bin"
    path.write_bytes(content)
    return path, content


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "big.bin"
    with path.open("wb") as out:
        block = os.urandom(1024 * 1024)
        for _ in range(BIG_FILE_SIZE // len(block)):
            out.write(block)
    return path


@pytest.fixture(scope="module")
def wsgi_server(serve_module: ServerFactory) -> Server:
    # -k sync: one app thread, so a download that held it would keep every other request waiting.
    return serve_module(WSGI, "-k", "sync", "--access-logfile", "-", "--access-logformat", "%(U)s %(s)s %(B)s")


@pytest.fixture(scope="module")
def asgi_server(serve_module: ServerFactory) -> Server:
    return serve_module(ASGI)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http


def get(client: httpx.Client, server: Server, route: str, path: Path, **params: str | int) -> httpx.Response:
    response = client.get(server.url + route, params={"path": str(path), **params})
    assert response.status_code == 200, response.text[:300]
    return response


def worker_rss_kib(server: Server) -> int:
    (worker,) = child_pids(server.proc.pid)
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


# ------------------------------------------------------------------------------------------------ WSGI


def test_flask_send_file_of_a_multi_mib_file_arrives_byte_exact(
    serve_module: ServerFactory, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    response = get(client, serve_module(FLASK), "/send", path)
    assert response.headers["content-length"] == str(FILE_SIZE)
    assert response.content == content


@pytest.mark.parametrize(
    ("args", "closing_thread"),
    [(("-k", "sync"), "MainThread"), (("-k", "gthread", "--threads", "2"), "corral-wsgi-")],
    ids=["sync-on-the-loop", "gthread-in-an-app-thread"],
)
def test_file_wrapper_response_arrives_byte_exact_and_its_file_is_closed_where_the_app_runs(
    serve_module: ServerFactory,
    client: httpx.Client,
    data: tuple[Path, bytes],
    tmp_path: Path,
    args: tuple[str, ...],
    closing_thread: str,
) -> None:
    path, content = data
    mark = tmp_path / "closed"
    response = get(client, serve_module(WSGI, *args), "/wrapper", path, mark=str(mark))
    assert response.headers["content-length"] == str(FILE_SIZE)
    assert response.content == content
    assert wait_until(lambda: mark.exists() and mark.read_text(), 10)
    # The app's close() runs where its other code runs: with a pool, never on the event loop.
    assert mark.read_text().startswith(closing_thread)


def test_file_wrapper_bytes_are_counted_in_the_access_log(
    wsgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    get(client, wsgi_server, "/wrapper", data[0])
    assert wait_until(lambda: f"/wrapper 200 {FILE_SIZE}" in wsgi_server.stdout_text(), 10)


def test_file_wrapper_without_a_content_length_gets_the_files(
    wsgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    response = get(client, wsgi_server, "/no-length", path)
    assert response.headers["content-length"] == str(FILE_SIZE)
    assert response.content == content


def test_file_wrapper_sends_no_more_than_the_declared_content_length(
    wsgi_server: Server, data: tuple[Path, bytes]
) -> None:
    path, content = data
    with Conn(wsgi_server.port) as conn:
        for _ in range(2):  # the connection stays usable: nothing past the length was sent
            conn.send(f"GET /short?length=1000&path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = conn.read_response()
            assert response.body == content[:1000]
            assert not response.closes


def test_file_wrapper_starts_at_the_files_position(
    wsgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    assert get(client, wsgi_server, "/from", path, offset=12345).content == content[12345:]


def test_file_wrapper_after_written_bytes_is_sent_chunked(
    wsgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    response = get(client, wsgi_server, "/chunked", path)
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"before the file;" + content


def test_head_of_a_file_gives_its_length_and_no_body(wsgi_server: Server, data: tuple[Path, bytes]) -> None:
    path, content = data
    with Conn(wsgi_server.port) as conn:
        conn.send(f"HEAD /no-length?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = conn.read_response("HEAD")
        assert head.header("content-length") == str(FILE_SIZE).encode()
        assert head.body == b""
        conn.send(f"GET /short?length=10&path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert conn.read_response().body == content[:10]  # nothing of the file came after the HEAD's head


# ------------------------------------------------------------------------------------------------ ASGI


def test_asgi_zerocopysend_of_a_whole_file_arrives_byte_exact(
    asgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    response = get(client, asgi_server, "/whole", path)
    assert response.headers["content-length"] == str(FILE_SIZE)
    assert response.content == content


def test_asgi_zerocopysend_ranges_between_body_parts_are_sent_chunked(
    asgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    response = get(client, asgi_server, "/parts", path)
    assert response.headers["transfer-encoding"] == "chunked"
    half = FILE_SIZE // 2
    assert response.content == content[:half] + b"|middle|" + content[half:]


def test_asgi_zerocopysend_without_offset_reads_from_the_files_position_and_moves_it(
    asgi_server: Server, client: httpx.Client, data: tuple[Path, bytes]
) -> None:
    path, content = data
    assert get(client, asgi_server, "/position", path).content == content[10:110] + b"|position=110"


def test_head_of_an_asgi_file_response_gives_its_length_and_no_body(
    asgi_server: Server, data: tuple[Path, bytes]
) -> None:
    path, _ = data
    with Conn(asgi_server.port) as conn:
        conn.send(f"HEAD /whole?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        conn.send(b"GET /extensions HTTP/1.1\r\nHost: x\r\n\r\n")
        head = conn.read_response("HEAD")
        assert head.header("content-length") == str(FILE_SIZE).encode()
        assert conn.read_response().body == b'["http.response.zerocopysend"]'


# ----------------------------------------------------------------------------------- where sendfile is off


@pytest.mark.parametrize("app", [WSGI, ASGI])
def test_no_sendfile_serves_the_same_bytes_and_offers_no_zero_copy(
    serve: ServerFactory, client: httpx.Client, data: tuple[Path, bytes], app: str
) -> None:
    path, content = data
    server = serve(app, "--no-sendfile")
    assert client.get(server.url + "/extensions").json() == []
    route = "/wrapper" if app == WSGI else "/whole"
    assert get(client, server, route, path).content == content


@pytest.fixture
def tls_args(tmp_path: Path) -> tuple[tuple[str, ...], ssl.SSLContext]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return ("--certfile", str(cert), "--keyfile", str(key)), context


@pytest.mark.parametrize("app", [WSGI, ASGI])
def test_tls_serves_the_same_bytes_and_offers_no_zero_copy(
    serve: ServerFactory, tls_args: tuple[tuple[str, ...], ssl.SSLContext], data: tuple[Path, bytes], app: str
) -> None:
    path, content = data
    args, context = tls_args
    server = serve(app, *args)
    base = f"https://127.0.0.1:{server.port}"
    route = "/wrapper" if app == WSGI else "/whole"
    with httpx.Client(verify=context, timeout=30) as tls_client:
        assert tls_client.get(base + "/extensions").json() == ["tls"]
        response = tls_client.get(base + route, params={"path": str(path)})
    assert response.content == content


# ------------------------------------------------------------------------------- slow and vanishing clients


def slow_download(port: int, route: str, path: Path) -> tuple[socket.socket, bytes]:
    """A client that asks for a file, with a small receive buffer, and reads only the first bytes for now."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(READ_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {route}?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock, sock.recv(1024)  # the response has started


def read_body(sock: socket.socket, start: bytes, length: int) -> bytes:
    data = bytearray(start)
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    _, _, body = bytes(data).partition(b"\r\n\r\n")
    received = bytearray(body)
    while len(received) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "the server closed the connection mid-file"
        received += chunk
    return bytes(received)


@pytest.mark.parametrize(
    ("app", "route", "args"),
    [(WSGI, "/wrapper", ("-k", "sync")), (ASGI, "/whole", ("--no-sendfile",))],
    ids=["wsgi-sync-sendfile", "asgi-no-sendfile"],
)
def test_a_slow_reader_of_a_big_file_holds_neither_an_app_thread_nor_memory(
    serve: ServerFactory, client: httpx.Client, big_file: Path, app: str, route: str, args: tuple[str, ...]
) -> None:
    server = serve(app, *args)
    assert client.get(server.url + "/extensions").status_code == 200
    rss_before = worker_rss_kib(server)
    sock, start = slow_download(server.port, route, big_file)
    with sock:
        # Under -k sync the only app thread is free: other requests are answered while the download waits.
        for _ in range(3):
            assert client.get(server.url + "/extensions").status_code == 200
        growth = worker_rss_kib(server) - rss_before
        assert growth < 16 * 1024, f"the worker grew by {growth} KiB while a client was slow"
        assert read_body(sock, start, BIG_FILE_SIZE) == big_file.read_bytes()


@pytest.mark.parametrize("app", [WSGI, ASGI])
def test_a_client_that_leaves_mid_file_costs_no_traceback_and_the_worker_keeps_serving(
    serve: ServerFactory, client: httpx.Client, big_file: Path, tmp_path: Path, app: str
) -> None:
    server = serve(app)
    mark = tmp_path / "closed"
    route = f"/wrapper?mark={mark}&" if app == WSGI else "/whole?"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(READ_TIMEOUT)
    with sock:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET {route}path={big_file} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536)
    # Closed with unread data: the worker's next write meets a reset connection.
    assert client.get(server.url + "/extensions").json() == ["http.response.zerocopysend"]
    if app == WSGI:
        assert wait_until(mark.exists, 10)  # the wrapper was closed though the file was never all sent
        assert wait_until(lambda: mark.read_text() == "MainThread", 10)  # one thread: the app runs on the loop's
    assert client.get(server.url + "/extensions").status_code == 200
    assert "Traceback" not in server.stderr_text()


@pytest.mark.parametrize("args", [(), ("--no-sendfile",)], ids=["sendfile", "no-sendfile"])
def test_a_client_that_reads_none_of_a_file_is_cut_after_send_timeout(
    serve: ServerFactory, client: httpx.Client, big_file: Path, args: tuple[str, ...]
) -> None:
    server = serve(ASGI, "--send-timeout", "1", *args)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    with sock:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET /whole?path={big_file} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert server.wait_for_stderr("client read nothing for over", timeout=10), server.stderr_text()
    assert client.get(server.url + "/extensions").status_code == 200
    assert "Traceback" not in server.stderr_text()
