"""WSGI apps (Flask, Django, a bare callable under wsgiref.validate) served by real corral processes: bodies,
queries, streaming, files, HEAD, chunked uploads, errors, slow uploaders under -k sync, the thread timeout,
the graceful drain, max_requests, Gunicorn's request hooks and the guides' WSGI command lines."""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps.wsgi_apps import STREAM_PARTS
from tests.integration.conftest import (
    REPO_ROOT,
    Server,
    ServerFactory,
    child_pids,
    exchange,
    wait_until,
)

SEED_CONFIGS = REPO_ROOT.parent / "shared" / "fixtures" / "seed-configs"
FLASK = "tests.apps.wsgi_apps:flask_app"


# The two ways a worker runs a WSGI app: on its event loop's thread, one request at a time (-k sync, and the
# default of one thread), or in a pool of threads.
SYNC = ("-k", "sync")
GTHREAD = ("-k", "gthread", "--threads", "4")


@pytest.fixture(scope="module", params=[SYNC, GTHREAD], ids=["sync", "gthread"])
def flask_server(serve_module: ServerFactory, request: pytest.FixtureRequest) -> Server:
    return serve_module(FLASK, *request.param)


@pytest.fixture
def client(flask_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=flask_server.url, timeout=10) as http:
        yield http


# ---------------------------------------------------------------------------------------------- Flask


def test_flask_json_route_is_served_with_a_content_length(client: httpx.Client) -> None:
    response = client.get("/json")
    assert response.status_code == 200
    assert response.json() == {"hello": "world"}
    assert response.headers["content-length"] == str(len(response.content))


def test_flask_sees_the_query_string(client: httpx.Client) -> None:
    assert client.get("/query", params={"q": "blue shoes", "n": "2"}).json() == {"q": "blue shoes", "n": "2"}


def test_flask_reads_a_large_upload_spooled_to_disk(client: httpx.Client) -> None:
    data = bytes(range(256)) * 12_000  # 3 MiB: past the in-memory spool
    response = client.post("/upload", content=data)
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_flask_reads_a_chunked_upload(client: httpx.Client) -> None:
    parts = [b"a" * 1000, b"b" * 5000, b"c"]
    response = client.post("/upload", content=iter(parts))  # an iterator: httpx sends it chunked
    body = b"".join(parts)
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_flask_generator_response_streams_chunked(client: httpx.Client) -> None:
    with client.stream("GET", "/stream") as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        assert b"".join(response.iter_bytes()) == b"".join(STREAM_PARTS)


def test_flask_send_file_arrives_whole(client: httpx.Client) -> None:
    response = client.get("/file")
    assert response.content == (REPO_ROOT / "tests" / "apps" / "wsgi_apps.py").read_bytes()


def test_flask_head_has_headers_and_no_body(flask_server: Server) -> None:
    request = b"HEAD /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    (response,) = exchange(flask_server.port, request).final_responses(["HEAD"])
    assert response.status == 200
    assert response.body == b""


def test_flask_view_that_raises_gets_500_with_a_traceback_and_the_worker_serves_on(
    flask_server: Server, client: httpx.Client
) -> None:
    pids = child_pids(flask_server.proc.pid)
    assert client.get("/error").status_code == 500
    assert flask_server.wait_for_stderr("RuntimeError: flask view failed on purpose")
    assert client.get("/json").status_code == 200
    assert child_pids(flask_server.proc.pid) == pids


def test_the_environ_is_multithreaded_only_under_gthread(flask_server: Server, client: httpx.Client) -> None:
    assert client.get("/pid").json()["multithread"] is ("gthread" in flask_server.args)


def test_flask_async_view_runs_through_asgiref_as_under_gunicorn(client: httpx.Client) -> None:
    assert client.get("/async").json() == {"async_view": True}


# ------------------------------------------------------------------------------------- wsgiref.validate


@pytest.fixture(scope="module")
def validated_server(serve_module: ServerFactory) -> Server:
    return serve_module("tests.apps.wsgi_apps:validated", "--root-path", "/mount")


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/a%20b?x=1", None, b"GET /mount|/a b?x=1"),
        ("GET", "/stream", None, b"".join(STREAM_PARTS)),
        ("GET", "/write", None, b"written returned"),
        ("POST", "/echo", b"line one\nline two\n", b"line one\nline two\n"),
    ],
)
def test_every_response_path_passes_wsgiref_validate(
    validated_server: Server, method: str, path: str, body: bytes | None, expected: bytes
) -> None:
    response = httpx.request(method, validated_server.url + path, content=body, timeout=10)
    assert response.status_code == 200
    assert response.content == expected
    assert "AssertionError" not in validated_server.stderr_text()


def test_file_wrapper_passes_wsgiref_validate(validated_server: Server) -> None:
    response = httpx.get(validated_server.url + "/file", timeout=10)
    assert response.content == (REPO_ROOT / "tests" / "apps" / "wsgi_apps.py").read_bytes()
    assert "AssertionError" not in validated_server.stderr_text()


