"""WSGI benchmark: a Flask JSON hello and a plain WSGI callable, corral against gunicorn (gthread with 4 threads,
and sync), uvicorn --interface wsgi and Granian's WSGI interface. One worker each, the server pinned to core 0
and wrk to core 1.

Run with bench/.venv's Python (`bench/run --setup-only` installs it):
    bench/.venv/bin/python bench/wsgi.py [--duration 10] [--connections 64] [--servers corral,gunicorn-gthread]
Per row: req/s and p99 from wrk, CPU µs per request (utime+stime of every process of the server during the run,
divided by the requests wrk completed: meaningful on a busy machine too), failed requests (non-2xx, socket
errors), and the serving process's RSS after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 30.0
APPS = {"flask": ("bench.wsgi_apps:flask_app", "/json"), "plain": ("bench.wsgi_apps:plain", "/")}
SERVERS = ("corral", "corral-sync", "gunicorn-gthread", "gunicorn-sync", "uvicorn-wsgi", "granian-wsgi")


def server_command(name: str, app: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    bin_ = str(VENV_BIN)
    commands = {
        "corral": [f"{bin_}/corral", app, "-b", bind, "-w", "1", "-k", "gthread", "--threads", "4",
                   "--log-level", "warning"],
        "corral-sync": [f"{bin_}/corral", app, "-b", bind, "-w", "1", "-k", "sync", "--log-level", "warning"],
        "gunicorn-gthread": [f"{bin_}/gunicorn", app, "-b", bind, "-w", "1", "-k", "gthread", "--threads", "4",
                             "--log-level", "warning"],
        "gunicorn-sync": [f"{bin_}/gunicorn", app, "-b", bind, "-w", "1", "-k", "sync", "--log-level", "warning"],
        "uvicorn-wsgi": [f"{bin_}/uvicorn", app, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        "granian-wsgi": [f"{bin_}/granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                         "--workers", "1", "--http", "1", "--log-level", "warning", app],
    }  # fmt: skip
    return commands[name]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


def cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    return 0


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return 0


@contextlib.contextmanager
def running(name: str, app: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    argv = ["taskset", "-c", "0", *server_command(name, app, port)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield proc, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
    except OSError:
        return False
    return response.status == 200 and b"Hello, World!" in body


@dataclass
class Row:
    server: str
    app: str
    rps: float = 0.0
    p99: str = "-"
    cpu_us: float = 0.0
    failed: int = 0
    rss_mib: float = 0.0
    note: str = ""


def wrk(port: int, path: str, seconds: float, connections: int) -> str:
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
            f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout


def parse_wrk(output: str) -> tuple[int, float, str, int]:
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)  # the latency distribution's line
    failed = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return requests, rps, p99[1] if p99 else "-", failed + (int(non2xx[1]) if non2xx else 0)


def measure(name: str, app_name: str, seconds: float, connections: int) -> Row:
    app, path = APPS[app_name]
    row = Row(name, app_name)
    with running(name, app) as (proc, port):
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(port, path):
            if proc.poll() is not None or time.monotonic() > deadline:
                error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                row.note = "did not start: " + " ".join(error.split())[-200:]
                return row
            time.sleep(0.1)
        wrk(port, path, 2, connections)  # warm-up
        pids = group_pids(proc.pid)
        before = sum(cpu_ticks(pid) for pid in pids)
        output = wrk(port, path, seconds, connections)
        used = sum(cpu_ticks(pid) for pid in pids) - before
        requests, row.rps, row.p99, row.failed = parse_wrk(output)
        row.cpu_us = used / CLOCK_TICKS / max(requests, 1) * 1e6
        busiest = max(pids, key=cpu_ticks)
        row.rss_mib = rss_bytes(busiest) / 2**20
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--apps", default=",".join(APPS))
    args = parser.parse_args(argv)
    print("| app | server | req/s | p99 | CPU µs/req | failed | worker RSS MiB | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for app_name in args.apps.split(","):
        for name in args.servers.split(","):
            row = measure(name, app_name, args.duration, args.connections)
            print(f"| {row.app} | {row.server} | {row.rps:.0f} | {row.p99} | {row.cpu_us:.0f} | {row.failed} | "
                  f"{row.rss_mib:.1f} | {row.note} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
