"""systemd integration without a server: the sd_notify client against a real unix datagram socket, the policy
that turns the pool's state into messages, and socket activation (LISTEN_FDS) in a child process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.master.systemd import PoolView, SystemdNotifier, SystemdReporter, describe_pool

# --------------------------------------------------------------------------------------------------
# A service manager's end of NOTIFY_SOCKET


class Receiver:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        """Every datagram queued so far, each as its KEY=VALUE fields (a datagram is queued when sendto returns)."""
        received = []
        for _ in range(100_000):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return received
            received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        raise AssertionError("too many datagrams")

    def raw(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="corral-sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[Receiver]:
    manager = Receiver(str(short_dir / "notify"))
    yield manager
    manager.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[SystemdNotifier]:
    client = SystemdNotifier(receiver.address)
    yield client
    client.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log() -> Iterator[Records]:
    """What corral's error logger receives (it may not propagate to pytest's handlers)."""
    logger = logging.getLogger("corral.error")
    records, level = Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(records)
    logger.setLevel(level)


# --------------------------------------------------------------------------------------------------
# Reading the environment


def test_from_environ_takes_every_notify_variable_out_of_the_environment(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "A": "b"}
    client = SystemdNotifier.from_environ(env)
    assert client is not None
    try:
        assert env == {"A": "b"}
        assert client.address == receiver.address
        assert client.watchdog_usec == 4_000_000
    finally:
        client.close()


def test_from_environ_defaults_to_the_process_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    client = SystemdNotifier.from_environ()
    assert client is not None
    client.close()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    child_sees = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert child_sees.strip() == "None"


def test_without_notify_socket_there_is_no_notifier_and_the_watchdog_variables_go_too() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_environ(env) is None
    assert env == {}


@pytest.mark.parametrize("address", ["relative/notify", "vsock:2:9999", "@"])
def test_an_unsupported_notify_socket_address_is_refused_with_a_warning(address: str, error_log: Records) -> None:
    env = {"NOTIFY_SOCKET": address}
    assert SystemdNotifier.from_environ(env) is None
    assert env == {}
    assert [r.levelno for r in error_log.records] == [logging.WARNING]
    assert "NOTIFY_SOCKET" in error_log.records[0].getMessage()


def test_watchdog_interval_is_half_of_watchdog_usec(receiver: Receiver) -> None:
    client = SystemdNotifier.from_environ({"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "3000000"})
    assert client is not None
    try:
        assert client.watchdog_interval == 1.5
    finally:
        client.close()


def test_watchdog_is_ignored_when_watchdog_pid_names_another_process(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    client = SystemdNotifier.from_environ(env)
    assert client is not None
    try:
        assert client.watchdog_interval is None
        assert env == {}
    finally:
        client.close()


@pytest.mark.parametrize("usec", ["0", "", "-5", "soon", "1.5"])
def test_a_zero_or_malformed_watchdog_usec_means_no_watchdog(receiver: Receiver, usec: str) -> None:
    client = SystemdNotifier.from_environ({"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": usec})
    assert client is not None
    try:
        assert client.watchdog_interval is None
    finally:
        client.close()


def test_environ_for_a_successor_names_its_pid_for_the_watchdog() -> None:
    client = SystemdNotifier("/run/systemd/notify", watchdog_usec=10_000_000)
    try:
        assert client.environ_for(4242) == {
            "NOTIFY_SOCKET": "/run/systemd/notify",
            "WATCHDOG_USEC": "10000000",
            "WATCHDOG_PID": "4242",
        }
        assert SystemdNotifier("@sd").environ_for(1) == {"NOTIFY_SOCKET": "@sd"}
    finally:
        client.close()


# --------------------------------------------------------------------------------------------------
# Sending


def test_ready_sends_ready_and_its_status_in_one_datagram(notifier: SystemdNotifier, receiver: Receiver) -> None:
    assert notifier.ready("8 workers ready")
    assert receiver.raw() == b"READY=1\nSTATUS=8 workers ready\n"


def test_an_abstract_socket_name_is_reached() -> None:
    manager = Receiver(f"@corral-test-{uuid.uuid4().hex}")
    client = SystemdNotifier(manager.address)
    try:
        assert client.watchdog()
        assert manager.messages() == [{"WATCHDOG": "1"}]
    finally:
        client.close()
        manager.close()


def test_reloading_carries_the_monotonic_clock_in_microseconds(notifier: SystemdNotifier, receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    (message,) = receiver.messages()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_stopping_status_and_watchdog_send_their_fields(notifier: SystemdNotifier, receiver: Receiver) -> None:
    notifier.stopping("draining 2 workers")
    notifier.status("draining 1 worker")
    notifier.watchdog()
    notifier.notify(MAINPID=1234)
    assert receiver.messages() == [
        {"STOPPING": "1", "STATUS": "draining 2 workers"},
        {"STATUS": "draining 1 worker"},
        {"WATCHDOG": "1"},
        {"MAINPID": "1234"},
    ]


def test_a_newline_in_a_status_cannot_add_another_field(notifier: SystemdNotifier, receiver: Receiver) -> None:
    notifier.status("boom\nREADY=1")
    assert receiver.messages() == [{"STATUS": "boom READY=1"}]


def test_a_vanished_socket_never_raises_and_is_logged_once_at_debug(
    notifier: SystemdNotifier, receiver: Receiver, error_log: Records
) -> None:
    receiver.close()
    os.unlink(receiver.address)
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert [r.levelno for r in error_log.records] == [logging.DEBUG]


def test_a_full_service_manager_queue_drops_messages_instead_of_blocking_the_master(
    notifier: SystemdNotifier, receiver: Receiver
) -> None:
    # The receiver never reads: its queue fills up. A blocking send would hang this test (pytest-timeout).
    delivered = 0
    for _ in range(1_000_000):
        if not notifier.status("x" * 1000):
            break
        delivered += 1
    else:
        pytest.fail("a million datagrams were queued without the receiver reading any")
    assert delivered > 0
    assert len(receiver.messages()) == delivered


def test_after_close_notifications_are_no_ops(notifier: SystemdNotifier, receiver: Receiver) -> None:
    notifier.close()
    notifier.close()
    assert notifier.ready() is False
    assert receiver.messages() == []


# --------------------------------------------------------------------------------------------------
# What the master reports, turn by turn


def view(
    *,
    target: int = 2,
    serving: int = 0,
    new_ready: int = 0,
    alive: int = 2,
    reloading: bool = False,
    stopping: str | None = None,
) -> PoolView:
    return PoolView(target, serving, new_ready, alive, reloading, stopping)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_waits_for_every_worker_of_the_first_start(notifier: SystemdNotifier, receiver: Receiver) -> None:
    report = SystemdReporter(notifier)
    report.update(view(serving=0))
    report.update(view(serving=1, new_ready=1))
    assert receiver.messages() == [{"STATUS": "starting: 0/2 workers ready"}, {"STATUS": "starting: 1/2 workers ready"}]
    report.update(view(serving=2, new_ready=2))
    assert receiver.messages() == [{"READY": "1", "STATUS": "2 workers ready"}]


def test_status_is_sent_only_when_it_changes(notifier: SystemdNotifier, receiver: Receiver) -> None:
    report = SystemdReporter(notifier)
    for _ in range(3):
        report.update(view(serving=2, new_ready=2))
    report.update(view(serving=1, new_ready=1))
    report.update(view(serving=1, new_ready=1))
    assert receiver.messages() == [{"READY": "1", "STATUS": "2 workers ready"}, {"STATUS": "1/2 workers ready"}]


def test_a_reload_sends_reloading_then_ready_when_its_rollout_ends(
    notifier: SystemdNotifier, receiver: Receiver
) -> None:
    report = SystemdReporter(notifier)
    report.update(view(serving=2, new_ready=2))
    receiver.messages()
    report.reload_started()
    report.update(view(serving=2, new_ready=0, reloading=True))
    report.update(view(serving=3, new_ready=1, reloading=True))
    report.update(view(serving=2, new_ready=2, alive=4))  # complete (or aborted): the old ones are draining
    messages = receiver.messages()
    assert messages[0]["RELOADING"] == "1" and "MONOTONIC_USEC" in messages[0]
    assert messages[1:] == [
        {"STATUS": "reloading: 0/2 new workers ready"},
        {"STATUS": "reloading: 1/2 new workers ready"},
        {"READY": "1", "STATUS": "2 workers ready"},
    ]


def test_a_reload_that_never_starts_a_rollout_still_ends_with_ready(
    notifier: SystemdNotifier, receiver: Receiver
) -> None:
    # HUP with a configuration file that fails to load: nothing is replaced, but systemd awaits READY=1.
    report = SystemdReporter(notifier)
    report.update(view(serving=2))
    receiver.messages()
    report.reload_started()
    report.update(view(serving=2))
    assert [set(m) for m in receiver.messages()] == [{"RELOADING", "MONOTONIC_USEC"}, {"READY"}]


def test_a_reload_before_the_first_ready_sends_no_reloading(notifier: SystemdNotifier, receiver: Receiver) -> None:
    report = SystemdReporter(notifier)
    report.update(view(serving=1))
    report.reload_started()
    report.update(view(serving=2, new_ready=0, reloading=True))
    report.update(view(serving=2, new_ready=2))
    messages = receiver.messages()
    assert all("RELOADING" not in m for m in messages)
    assert [m for m in messages if "READY" in m] == [{"READY": "1", "STATUS": "2 workers ready"}]


def test_stopping_is_sent_once_then_the_drain_is_counted_down(notifier: SystemdNotifier, receiver: Receiver) -> None:
    report = SystemdReporter(notifier)
    report.update(view(serving=2))
    receiver.messages()
    report.reload_started()
    report.update(view(serving=2, alive=2, stopping="graceful"))
    report.update(view(alive=1, stopping="graceful"))
    report.update(view(alive=0, stopping="graceful"))
    messages = receiver.messages()
    assert messages[1:] == [
        {"STOPPING": "1", "STATUS": "draining 2 workers"},
        {"STATUS": "draining 1 worker"},
        {"STATUS": "all workers stopped"},
    ]


def test_a_fast_stop_before_ready_sends_stopping_and_never_ready(notifier: SystemdNotifier, receiver: Receiver) -> None:
    report = SystemdReporter(notifier)
    report.update(view(serving=0, alive=1))
    report.update(view(serving=0, alive=1, stopping="fast"))
    assert receiver.messages() == [
        {"STATUS": "starting: 0/2 workers ready"},
        {"STOPPING": "1", "STATUS": "stopping 1 worker"},
    ]


def fill_queue(receiver: Receiver) -> int:
    """Queue datagrams on `receiver` until it takes no more, as a busy service manager would; how many."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other_service:
        other_service.setblocking(False)
        for queued in range(100_000):
            try:
                other_service.sendto(b"STATUS=other service\n", receiver.address)
            except BlockingIOError:
                return queued
    raise AssertionError("the receiver's queue never filled up")


