"""uvicorn's command line and Python API on a real corral: each alias group proven by what it does on the
wire (bind, environment, scope, proxy headers, 503s, response headers), corral.run() with an app object and
with an import string, colours and the access log only on a terminal, and the guide's uvicorn lines."""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    REPO_ROOT,
    Conn,
    Server,
    child_pids,
    free_port,
    wait_for_ready_workers,
    wait_until,
)

APP = "tests.apps.uvicorn_apps:app"
SEED_CONFIGS = REPO_ROOT.parent / "shared" / "fixtures" / "seed-configs"
GUIDE_F = SEED_CONFIGS / "guide_f.uvicorn-cli.txt"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "WEB_CONCURRENCY", "CORRAL_CMD_ARGS")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _start(
    tmp_path: Path, command: Sequence[str], port: int, *, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None
) -> Server:
    stem = f"corral-{port}-{time.monotonic_ns()}"
    stderr_path, stdout_path = tmp_path / f"{stem}.stderr", tmp_path / f"{stem}.stdout"
    with stderr_path.open("wb") as err, stdout_path.open("wb") as out:
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env or _env(),
            start_new_session=True,
        )  # fmt: skip
    return Server(APP, tuple(command), port, proc, stderr_path, stdout_path)


def _ready(server: Server) -> None:
    ok = wait_until(lambda: server.proc.poll() is not None or server.accepts_connections(), 15.0, interval=0.05)
    assert ok and server.proc.poll() is None, f"corral did not start:\n{server.stderr_text()}"


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.stop()


def _corral(started: list[Server], tmp_path: Path, *args: str, port: int, **kwargs: object) -> Server:
    """`python -m corral APP ARGS` (no --bind: the test's flags choose the socket), started and ready."""
    command = [sys.executable, "-m", "corral", APP, "--app-dir", str(REPO_ROOT), *args]
    server = _start(tmp_path, command, port, **kwargs)  # type: ignore[arg-type]
    started.append(server)
    _ready(server)
    return server


def _get(server: Server, path: str = "/", headers: dict[str, str] | None = None) -> dict:
    response = httpx.get(server.url + path, headers=headers, timeout=5.0)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------- sockets


