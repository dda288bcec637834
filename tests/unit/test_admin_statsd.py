"""StatsD from the master: addresses, prefix and tags, the lines of one flush (deltas, gauges, the mean
duration with its sample rate), datagram packing, and a client sending to a real UDP socket on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from corral.core.scoreboard import (
    ListenQueue,
    MasterState,
    RestartReason,
    Scoreboard,
    Totals,
    WorkerCounters,
    WorkerState,
)
from corral.master.statsd import (
    MAX_DATAGRAM,
    StatsdAddress,
    StatsdClient,
    _datagrams,
    parse_statsd_address,
    statsd_lines,
    statsd_prefix,
    statsd_tags,
)


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    with Scoreboard(4) as scoreboard:
        scoreboard.set_master(1, MasterState.RUNNING, 1)
        scoreboard.master_beat(10.0, 3)
        scoreboard.configure_request_metrics(True, (0.001, 0.1))
        scoreboard.set_listen_queues([ListenQueue(4, 1024)])
        yield scoreboard


def worker(board: Scoreboard, index: int, counters: WorkerCounters, *, ready_at: float = 2.5) -> None:
    slot = board.slot(index)
    slot.claim(100 + index, 1, 2.0)
    slot.set_state(WorkerState.READY, ready_at)
    slot.publish(counters, 3.0, 1000)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("localhost:9125", StatsdAddress("localhost", 9125)),
        ("statsd", StatsdAddress("statsd", 8125)),
        ("[::1]:9000", StatsdAddress("::1", 9000)),
        ("unix:/run/statsd.sock", StatsdAddress(path="/run/statsd.sock")),
        ("unix:///run/statsd.sock", StatsdAddress(path="/run/statsd.sock")),
    ],
)
def test_statsd_addresses_parse_like_gunicorns(text: str, address: StatsdAddress) -> None:
    assert parse_statsd_address(text) == address
    assert parse_statsd_address(str(address)) == address


@pytest.mark.parametrize("text", ["", ":8125", "host:0", "host:99999", "host:port", "::1:8125", "unix:"])
def test_bad_statsd_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_statsd_address(text)


def test_prefix_gets_one_dot_and_tags_are_normalised() -> None:
    assert (statsd_prefix(""), statsd_prefix("app"), statsd_prefix("app.")) == ("", "app.", "app.")
    assert statsd_tags(" env:prod , team:web,") == "env:prod,team:web"
    for bad in ("a|b", "x#y", "with space"):
        with pytest.raises(ValueError):
            statsd_tags(bad)
    with pytest.raises(ValueError):
        statsd_prefix("my app")


def test_a_flush_sends_counter_deltas_gauges_and_the_mean_duration(board: Scoreboard) -> None:
    worker(board, 0, WorkerCounters(requests=10, responses=[0, 9, 0, 1, 0], methods=[8, 0, 2, 0, 0, 0, 0, 0],
                                    duration_ns=30_000_000, latency=[4, 6] + [0] * 14, bytes_in=500, bytes_out=900,
                                    active_connections=2))  # fmt: skip
    previous = Totals(requests=6, responses=(0, 6, 0, 0, 0), methods=(6,) + (0,) * 7, duration_ns=10_000_000,
                      latency=(3, 3) + (0,) * 14, bytes_in=300, bytes_out=600)  # fmt: skip
    board.count_restart(RestartReason.CRASH)
    lines = statsd_lines(board.read_board(), previous, (), ["127.0.0.1:8000"], booted=[0.5])
    assert lines[:6] == [
        "gunicorn.requests:4|c",
        "gunicorn.request.status.2xx:3|c",
        "gunicorn.request.status.4xx:1|c",
        "corral.request.method.GET:2|c",
        "corral.request.method.POST:2|c",
        "corral.request.bytes:200|c",
    ]
    assert "corral.response.bytes:300|c" in lines
    assert "gunicorn.request.duration:5|ms|@0.25" in lines  # (30 - 10) ms over 4 requests
    assert "corral.workers.restarts.crash:1|c" in lines
    for gauge in ("gunicorn.workers:1|g", "corral.workers.target:3|g", "corral.workers.ready:1|g",
                  "corral.connections.active:2|g", "corral.listen.backlog.127_0_0_1_8000:4|g",
                  "corral.listen.backlog_max.127_0_0_1_8000:1024|g", "corral.app.boot:500|ms"):  # fmt: skip
        assert gauge in lines


def test_nothing_new_sends_gauges_only(board: Scoreboard) -> None:
    worker(board, 0, WorkerCounters(requests=3))
    read = board.read_board()
    lines = statsd_lines(read, read.totals(), read.restarts, [])
    assert lines and all(line.endswith("|g") for line in lines)


def test_a_gauge_never_goes_out_negative(board: Scoreboard) -> None:
    worker(board, 0, WorkerCounters(active_requests=-2))  # a transient miscount in a worker
    assert "corral.requests.active:0|g" in statsd_lines(board.read_board(), Totals(), (), [])


def test_lines_are_packed_into_datagrams_that_fit_the_mtu() -> None:
    lines = [f"corral.metric{i}:{i}|c" for i in range(300)]
    datagrams = _datagrams(lines)
    assert len(datagrams) > 1 and all(len(datagram) <= MAX_DATAGRAM for datagram in datagrams)
    assert b"\n".join(datagrams).decode().split("\n") == lines


def test_the_client_sends_prefixed_tagged_lines_to_a_real_udp_server(board: Scoreboard) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        address = StatsdAddress("127.0.0.1", server.getsockname()[1])
        client = StatsdClient(address, "shop", "env:test", [], logging.getLogger("test"))
        try:
            worker(board, 0, WorkerCounters(requests=2, responses=[0, 2, 0, 0, 0]))
            client.flush(board.read_board())
            first = server.recv(65536).decode().split("\n")
            board.slot(0).publish(WorkerCounters(requests=5, responses=[0, 5, 0, 0, 0]), 4.0, 1000)
            client.flush(board.read_board())
            second = server.recv(65536).decode().split("\n")
        finally:
            client.close()
    assert "shop.gunicorn.requests:2|c|#env:test" in first
    assert "shop.corral.app.boot:500|ms|#env:test" in first
    assert "shop.gunicorn.requests:3|c|#env:test" in second  # the delta since the last flush
    assert not any("corral.app.boot" in line for line in second)  # each boot is sent once


def test_sending_to_nobody_neither_raises_nor_blocks(board: Scoreboard, caplog: pytest.LogCaptureFixture) -> None:
    client = StatsdClient(StatsdAddress(path="/nonexistent/statsd.sock"), "", "", [], logging.getLogger("test"))
    try:
        client.flush(board.read_board())
        client.flush(board.read_board())
    finally:
        client.close()
    assert len([r for r in caplog.records if "cannot send" in r.getMessage()]) == 1  # said once, not per flush


def test_maybe_flush_flushes_once_per_interval(board: Scoreboard) -> None:
    now = [100.0]
    reads = []

    def read() -> object:
        reads.append(now[0])
        return board.read_board()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        client = StatsdClient(StatsdAddress("127.0.0.1", server.getsockname()[1]), "", "", [],
                              logging.getLogger("test"), clock=lambda: now[0])  # fmt: skip
        try:
            for step in (0.0, 0.3, 0.6, 1.05, 1.5, 2.1):
                now[0] = 100.0 + step
                client.maybe_flush(read)  # type: ignore[arg-type]
        finally:
            client.close()
    assert reads == [100.0, 101.05, 102.1]