def test_a_ready_that_could_not_be_queued_is_sent_on_the_next_turn(
    notifier: SystemdNotifier, receiver: Receiver
) -> None:
    report = SystemdReporter(notifier)
    queued = fill_queue(receiver)
    report.update(view(serving=2))
    assert len(receiver.messages()) == queued  # only the other service's
    report.update(view(serving=2))
    assert receiver.messages() == [{"READY": "1", "STATUS": "2 workers ready"}]


def test_a_reloading_that_could_not_be_queued_is_sent_before_its_ready(
    notifier: SystemdNotifier, receiver: Receiver
) -> None:
    report = SystemdReporter(notifier)
    report.update(view(serving=2))
    receiver.messages()
    fill_queue(receiver)
    report.reload_started()
    receiver.messages()
    report.update(view(serving=2))  # the rollout already ended (or never started): READY=1 must follow RELOADING=1
    assert [set(m) for m in receiver.messages()] == [{"RELOADING", "MONOTONIC_USEC"}, {"READY"}]


def test_watchdog_pings_when_due_and_caps_the_wait_until_the_next_one(receiver: Receiver) -> None:
    clock = FakeClock()
    client = SystemdNotifier(receiver.address, watchdog_usec=2_000_000)
    try:
        report = SystemdReporter(client, clock=clock)
        assert report.update(view(serving=2)) == 1.0  # pinged at once; the next one is a second away
        clock.now += 0.4
        assert report.update(view(serving=2)) == pytest.approx(0.6)
        clock.now += 0.6
        assert report.update(view(serving=2)) == 1.0
        clock.now += 5.0  # the loop was stuck: one ping when it turns again, not a burst
        assert report.update(view(serving=2)) == 1.0
        pings = [m for m in receiver.messages() if m.get("WATCHDOG") == "1"]
        assert len(pings) == 3
    finally:
        client.close()


