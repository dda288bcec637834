"""corral under a stand-in for systemd: sd_notify messages on a unix datagram socket the test owns (readiness,
reload, stop, status, watchdog), the app kept out of them, and socket activation over TCP and unix sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.apps.master_apps import BROKEN_APP_SOURCE, RELOADABLE_APP_SOURCE
from tests.integration.conftest import (
    REPO_ROOT,
    Server,
    free_port,
    parse_responses,
    raw_request,
    read_to_eof,
    wait_until,
)

# How long the master may take to say something on a loaded test machine.
MESSAGE_TIMEOUT = 20.0
GATE_TIMEOUT = 20.0
REQUEST = b"GET / HTTP/1.1\r\nHost: corral.test\r\nConnection: close\r\n\r\n"
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# Written next to the test's files and served with --app-dir. `app` answers with what it sees of the systemd
# variables, at import time and now; `gated_app`'s lifespan startup waits until the test creates go-<pid>.
APP_SOURCE = '''\
"""Reports what the app sees of systemd's variables."""
import asyncio
import json
import os
import pathlib

HERE = pathlib.Path(__file__).parent
NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
AT_IMPORT = {name: os.environ.get(name) for name in NAMES}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, gated=False)
        return
    seen = {"pid": os.getpid(), "at_import": AT_IMPORT, "now": {name: os.environ.get(name) for name in NAMES}}
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def gated_app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, gated=True)
        return
    await app(scope, receive, send)


async def _lifespan(receive, send, gated):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if gated:
                await _wait_for_the_test()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _wait_for_the_test():
    (HERE / f"started-{os.getpid()}").write_text("")
    for _ in range(400):  # 20 s
        if (HERE / f"go-{os.getpid()}").exists():
            return
        await asyncio.sleep(0.05)
