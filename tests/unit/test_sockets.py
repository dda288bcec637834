"""Listening sockets: systemd socket activation and reuse_port twins, without a server."""

from __future__ import annotations

import os
import socket

from corral.core.sockets import systemd_listeners, worker_listeners


def test_systemd_listeners_ignored_when_they_are_for_another_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert systemd_listeners(env) is None
    assert env["LISTEN_FDS"] == "1"


def test_systemd_listeners_absent_without_the_variables() -> None:
    assert systemd_listeners({}) is None


def test_reuse_port_twins_bind_the_same_address_and_listen() -> None:
    shared = socket.socket()
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    shared.bind(("127.0.0.1", 0))  # the master only holds the address
    twins = worker_listeners([shared], backlog=16, reuse_port=True)
    try:
        assert twins[0] is not shared
        assert twins[0].getsockname() == shared.getsockname()
        with socket.create_connection(shared.getsockname(), timeout=5):
            pass
    finally:
        for sock in (*twins, shared):
            sock.close()


def test_without_reuse_port_workers_share_the_masters_sockets() -> None:
    shared = socket.socket()
    try:
        assert worker_listeners([shared], backlog=16, reuse_port=False) == [shared]
    finally:
        shared.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