def test_without_a_watchdog_the_wait_is_not_capped(notifier: SystemdNotifier, receiver: Receiver) -> None:
    assert SystemdReporter(notifier).update(view(serving=2)) == float("inf")
    assert all("WATCHDOG" not in m for m in receiver.messages())


@pytest.mark.parametrize(
    ("pool", "started", "text"),
    [
        (view(target=8, serving=8), True, "8 workers ready"),
        (view(target=1, serving=1), True, "1 worker ready"),
        (view(target=8, serving=7), True, "7/8 workers ready"),
        (view(target=8, serving=3), False, "starting: 3/8 workers ready"),
        (view(target=8, serving=8, new_ready=3, reloading=True), True, "reloading: 3/8 new workers ready"),
        (view(target=8, alive=8, stopping="graceful"), True, "draining 8 workers"),
        (view(target=8, alive=8, stopping="fast"), True, "stopping 8 workers"),
    ],
)
def test_status_lines_say_what_the_pool_is_doing(pool: PoolView, started: bool, text: str) -> None:
    assert describe_pool(pool, started=started) == text


# --------------------------------------------------------------------------------------------------
# Socket activation, in a child process: descriptors 3 and up belong to the test runner here.

_ACTIVATE = """
import json, os, socket, sys
from corral.core.sockets import BindError, systemd_listeners

passed = json.loads(sys.argv[1])
fds = [int(fd) for fd in sys.argv[2:]]
for position, fd in enumerate(fds):
    os.dup2(fd, 100 + position)
for position in range(len(fds)):
    os.dup2(100 + position, 3 + position)
env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": passed["count"], "LISTEN_FDNAMES": passed["names"], "X": "y"}
try:
    sockets = systemd_listeners(env)
except BindError as exc:
    print(json.dumps({"error": str(exc), "env": env}))
    raise SystemExit(0)
print(json.dumps({
    "env": env,
    "sockets": [
        {
            "fd": s.fileno(),
            "family": s.family.name,
            "inheritable": s.get_inheritable(),
            "blocking": s.getblocking(),
            "address": s.getsockname(),
        }
        for s in sockets or []
    ],
}))
"""