def test_head_passes_wsgiref_validate(validated_server: Server) -> None:
    request = b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    (response,) = exchange(validated_server.port, request).final_responses(["HEAD"])
    assert response.status == 200 and response.body == b""


# ------------------------------------------------------------------------------------------------ Django


@pytest.fixture(scope="module")
def django_server(serve_module: ServerFactory) -> Server:
    return serve_module("tests.apps.wsgi_django.wsgi:application", "-k", "sync")


def test_django_project_is_served_from_its_wsgi_module(django_server: Server) -> None:
    response = httpx.get(django_server.url + "/hello/", params={"q": "x"}, timeout=10)
    assert response.json() == {"framework": "django", "path": "/hello/", "q": "x"}


def test_django_reads_a_post_body_and_streams(django_server: Server) -> None:
    assert httpx.post(django_server.url + "/echo/", content=b"z" * 70_000, timeout=10).json() == {
        "size": 70_000,
        "method": "POST",
    }
    assert httpx.get(django_server.url + "/stream/", timeout=10).content == b"chunk-0\nchunk-1\nchunk-2\n"


def test_django_answers_404_for_an_unknown_path(django_server: Server) -> None:
    assert httpx.get(django_server.url + "/nowhere/", timeout=10).status_code == 404


# ------------------------------------------------------------------------------------------- slow clients


def test_slow_uploaders_do_not_hold_the_only_thread_of_a_sync_worker(serve: ServerFactory) -> None:
    server = serve(FLASK, "-k", "sync")
    uploaders = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        uploaders.append(sock)
    try:
        # With Gunicorn's sync worker the first uploader would hold the one worker until its body is in.
        response = httpx.get(server.url + "/json", timeout=10)
        assert response.json() == {"hello": "world"}
        for sock in uploaders:  # the uploads are still incomplete, and then finish normally
            sock.sendall(b"y" * 99_990)
        for sock in uploaders:
            data = b""
            while b"sha256" not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            assert b'"size":100000' in data
    finally:
        for sock in uploaders:
            sock.close()


# ----------------------------------------------------------------------------------------- timeout, drain


