"""The resident memory of one worker serving a WSGI app, corral's against gunicorn's, without a load test.

Each server runs one worker (`-k gthread --threads 4`, as in bench/wsgi.py) serving bench/wsgi_apps.py; after
200 keep-alive-less requests, the worker's VmRSS, RssAnon and RssFile are read from /proc, and from its
smaps_rollup its PSS (shared pages divided among the processes that share them) and USS (its private pages:
what one more worker costs). RSS counts every page inherited from the master, so a master that imports more
before forking raises every worker's RSS while it lowers the memory the pool really uses; USS shows that.
The figures do not depend on what else the machine is doing, so this is the check for a change to what a
worker imports or holds:

    bench/.venv/bin/python bench/worker_rss.py [--servers corral,gunicorn-gthread] [--apps flask,plain]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.wsgi import APPS, START_TIMEOUT, answers, group_pids, running

__all__ = ["main"]

REQUESTS = 200
_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def memory_kib(pid: int) -> dict[str, int]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in _FIELDS:
            figures[name] = int(value.split()[0])
    return figures


def shared_memory_kib(pid: int) -> dict[str, int]:
    """PSS and USS (private clean + private dirty) in KiB, from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0])
    return {"Pss": fields["Pss"], "Uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def worker_memory(server: str, app_name: str) -> dict[str, int]:
    app, path = APPS[app_name]
    with running(server, app) as (proc, port):
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(port, path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{server} did not start")
            time.sleep(0.1)
        for _ in range(REQUESTS):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
        workers = [pid for pid in group_pids(proc.pid) if pid != proc.pid]
        if len(workers) != 1:
            raise SystemExit(f"{server}: expected one worker, found {workers}")
        return {**memory_kib(workers[0]), **shared_memory_kib(workers[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="corral,gunicorn-gthread")
    parser.add_argument("--apps", default="flask")
    args = parser.parse_args(argv)
    print("| app | server | worker VmRSS MiB | RssAnon MiB | RssFile MiB | PSS MiB | USS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for app_name in args.apps.split(","):
        for server in args.servers.split(","):
            kib = worker_memory(server, app_name)
            figures = " | ".join(f"{kib[name] / 1024:.1f}" for name in (*_FIELDS, "Pss", "Uss"))
            print(f"| {app_name} | {server} | {figures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