'''

# Starts a command the way systemd does: the named variables hold the process's own pid (exec keeps it), and
# an inherited descriptor is moved to 3, where LISTEN_FDS counts from.
LAUNCHER = """
import os, sys
names, fd, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for name in filter(None, names.split(",")):
    os.environ[name] = str(os.getpid())
if fd >= 0 and fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.execv(command[0], command)
"""


class ServiceManager:
    """The test's end of NOTIFY_SOCKET: a unix datagram socket, and every message received on it, in order."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.received: list[dict[str, str]] = []

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        """Receive until a message satisfies `predicate`; that message (fails the test after MESSAGE_TIMEOUT)."""
        deadline = time.monotonic() + MESSAGE_TIMEOUT
        for _ in range(100_000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no {what} from corral within {MESSAGE_TIMEOUT}s; received {self.received}")

    def wait_for_ready(self) -> dict[str, str]:
        return self.wait_for(lambda m: m.get("READY") == "1", "READY=1")

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.received if "STATUS" in m]

    def close(self) -> None:
        self.sock.close()


class Launcher:
    """Starts corral processes with systemd's variables and descriptors; stops every one at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "systemd_app.py").write_text(APP_SOURCE)
        self.servers: list[Server] = []

    def start(
        self,
        app: str,
        *args: str,
        env: dict[str, str],
        own_pid_in: Sequence[str] = (),
        listener: socket.socket | None = None,
        port: int | None = None,
    ) -> Server:
        """Run `corral APP --app-dir DIR *args` with `env` added, each of `own_pid_in` set to corral's own pid
        and `listener` (if given) passed as descriptor 3."""
        if port is None and listener is None:
            port = free_port()
            args = ("--bind", f"127.0.0.1:{port}", *args)
        fd = listener.fileno() if listener is not None else -1
        corral = [sys.executable, "-m", "corral", app, "--app-dir", str(self.directory), *args]
        command = [sys.executable, "-c", LAUNCHER, ",".join(own_pid_in), str(fd), *corral]
        base = {k: v for k, v in os.environ.items() if k not in NOTIFY_VARIABLES + ACTIVATION_VARIABLES}
        stem = self.directory / f"corral-{len(self.servers)}"
        stderr_path, stdout_path = stem.with_suffix(".stderr"), stem.with_suffix(".stdout")
        with stderr_path.open("wb") as err, stdout_path.open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env={**base, "PYTHONUNBUFFERED": "1", **env},
                pass_fds=(fd,) if fd >= 0 else (),
                start_new_session=True,
            )
        server = Server(app, tuple(args), port or 0, proc, stderr_path, stdout_path)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="corral-sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def manager(short_dir: Path) -> Iterator[ServiceManager]:
    service_manager = ServiceManager(short_dir / "notify")
    yield service_manager
    service_manager.close()


@pytest.fixture
def launcher(short_dir: Path) -> Iterator[Launcher]:
    starter = Launcher(short_dir)
    yield starter
    starter.stop_all()


def get_json(port: int) -> dict[str, Any]:
    responses = parse_responses(raw_request(port, REQUEST))
    assert len(responses) == 1 and responses[0].status == 200, responses
    return json.loads(responses[0].body)


def started_pids(directory: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("started-")) for p in directory.glob("started-*"))


# --------------------------------------------------------------------------------------------------
# sd_notify


def test_ready_is_sent_once_every_worker_is_ready_not_at_the_first(
    launcher: Launcher, manager: ServiceManager, short_dir: Path
) -> None:
    server = launcher.start("systemd_app:gated_app", "-w", "2", env={"NOTIFY_SOCKET": manager.address})
    assert wait_until(lambda: len(started_pids(short_dir)) == 2, GATE_TIMEOUT), server.stderr_text()
    first, second = started_pids(short_dir)
    (short_dir / f"go-{first}").write_text("")
    manager.wait_for(lambda m: m.get("STATUS") == "starting: 1/2 workers ready", "the first worker's status")
    assert all("READY" not in m for m in manager.received), manager.received
    (short_dir / f"go-{second}").write_text("")
    ready = manager.wait_for_ready()
    assert ready["STATUS"] == "2 workers ready"
    assert get_json(server.port)["pid"] in (first, second)
    assert manager.statuses()[0] == "starting: 0/2 workers ready"


def test_hup_sends_reloading_then_ready_once_the_new_workers_serve(launcher: Launcher, manager: ServiceManager) -> None:
    server = launcher.start("systemd_app:app", "-w", "2", env={"NOTIFY_SOCKET": manager.address})
    manager.wait_for_ready()
    server.signal(signal.SIGHUP)
    reloading = manager.wait_for(lambda m: m.get("RELOADING") == "1", "RELOADING=1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    ready = manager.wait_for_ready()
    assert ready["STATUS"] == "2 workers ready"
    assert "Reload complete" in server.stderr_text()
    during = manager.received[manager.received.index(reloading) + 1 : -1]
    assert during and all(m["STATUS"].startswith("reloading: ") for m in during if "STATUS" in m), during
    assert get_json(server.port)["pid"] > 0


def test_a_reload_that_fails_also_ends_with_ready_and_the_old_workers_keep_serving(
    launcher: Launcher, manager: ServiceManager, short_dir: Path
) -> None:
    (short_dir / "reloadable_app.py").write_text(RELOADABLE_APP_SOURCE)
    server = launcher.start("reloadable_app:app", "-w", "1", env={"NOTIFY_SOCKET": manager.address})
    manager.wait_for_ready()
    (short_dir / "reloadable_app.py").write_text(BROKEN_APP_SOURCE)
    server.signal(signal.SIGHUP)
    manager.wait_for(lambda m: m.get("RELOADING") == "1", "RELOADING=1")
    ready = manager.wait_for_ready()
    assert "Reload failed" in server.stderr_text()
    assert ready["STATUS"] == "1 worker ready"
    responses = parse_responses(raw_request(server.port, REQUEST))
    assert [r.status for r in responses] == [200] and b"reloadable" in responses[0].body


def test_term_sends_stopping_with_a_draining_status_and_exits_0(launcher: Launcher, manager: ServiceManager) -> None:
    server = launcher.start("systemd_app:app", "-w", "2", env={"NOTIFY_SOCKET": manager.address})
    manager.wait_for_ready()
    server.signal(signal.SIGTERM)
    stopping = manager.wait_for(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
    assert stopping["STATUS"] == "draining 2 workers"
    assert server.wait(MESSAGE_TIMEOUT) == 0


def test_watchdog_pings_arrive_when_watchdog_usec_is_set(launcher: Launcher, manager: ServiceManager) -> None:
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"}
    server = launcher.start("systemd_app:app", env=env, own_pid_in=["WATCHDOG_PID"])
    manager.wait_for_ready()
    for _ in range(5):  # pings keep coming while the pool is idle, not only while it boots
        manager.wait_for(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1")
    assert server.proc.poll() is None


def test_no_watchdog_pings_when_watchdog_pid_names_another_process(launcher: Launcher, manager: ServiceManager) -> None:
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    server = launcher.start("systemd_app:app", env=env)
    manager.wait_for_ready()
    # A whole reload later the master has turned its loop many times, each time a ping would have been due.
    server.signal(signal.SIGHUP)
    manager.wait_for(lambda m: m.get("RELOADING") == "1", "RELOADING=1")
    manager.wait_for_ready()
    assert all("WATCHDOG" not in m for m in manager.received), manager.received


@pytest.mark.parametrize("preload", [False, True], ids=["imported-in-workers", "preloaded"])
def test_the_app_never_sees_the_notify_variables(launcher: Launcher, manager: ServiceManager, preload: bool) -> None:
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "10000000"}
    server = launcher.start(
        "systemd_app:app", *(["--preload"] if preload else []), env=env, own_pid_in=["WATCHDOG_PID"]
    )
    manager.wait_for_ready()
    seen = get_json(server.port)
    for name in NOTIFY_VARIABLES:
        assert seen["at_import"][name] is None and seen["now"][name] is None, seen


# --------------------------------------------------------------------------------------------------
# Socket activation


def test_socket_activation_serves_a_tcp_socket_passed_as_descriptor_3(launcher: Launcher, short_dir: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    ignored_bind = short_dir / "not-bound.sock"
    try:
        server = launcher.start(
            "systemd_app:app",
            "--bind",
            f"unix:{ignored_bind}",  # the sockets systemd passes take the place of `bind`
            env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
            own_pid_in=["LISTEN_PID"],
            listener=listener,
            port=port,
        )
        seen = get_json(port)  # queued by the kernel until a worker accepts it
    finally:
        listener.close()
    assert all(seen["at_import"][n] is None and seen["now"][n] is None for n in ACTIVATION_VARIABLES), seen
    assert not ignored_bind.exists()
    assert f"Listening on http://127.0.0.1:{port}" in server.stderr_text()
    assert server.stop() == 0


def test_socket_activation_serves_a_unix_socket(launcher: Launcher, short_dir: Path) -> None:
    path = short_dir / "web.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    try:
        server = launcher.start(
            "systemd_app:app", env={"LISTEN_FDS": "1"}, own_pid_in=["LISTEN_PID"], listener=listener
        )
    finally:
        listener.close()  # corral holds its own copy
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(MESSAGE_TIMEOUT)
        client.connect(str(path))
        client.sendall(REQUEST)
        data, closed = read_to_eof(client, MESSAGE_TIMEOUT)
    responses = parse_responses(data, eof=closed)
    assert [r.status for r in responses] == [200], server.stderr_text()
    assert server.stop() == 0


def test_socket_activation_of_a_datagram_socket_fails_with_exit_2_naming_it(launcher: Launcher) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server = launcher.start(
            "systemd_app:app",
            env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "metrics"},
            own_pid_in=["LISTEN_PID"],
            listener=listener,
        )
    finally:
        listener.close()
    assert server.wait(MESSAGE_TIMEOUT) == 2
    assert "systemd socket 'metrics' (descriptor 3)" in server.stderr_text()