def test_a_thread_stuck_past_timeout_gets_the_worker_replaced_with_every_threads_traceback(
    serve: ServerFactory,
) -> None:
    server = serve(FLASK, "--timeout", "2", "--threads", "2")
    first = child_pids(server.proc.pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/stuck", timeout=20)
    assert server.wait_for_stderr("has run for over 2s (timeout)")
    assert server.wait_for_stderr("in stuck")  # the stuck thread's frame, from the traceback dump
    assert wait_until(lambda: child_pids(server.proc.pid) - first, 15)
    assert httpx.get(server.url + "/json", timeout=10).status_code == 200


def test_an_app_stuck_past_timeout_under_sync_gets_the_worker_replaced_with_its_traceback(
    serve: ServerFactory,
) -> None:
    server = serve(FLASK, "-k", "sync", "--timeout", "2")
    first = child_pids(server.proc.pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/stuck", timeout=20)
    assert server.wait_for_stderr("silent for")  # the master's timeout: the app holds the worker's only thread
    assert server.wait_for_stderr("in stuck")  # the stuck frame, from the traceback dump
    assert wait_until(lambda: child_pids(server.proc.pid) - first, 15)
    assert httpx.get(server.url + "/json", timeout=10).status_code == 200


def test_graceful_drain_under_sync_finishes_the_request_in_the_app_and_the_one_waiting(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(FLASK, "-k", "sync")
    results: list[int] = []
    mark = tmp_path / "in-app"

    def request(params: dict[str, str]) -> None:
        results.append(httpx.get(server.url + "/sleep", params=params, timeout=20).status_code)

    first = threading.Thread(target=request, args=({"s": "1.5", "mark": str(mark)},))
    first.start()
    assert wait_until(mark.exists, 10)  # in the app: the worker's loop waits for it
    second = threading.Thread(target=request, args=({"s": "0.1"},))
    second.start()  # sent while the worker is busy: the kernel queues it
    time.sleep(0.2)
    server.signal(signal.SIGTERM)
    for thread in (first, second):
        thread.join(20)
    assert results == [200, 200]
    assert server.wait(15) == 0


def test_graceful_drain_finishes_wsgi_requests_in_flight(serve: ServerFactory, tmp_path: Path) -> None:
    server = serve(FLASK, "--threads", "2")
    results: list[int] = []
    marks = [tmp_path / f"in-app-{i}" for i in range(2)]

    def slow_request(mark: Path) -> None:
        params = {"s": "1.5", "mark": str(mark)}
        results.append(httpx.get(server.url + "/sleep", params=params, timeout=20).status_code)

    clients = [threading.Thread(target=slow_request, args=(mark,)) for mark in marks]
    for thread in clients:
        thread.start()
    assert wait_until(lambda: all(mark.exists() for mark in marks), 10)  # both are running the app
    server.signal(signal.SIGTERM)
    for thread in clients:
        thread.join(20)
    assert results == [200, 200]
    assert server.wait(15) == 0


def test_max_requests_replaces_a_wsgi_worker(serve: ServerFactory) -> None:
    server = serve(FLASK, "--max-requests", "5")
    first = httpx.get(server.url + "/pid", timeout=10).json()["pid"]
    pids = {first}
    for _ in range(30):
        pids.add(httpx.get(server.url + "/pid", timeout=10).json()["pid"])
        if len(pids) > 1:
            break
        time.sleep(0.1)
    assert len(pids) > 1


# ------------------------------------------------------------------------------------------------- hooks


def test_pre_and_post_request_hooks_get_gunicorns_arguments(serve: ServerFactory, tmp_path: Path) -> None:
    record = tmp_path / "hooks.jsonl"
    conf = tmp_path / "hooks.conf.py"
    conf.write_text(
        "import json\n"
        f"RECORD = {str(record)!r}\n"
        "def pre_request(worker, req):\n"
        "    with open(RECORD, 'a') as f:\n"
        "        f.write(json.dumps({'hook': 'pre', 'pid': worker.pid, 'method': req.method, 'path': req.path})"
        " + '\\n')\n"
        "def post_request(worker, req, environ, resp):\n"
        "    with open(RECORD, 'a') as f:\n"
        "        f.write(json.dumps({'hook': 'post', 'path': environ['PATH_INFO'],"
        " 'input': hasattr(environ['wsgi.input'], 'read'), 'status': resp.status_code}) + '\\n')\n"
    )
    server = serve(FLASK, "-c", str(conf), "-w", "1")
    assert httpx.get(server.url + "/query?a=1", timeout=10).status_code == 200
    assert wait_until(lambda: record.is_file() and len(record.read_text().splitlines()) == 2, 10)
    pre, post = (json.loads(line) for line in record.read_text().splitlines())
    assert child_pids(server.proc.pid) == {pre.pop("pid")}
    assert pre == {"hook": "pre", "method": "GET", "path": "/query"}
    assert post == {"hook": "post", "path": "/query", "input": True, "status": 200}


def test_access_log_environ_atom_reads_the_wsgi_environ(serve: ServerFactory) -> None:
    server = serve(FLASK, "--access-logfile", "-", "--access-logformat", "%(m)s %({SERVER_PROTOCOL}e)s %(s)s")
    assert httpx.get(server.url + "/json", timeout=10).status_code == 200
    assert wait_until(lambda: "GET HTTP/1.1 200" in server.stdout_text() + server.stderr_text(), 10)


# --------------------------------------------------------------------------------------- interfaces


def test_an_asgi_app_under_a_sync_worker_class_is_served_as_asgi_with_a_notice(serve: ServerFactory) -> None:
    server = serve("tests.apps.echo:app", "-k", "sync")
    assert httpx.get(server.url + "/", timeout=10).status_code == 200
    assert server.wait_for_stderr("serving it as ASGI (worker class sync only applies to WSGI apps)")


def test_a_wsgi_app_under_the_uvicorn_worker_class_is_served_as_wsgi(serve: ServerFactory) -> None:
    server = serve("tests.apps.wsgi_apps:hello", "-k", "uvicorn.workers.UvicornWorker")
    assert httpx.get(server.url + "/", timeout=10).text == "hello"


def seed_command_lines() -> list[str]:
    path = SEED_CONFIGS / "guide_g.wsgi-cli.txt"
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith("gunicorn ")]


@pytest.mark.skipif(not seed_command_lines(), reason="the shared seed command lines are not present")
@pytest.mark.parametrize("command", seed_command_lines())
def test_the_guides_wsgi_command_lines_run_unchanged(serve: ServerFactory, tmp_path: Path, command: str) -> None:
    argv = shlex.split(command)[1:]
    module, _, attribute = argv[0].partition(":")
    # The app the command line names, as a WSGI app at that module path in a scratch app directory.
    package = tmp_path.joinpath(*module.split(".")[:-1])
    package.mkdir(parents=True, exist_ok=True)
    for depth in range(len(module.split(".")) - 1):
        tmp_path.joinpath(*module.split(".")[: depth + 1], "__init__.py").write_text("")
    package.joinpath(module.split(".")[-1] + ".py").write_text(
        f"def {attribute}(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'seed ok']\n"
    )
    server = serve(argv[0], *argv[1:], app_dir=tmp_path)
    assert httpx.get(server.url + "/", timeout=10).text == "seed ok"


def test_a_callable_that_is_neither_wsgi_nor_asgi_stops_corral_with_one_line_and_exit_3(serve: ServerFactory) -> None:
    server = serve("tests.apps.loading_apps:three_positional", wait_ready=False)
    assert server.wait(20) == 3
    lines = [line for line in server.stderr_text().splitlines() if "which is not an ASGI or WSGI app" in line]
    assert len(lines) == 1, server.stderr_text()
