"""The master's process settings, seen from outside: pidfile, chdir, user/group, umask on unix sockets."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO_ROOT, ServerFactory, wait_until

HELLO = "async def app(scope, receive, send):\n" + (
    "    if scope['type'] != 'http':\n        return\n"
    "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
    "    await send({'type': 'http.response.body', 'body': b'hello'})\n"
)


def worker_pids(master_pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat_file:
                    fields = stat_file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master_pid:
                pids.append(int(entry))
    return pids


def python_usable_by(user: pwd.struct_passwd) -> bool:
    """Whether a process running as `user` can import the test app's modules with this interpreter."""

    def become_user() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import json, asyncio, tests.apps.echo"],
            cwd=REPO_ROOT, preexec_fn=become_user, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_pidfile_holds_the_master_pid_while_running_and_is_removed_at_exit(
    serve: ServerFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "corral.pid"
    server = serve("tests.apps.echo:app", "--pid", str(pidfile))
    assert pidfile.read_text().strip() == str(server.proc.pid)
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not pidfile.exists()


def test_pidfile_of_another_running_process_is_refused(tmp_path: Path) -> None:
    pidfile = tmp_path / "taken.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: alive, and not the new master
    result = subprocess.run(
        [sys.executable, "-m", "corral", "tests.apps.echo:app", "--bind", "127.0.0.1:0", "--pid", str(pidfile)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "already in use by the running process" in result.stderr
    assert pidfile.read_text().strip() == str(os.getpid())


def test_chdir_makes_the_app_importable_from_that_directory(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "chdir_app.py").write_text(HELLO)
    server = serve("chdir_app:app", "--chdir", str(tmp_path), app_dir=Path("."))
    with socket.create_connection((server.host, server.port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_workers_run_as_the_configured_user_and_the_master_does_not(serve: ServerFactory) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    if not python_usable_by(nobody):
        pytest.skip("this Python installation is not readable by 'nobody' (e.g. it lives under /root)")
    server = serve("tests.apps.echo:app", "--user", "nobody", "--workers", "2")
    # Workers switch right after fork: wait until both have, bounded.
    assert wait_until(lambda: [uid_of(pid) for pid in worker_pids(server.proc.pid)] == [nobody.pw_uid] * 2, 15)
    assert uid_of(server.proc.pid) == 0


def test_unknown_user_exits_2_before_binding(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corral", "tests.apps.echo:app", "--bind", f"unix:{tmp_path / 's.sock'}",
         "--user", "no-such-user-here"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "corral: error: user: no such user 'no-such-user-here' (from the command line)"
    ]
    assert not (tmp_path / "s.sock").exists()


def test_umask_sets_the_unix_socket_mode(serve: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "corral.sock"
    serve("tests.apps.echo:app", "--bind", f"unix:{path}", "--umask", "077", wait_ready=False)
    assert wait_until(path.exists, 15)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (from /proc/net/tcp: state 0A is LISTEN)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for line in table if line.split()[1:4:2] == [wanted, "0A"])


def test_reuse_port_gives_each_worker_its_own_listening_socket(serve: ServerFactory) -> None:
    server = serve("tests.apps.echo:app", "--reuse-port", "--workers", "2")
    assert wait_until(lambda: listening_sockets(server.port) == 2, 15)
    for _ in range(20):
        with socket.create_connection((server.host, server.port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