def test_host_and_port_make_the_bind_address(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _corral(started, tmp_path, "--host", "127.0.0.1", "--port", str(port), "--workers", "1", port=port)
    assert _get(server)["scheme"] == "http"
    assert f"127.0.0.1:{port}" in server.stderr_text()


def test_uds_listens_on_a_unix_socket(started: list[Server], tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    command = [sys.executable, "-m", "corral", APP, "--app-dir", str(REPO_ROOT), "--uds", str(path), "--workers", "1"]
    server = _start(tmp_path, command, 0)
    started.append(server)
    assert wait_until(lambda: path.exists() or server.proc.poll() is not None, 15.0), server.stderr_text()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=5.0) as client:
        response = client.get("http://corral/")
    assert response.status_code == 200
    assert response.json()["path"] == "/"


# ---------------------------------------------------------------------------------------------- the app's world


def test_env_file_sets_the_apps_environment(started: list[Server], tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('# settings\nexport GREETING="hello there"\nQUOTED=\'a # b\'\n')
    port = free_port()
    server = _corral(started, tmp_path, "--port", str(port), "--env-file", str(env_file), "-w", "1", port=port)
    assert _get(server, "/?GREETING")["env"] == "hello there"
    assert _get(server, "/?QUOTED")["env"] == "a # b"


def test_root_path_reaches_the_scope(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _corral(started, tmp_path, "--port", str(port), "--root-path", "/api/", "-w", "1", port=port)
    answer = _get(server, "/items")
    assert answer["root_path"] == "/api"
    assert answer["path"] == "/api/items"


FORWARDED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("flags", "client", "scheme"),
    [
        (["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"], "203.0.113.9", "https"),
        (["--proxy-headers", "--forwarded-allow-ips", "192.0.2.1"], "127.0.0.1", "http"),
        (["--no-proxy-headers", "--forwarded-allow-ips", "*"], "127.0.0.1", "http"),
    ],
)
def test_proxy_headers_are_trusted_only_from_forwarded_allow_ips(
    started: list[Server], tmp_path: Path, flags: list[str], client: str, scheme: str
) -> None:
    port = free_port()
    server = _corral(started, tmp_path, "--port", str(port), "-w", "1", *flags, port=port)
    answer = _get(server, headers=FORWARDED)
    assert answer["client"][0] == client
    assert answer["scheme"] == scheme


# ---------------------------------------------------------------------------------------------- limits and headers


def test_limit_concurrency_answers_503_past_the_limit(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _corral(started, tmp_path, "--port", str(port), "-w", "1", "--limit-concurrency", "2", port=port)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with Conn(port) as first, Conn(port) as second:
        first.send(request)
        assert first.read_response().status == 200
        second.send(request)
        assert second.read_response().status == 200
        with Conn(port) as third:  # a third open connection: over the limit of 2
            third.send(request)
            assert third.read_response().status == 503
        first.send(request)  # the limit counts open connections: back to 2, served again
        assert wait_until(lambda: _status_on(first, request) == 200, 5.0, interval=0.1)
    assert server.proc.poll() is None


def _status_on(conn: Conn, request: bytes) -> int:
    status = conn.read_response().status
    if status != 200:
        conn.send(request)
    return status


def test_no_server_header_and_header_shape_the_response_headers(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _corral(
        started, tmp_path, "--port", str(port), "-w", "1", "--no-server-header", "--no-date-header",
        "--header", "X-Frame-Options:DENY", "--header", "X-Team: platform", port=port,
    )  # fmt: skip
    response = httpx.get(server.url, timeout=5.0)
    assert "server" not in response.headers
    assert "date" not in response.headers
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-team"] == "platform"


def test_server_header_from_header_flag_replaces_corrals(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _corral(started, tmp_path, "--port", str(port), "-w", "1", "--header", "Server: edge", port=port)
    assert httpx.get(server.url, timeout=5.0).headers.get_list("server") == ["edge"]


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(("flags", "status"), [([], 500), (["--ws", "none"], 200)])
def test_ws_none_serves_upgrade_requests_as_plain_http(
    started: list[Server], tmp_path: Path, flags: list[str], status: int
) -> None:
    port = free_port()
    _corral(started, tmp_path, "--port", str(port), "-w", "1", *flags, port=port)
    with Conn(port) as conn:
        conn.send(UPGRADE)
        # The app returns from a WebSocket session without a word (500); with --ws none it sees plain HTTP.
        assert conn.read_response().status == status


# ---------------------------------------------------------------------------------------------- corral.run()


def _run_script(started: list[Server], tmp_path: Path, code: str, port: int) -> Server:
    script = tmp_path / "serve.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\n" + textwrap.dedent(code))
    server = _start(tmp_path, [sys.executable, str(script)], port)
    started.append(server)
    return server


def test_run_serves_an_app_object(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _run_script(started, tmp_path, f"""
        import corral
        from tests.apps.uvicorn_apps import app
        corral.run(app, host="127.0.0.1", port={port}, timeout_keep_alive=3, log_level="info")
    """, port)  # fmt: skip
    _ready(server)
    assert _get(server)["path"] == "/"
    assert len(child_pids(server.proc.pid)) == 1
    assert server.stop() == 0


def test_run_with_an_import_string_and_two_workers(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _run_script(started, tmp_path, f"""
        import corral
        if __name__ == "__main__":
            corral.run("tests.apps.uvicorn_apps:app", port={port}, workers=2, server_header=False)
    """, port)  # fmt: skip
    _ready(server)
    wait_for_ready_workers(server, 2)
    response = httpx.get(server.url, timeout=5.0)
    assert response.status_code == 200
    assert "server" not in response.headers
    assert server.stop() == 0


def test_run_refuses_workers_with_an_app_object_like_uvicorn(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _run_script(started, tmp_path, f"""
        import corral
        from tests.apps.uvicorn_apps import app
        corral.run(app, port={port}, workers=2)
    """, port)  # fmt: skip
    assert server.wait(15.0) == 2
    assert "You must pass the application as an import string to enable 'reload' or 'workers'." in (
        server.stderr_text()
    )
    assert not server.accepts_connections()


# ---------------------------------------------------------------------------------------------- the developer's loop


def _read_pty(fd: int, until: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def test_colours_and_access_log_only_on_a_terminal(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "corral", APP, "--app-dir", str(REPO_ROOT), "--port", str(port), "-w", "1"]
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=REPO_ROOT, env=_env(),
            start_new_session=True,
        )  # fmt: skip
        os.close(terminal)
        server = Server(APP, tuple(command), port, proc, tmp_path / "none", tmp_path / "none")
        started.append(server)
        seen = _read_pty(controller, b"Application startup complete", 15.0)
        assert b"\x1b[32mINFO\x1b[0m" in seen, seen  # the level name coloured
        assert httpx.get(f"http://127.0.0.1:{port}/coloured", timeout=5.0).status_code == 200
        seen += _read_pty(controller, b"/coloured", 10.0)
        # The access line is on, written at once (not after the once-a-second flush), and coloured by status.
        assert b"\x1b[32m" in seen.split(b"GET /coloured")[0].rsplit(b"\n", 1)[-1], seen
        server.stop()
    finally:
        os.close(controller)

    port = free_port()
    plain = _corral(started, tmp_path, "--port", str(port), "-w", "1", port=port)
    assert httpx.get(plain.url + "/plain", timeout=5.0).status_code == 200
    plain.stop()
    assert "\x1b[" not in plain.stderr_text() + plain.stdout_text()
    assert "/plain" not in plain.stdout_text()  # no access log off a terminal unless asked


def test_no_use_colors_and_no_access_log_hold_on_a_terminal(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "corral", APP, "--app-dir", str(REPO_ROOT), "--port", str(port), "-w", "1",
               "--no-use-colors", "--no-access-log"]  # fmt: skip
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=REPO_ROOT, env=_env(),
            start_new_session=True,
        )  # fmt: skip
        os.close(terminal)
        server = Server(APP, tuple(command), port, proc, tmp_path / "none", tmp_path / "none")
        started.append(server)
        seen = _read_pty(controller, b"Application startup complete", 15.0)
        assert b"[INFO] Application startup complete" in seen, seen
        assert httpx.get(f"http://127.0.0.1:{port}/quiet", timeout=5.0).status_code == 200
        server.stop()
        seen += _read_pty(controller, b"Master exiting", 10.0)
    finally:
        os.close(controller)
    assert b"\x1b[" not in seen
    assert b"/quiet" not in seen


def test_access_log_flag_turns_it_on_off_a_terminal(started: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = _corral(started, tmp_path, "--port", str(port), "-w", "1", "--access-log", port=port)
    assert httpx.get(server.url + "/logged", timeout=5.0).status_code == 200
    assert wait_until(lambda: "GET /logged" in server.stdout_text(), 5.0)
    server.stop()
    assert "\x1b[" not in server.stdout_text()


def test_reload_runs_one_worker_by_default(started: list[Server], tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    (tmp_path / "main.py").write_text((REPO_ROOT / "tests" / "apps" / "uvicorn_apps.py").read_text())
    port = free_port()
    command = [sys.executable, "-m", "corral", "main:app", "--reload", "--port", str(port)]
    server = _start(tmp_path, command, port, cwd=tmp_path)
    started.append(server)
    _ready(server)
    wait_for_ready_workers(server, 1)


# ---------------------------------------------------------------------------------------------- the guide, unchanged

_GUIDE_DRIVER = """
import json, os, subprocess, sys, time, urllib.request

line, workdir = sys.argv[1], sys.argv[2]
if os.geteuid() == 0 and os.environ.get("IN_NETNS"):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
argv = [sys.executable, "-m", "corral", *line.split()[1:]]
env = {**os.environ, "PYTHONUNBUFFERED": "1"}
for name in ("PORT", "WEB_CONCURRENCY", "CORRAL_CMD_ARGS", "GUNICORN_CMD_ARGS"):
    env.pop(name, None)
proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
result = {"status": None}
try:
    for _ in range(300):
        try:
            with urllib.request.urlopen("http://127.0.0.1:8000/", timeout=2) as response:
                result["status"] = response.status
                break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
finally:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
result["returncode"] = proc.returncode
result["stderr"] = err.decode("utf-8", "replace")[-3000:]
print(json.dumps(result))
"""


def _guide_lines() -> list[str]:
    if not GUIDE_F.is_file():
        return []
    return [line.strip() for line in GUIDE_F.read_text().splitlines() if line.strip().startswith("uvicorn ")]


def _isolated_network() -> list[str] | None:
    """A private network namespace (its own 127.0.0.1:8000) when this user may create one."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None or os.geteuid() != 0:
        return None
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, check=False)
    return [unshare, "-n"] if probe.returncode == 0 else None


@pytest.mark.parametrize("line", _guide_lines() or [pytest.param("", marks=pytest.mark.skip("no guide_f here"))])
def test_guide_uvicorn_line_runs_unchanged_with_corral(line: str, tmp_path: Path) -> None:
    if "--reload" in shlex.split(line):
        pytest.importorskip("watchfiles")
    (tmp_path / "main.py").write_text((REPO_ROOT / "tests" / "apps" / "uvicorn_apps.py").read_text())
    driver = tmp_path / "driver.py"
    driver.write_text(_GUIDE_DRIVER)
    prefix = _isolated_network()
    if prefix is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 8000)) == 0:
                pytest.skip("127.0.0.1:8000 is in use and no private network namespace is available")
    env = {**_env(), "IN_NETNS": "1" if prefix else ""}
    command = [*(prefix or []), sys.executable, str(driver), line.replace("uvicorn ", "corral ", 1), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["status"] == 200, result["stderr"]
    assert result["returncode"] == 0, result["stderr"]
    assert "error" not in result["stderr"].lower(), result["stderr"]
