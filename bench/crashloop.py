"""A request that kills its worker, sent over and over: do healthy requests keep being answered, and how soon
is the pool whole again once the bad traffic stops? corral against gunicorn with the uvicorn worker.

Run with bench/.venv's Python (bench/run --setup-only installs it):
    bench/.venv/bin/python bench/crashloop.py [--duration 15] [--only corral,gunicorn-uvicorn]
For each server: 2 workers on 127.0.0.1 serving this module's `app`. `--bad-clients` clients each send
`GET /segv` (the worker kills itself with SIGSEGV) back to back, or every `--bad-every` s, for `duration`
seconds, while another client sends `GET /ok` every 0.1 s on a fresh connection and counts answered and
failed requests: how each failed (refused, reset or closed before any byte, timed out after REQUEST_TIMEOUT,
and at which step) and when it was sent. Then: the seconds from the end of the bad traffic
until the pool is whole again (corral: every worker READY in the admin endpoint's /status; gunicorn: as many
live worker processes as configured and one `/ok` answered).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
APP = "bench.crashloop:app"
WORKERS = 2
HEALTHY_EVERY = 0.1
REQUEST_TIMEOUT = 2.0
WHOLE_WITHIN = 60.0


async def app(scope: dict, receive: Any, send: Any) -> None:
    """/segv kills the worker serving it; anything else answers 200 "ok"."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\n"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commands(port: int, admin_port: int) -> dict[str, list[str]]:
    bind = f"127.0.0.1:{port}"
    return {
        "corral": [
            str(BIN / "corral"), APP, "--bind", bind, "--workers", str(WORKERS), "--log-level", "warning",
            "--admin-bind", f"127.0.0.1:{admin_port}",
        ],
        "gunicorn-uvicorn": [
            str(BIN / "gunicorn"), APP, "--bind", bind, "--workers", str(WORKERS),
            "-k", "uvicorn_worker.UvicornWorker", "--log-level", "warning",
        ],
    }  # fmt: skip


def get(port: int, path: str) -> bool:
    """One request on a fresh connection: True when it was answered 200."""
    return outcome(port, path) == ANSWERED


ANSWERED = "answered"


def outcome(port: int, path: str) -> str:
    """One request on a fresh connection: ANSWERED (200), or how it failed, and at which step."""
    step = "connect"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as conn:
            step = "send"
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            step = "receive"
            head = conn.recv(64)
    except TimeoutError:
        return f"{step}: timed out"
    except OSError as exc:
        return f"{step}: {type(exc).__name__}"
    if not head:
        return "receive: closed before any byte"
    return ANSWERED if head.startswith(b"HTTP/1.1 200") else f"answered {head[:12]!r}"


def wait_ready(port: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(port, "/ok"):
            return True
        time.sleep(0.2)
    return False


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def corral_whole(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=REQUEST_TIMEOUT) as response:
            document = json.load(response)
    except (OSError, ValueError):
        return False
    ready = [w for w in document["workers"] if w["state"] == "ready"]
    return len(ready) >= document["master"]["target"]


def gunicorn_whole(master: int, port: int) -> bool:
    return len(children(master)) >= WORKERS and get(port, "/ok")


def measure(
    name: str, argv: list[str], port: int, admin_port: int, duration: float, bad_every: float, bad_clients: int
) -> None:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_ready(port):
            print(f"{name}: did not start")
            return
        time.sleep(1)
        stop = threading.Event()
        counts = {"answered": 0, "failed": 0, "bad sent": 0}
        failures: dict[str, int] = {}
        slowest = [0.0]  # the longest a healthy request took to be answered
        failed_at: list[float] = []  # when each failed healthy request was sent, seconds into the bad traffic

        def bad() -> None:
            while not stop.is_set():
                get(port, "/segv")
                counts["bad sent"] += 1
                stop.wait(bad_every)

        def healthy() -> None:
            while not stop.is_set():
                began = time.monotonic()
                result = outcome(port, "/ok")
                if result == ANSWERED:
                    counts["answered"] += 1
                    slowest[0] = max(slowest[0], time.monotonic() - began)
                else:
                    counts["failed"] += 1
                    failures[result] = failures.get(result, 0) + 1
                    failed_at.append(began - started)
                time.sleep(HEALTHY_EVERY)

        threads = [threading.Thread(target=bad) for _ in range(bad_clients)] + [threading.Thread(target=healthy)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(duration)
        stop.set()
        for thread in threads:
            thread.join()
        stopped = time.monotonic()
        whole = (lambda: corral_whole(admin_port)) if name == "corral" else (lambda: gunicorn_whole(proc.pid, port))
        while not whole() and time.monotonic() - stopped < WHOLE_WITHIN:
            time.sleep(0.02)
        took = time.monotonic() - stopped
        late = "" if took < WHOLE_WITHIN else " (not whole: gave up)"
        print(
            f"{name}: {duration:g} s of /segv ({counts['bad sent']} sent): healthy /ok answered {counts['answered']}, "
            f"failed {counts['failed']}{_explain(failures, failed_at)}, slowest answer {slowest[0]:.2f} s; "
            f"pool whole {took:.2f} s after the bad traffic stopped{late}"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _explain(failures: dict[str, int], failed_at: list[float]) -> str:
    if not failures:
        return ""
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(failures.items()))
    return f" ({reasons}; sent {min(failed_at):.1f} to {max(failed_at):.1f} s into the bad traffic)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--bad-every", type=float, default=0.0, help="pause between /segv requests (s)")
    parser.add_argument("--bad-clients", type=int, default=1)
    parser.add_argument("--only", default="corral,gunicorn-uvicorn")
    args = parser.parse_args()
    for name in args.only.split(","):
        port, admin_port = free_port(), free_port()
        measure(
            name, commands(port, admin_port)[name], port, admin_port, args.duration, args.bad_every, args.bad_clients
        )


if __name__ == "__main__":
    main()