def _activate(descriptors: list[int], names: str, count: str | None = None) -> dict[str, Any]:
    """Run systemd_listeners in a child that finds `descriptors` at 3, 4, ... as systemd passes them."""
    passed = {"count": str(len(descriptors)) if count is None else count, "names": names}
    result = subprocess.run(
        [sys.executable, "-c", _ACTIVATE, json.dumps(passed), *map(str, descriptors)],
        pass_fds=descriptors,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _listening(family: socket.AddressFamily, address: object) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(8)
    return sock


def test_socket_activation_takes_tcp_and_unix_listeners_close_on_exec_and_clears_the_variables(
    short_dir: Path,
) -> None:
    sockets = [_listening(socket.AF_INET, ("127.0.0.1", 0)), _listening(socket.AF_UNIX, str(short_dir / "s"))]
    try:
        result = _activate([s.fileno() for s in sockets], "web:local")
    finally:
        for sock in sockets:
            sock.close()
    assert result["env"] == {"X": "y"}
    assert [(s["fd"], s["family"]) for s in result["sockets"]] == [(3, "AF_INET"), (4, "AF_UNIX")]
    assert all(not s["inheritable"] and not s["blocking"] for s in result["sockets"])
    assert result["sockets"][1]["address"] == str(short_dir / "s")


def test_socket_activation_takes_an_ipv6_listener() -> None:
    try:
        sock = _listening(socket.AF_INET6, ("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        result = _activate([sock.fileno()], "web6")
    finally:
        sock.close()
    assert [s["family"] for s in result["sockets"]] == ["AF_INET6"]


def test_socket_activation_refuses_a_datagram_socket_by_its_name() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        result = _activate([sock.fileno()], "metrics")
    finally:
        sock.close()
    assert "systemd socket 'metrics' (descriptor 3)" in result["error"]
    assert "ListenStream=" in result["error"]
    assert result["env"] == {"X": "y"}


def test_socket_activation_refuses_a_socket_that_is_not_listening() -> None:
    # Accept=yes hands over one accepted connection instead of a listener.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        result = _activate([sock.fileno()], "connection")
    finally:
        sock.close()
    assert "systemd socket 'connection'" in result["error"] and "Accept=no" in result["error"]


def test_socket_activation_refuses_a_descriptor_that_is_not_a_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        result = _activate([read_end], "")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert "systemd socket 'unknown' (descriptor 3) is not a socket" in result["error"]


def test_socket_activation_refuses_a_malformed_listen_fds() -> None:
    result = _activate([], "", count="two")
    assert "LISTEN_FDS='two'" in result["error"]
