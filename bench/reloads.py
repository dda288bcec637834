"""Failed requests during HUP reloads under load, and throughput with 2 workers: corral against gunicorn.

Run with bench/.venv's Python (bench/run --setup-only installs it):
    bench/.venv/bin/python bench/reloads.py [--reloads 10] [--duration 15]
For each server: 2 workers on 127.0.0.1, wrk -t1 -c32 for `duration` seconds, HUP to the master
`reloads` times, evenly spread; then the same without reloads for throughput. Prints wrk's errors and
non-2xx counts, req/s, and the worker pids before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
APP = "bench.apps:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commands(port: int) -> dict[str, list[str]]:
    bind = f"127.0.0.1:{port}"
    return {
        "corral": [str(BIN / "corral"), APP, "--bind", bind, "--workers", "2", "--log-level", "warning"],
        "gunicorn-uvicorn": [
            str(BIN / "gunicorn"), APP, "--bind", bind, "--workers", "2",
            "-k", "uvicorn_worker.UvicornWorker", "--log-level", "warning",
        ],
    }  # fmt: skip


def wait_ready(port: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if conn.recv(64).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False




def run_wrk(port: int, duration: int) -> str:
    return subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{duration}s", "--timeout", "5s", f"http://127.0.0.1:{port}/plaintext"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout  # fmt: skip


def summarize(output: str) -> dict[str, str]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Socket errors: (.*)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "req/s": rps.group(1) if rps else "?",
        "requests": total.group(1) if total else "?",
        "socket errors": errors.group(1) if errors else "none",
        "non-2xx": non2xx.group(1) if non2xx else "0",
    }


def measure(name: str, argv: list[str], port: int, reloads: int, duration: int) -> None:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if not wait_ready(port):
            print(f"{name}: did not start")
            return
        time.sleep(1)
        before = harness.child_pids(proc.pid)

        def send_hups() -> None:
            for _ in range(reloads):
                time.sleep(duration / (reloads + 1))
                os.kill(proc.pid, signal.SIGHUP)

        hupper = threading.Thread(target=send_hups)
        hupper.start()
        with_reloads = summarize(run_wrk(port, duration))
        hupper.join()
        time.sleep(3)
        after = harness.child_pids(proc.pid)
        steady = summarize(run_wrk(port, duration))
        print(f"{name}: {reloads} HUPs under load -> {with_reloads}")
        print(f"{name}: worker pids before {before}, after {after}")
        print(f"{name}: no reloads, 2 workers -> {steady}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--only", default="corral,gunicorn-uvicorn")
    args = parser.parse_args()
    for name in args.only.split(","):
        port = free_port()
        measure(name, commands(port)[name], port, args.reloads, args.duration)


if __name__ == "__main__":
    main()
