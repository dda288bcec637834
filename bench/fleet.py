"""POSTs lost behind nginx while a fleet of three instances restarts: corral against gunicorn + UvicornWorker.

Run with bench/.venv's Python (bench/run --setup-only installs it); needs nginx (Debian package):
    bench/.venv/bin/python bench/fleet.py [--servers corral,gunicorn-uvicorn] [--rounds 1]

Three instances (1 worker each) on 127.0.0.1 behind nginx, configured from deploy/nginx/nginx.conf (upstream
keep-alive: `keepalive 32`, `proxy_http_version 1.1`, `Connection ""`), under a steady POST load from a few
keep-alive client threads. nginx never retries a POST once it was sent, so a POST that meets an upstream
connection the server closed comes back 502: each one is a request a deploy lost. Two scenarios:

* hup: HUP to each master (a rolling replacement of its worker inside the instance), all three at once.
* rolling: TERM one instance, wait until it has exited, start its successor on the same port, wait until it
  answers, then the next. The same port, because nginx's upstream list is static: the successor can bind only
  once the old master has closed its listener (it exits after its drain); meanwhile that port refuses
  connections and nginx passes the POSTs to the other two (a refused connection was never sent, so that
  retry is safe).

The integration tests (tests/integration/test_fleet_nginx.py) use the same pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NGINX_TEMPLATE",
    "Fleet",
    "Nginx",
    "PostLoad",
    "free_port",
    "nginx_binary",
    "render_nginx",
    "server_command",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf"
APP = "bench.apps:app"
POST_BODY = b"x" * 256


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


# --------------------------------------------------------------------------------------------------
# nginx, configured from the deploy example


def _substitute(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    """Replace exactly `count` matches, so the example and this renderer cannot drift apart unnoticed."""
    new, found = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if found != count:
        raise ValueError(f"{NGINX_TEMPLATE.name}: expected {count} line(s) matching {pattern!r}, found {found}")
    return new


def render_nginx(template: str, *, listen_port: int, upstream_ports: list[int], workdir: Path) -> str:
    """The deploy example with this run's ports, and every file nginx writes inside `workdir`."""
    text = _substitute(template, r"^pid .*;.*$", f"pid {workdir / 'nginx.pid'};")
    text = _substitute(text, r"^error_log .*;.*$", f"error_log {workdir / 'error.log'} warn;")
    text = _substitute(text, r"^worker_processes .*;$", "worker_processes 1;")
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in upstream_ports)
    text = _substitute(text, r"^        server 127\.0\.0\.1:\d+ max_fails=0;.*$", "", count=3)
    text = _substitute(text, r"^(    upstream corral \{)$", "    upstream corral {\n" + servers)
    text = _substitute(text, r"^        listen .*;.*$", f"        listen 127.0.0.1:{listen_port};")
    temp = "\n".join(
        f"    {name}_temp_path {workdir / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return _substitute(text, r"^http \{$", "http {\n" + temp)


class Nginx:
    """One nginx in the foreground, started from a rendered config; stopped by its pid."""

    def __init__(self, binary: str, workdir: Path, listen_port: int, upstream_ports: list[int]) -> None:
        self.workdir = workdir
        self.port = listen_port
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "nginx.conf"
        self.config.write_text(
            render_nginx(
                NGINX_TEMPLATE.read_text(), listen_port=listen_port, upstream_ports=upstream_ports, workdir=workdir
            )
        )
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        argv = [self.binary, "-c", str(self.config), "-p", str(self.workdir), "-e", str(self.workdir / "error.log")]
        with (self.workdir / "stderr.log").open("wb") as stderr:
            self.proc = subprocess.Popen(
                [*argv, "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
        if not _wait_for_port(self.port, timeout, self.proc):
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.errors()}")

    def errors(self) -> str:
        paths = (self.workdir / "stderr.log", self.workdir / "error.log")
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------------------------
# The servers


def server_command(kind: str, port: int, python: str = sys.executable, extra: tuple[str, ...] = ()) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if kind == "corral":
        return [python, "-m", "corral", APP, "--bind", bind, "--workers", "1", "--keep-alive", "75", *extra]
    if kind == "gunicorn-uvicorn":
        return [
            python, "-m", "gunicorn", APP, "--bind", bind, "--workers", "1", "--keep-alive", "75",
            "-k", "uvicorn_worker.UvicornWorker", *extra,
        ]  # fmt: skip
    if kind == "gunicorn-asgi":
        return [
            python, "-m", "gunicorn", APP, "--bind", bind, "--workers", "1", "--keep-alive", "75", "-k", "asgi",
            *extra,
        ]  # fmt: skip
    raise ValueError(f"unknown server {kind!r}")


@dataclass
class Instance:
    argv: list[str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        if not _wait_for_port(self.port, timeout, self.proc):
            self.kill()
            raise RuntimeError(f"{self.argv[2:4]} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def workers(self) -> set[int]:
        return set(_children(self.proc.pid)) if self.proc is not None else set()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if not self.wait(15):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.wait(10)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


# --------------------------------------------------------------------------------------------------
# The load


@dataclass
class PostLoad:
    """A few threads, each sending POSTs one after another on one keep-alive connection (a new one after an
    error), until stopped or the bounds are reached. Counts every answer by status, and every failure."""

    port: int
    threads: int = 4
    max_requests: int = 20_000
    max_seconds: float = 60.0
    pause: float = 0.0  # seconds each thread waits between POSTs (0: back to back)
    outcomes: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> PostLoad:
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"post-load-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._workers:
            thread.join(15)
        return self.outcomes

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.total - self.outcomes["200"]

    def wait_for_more(self, count: int, timeout: float = 30.0) -> bool:
        target = self.total + count
        deadline = time.monotonic() + timeout
        while self.total < target and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.02)
        return self.total >= target

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        per_thread = self.max_requests // self.threads
        conn: http.client.HTTPConnection | None = None
        index = 0
        for _ in range(per_thread):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("POST", "/echo", body=POST_BODY, headers={"Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                body = response.read()
                outcome = str(response.status) if response.status != 200 or body == POST_BODY else "bad body"
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                conn.close()
                conn = None
            with self._lock:
                self.outcomes[outcome] += 1
            if self.pause:
                self._stop.wait(self.pause * (0.8 + 0.4 * (index := (index + 1) % 5) / 4))
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------------------------------
# The fleet and the scenarios


class Fleet:
    """Three instances of one server behind one nginx."""

    def __init__(
        self, kind: str, workdir: Path, *, size: int = 3, python: str = sys.executable, extra: tuple[str, ...] = ()
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.kind = kind
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(size)]
        self.python = python
        self.extra = extra
        self.instances = [self._instance(port, 0) for port in self.ports]
        self.nginx = Nginx(binary, workdir / "nginx", free_port(), self.ports)
        self.generation = 0

    def _instance(self, port: int, generation: int) -> Instance:
        argv = server_command(self.kind, port, self.python, self.extra)
        return Instance(argv, port, self.workdir / f"{self.kind}-{port}-{generation}.log")

    def __enter__(self) -> Fleet:
        try:
            for instance in self.instances:
                instance.start()
            self.nginx.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.nginx.stop()
        for instance in self.instances:
            instance.kill()

    def hup_all(self, timeout: float = 30.0) -> bool:
        """HUP every master at once; whether each replaced its worker within `timeout`."""
        before = [instance.workers() for instance in self.instances]
        for instance in self.instances:
            instance.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = [instance.workers() for instance in self.instances]
            if all(current and not (current & old) for current, old in zip(now, before, strict=True)):
                return True
            time.sleep(0.05)
        return False

    def rolling_restart(self, load: PostLoad | None = None, between: int = 200) -> None:
        """TERM each instance in turn, wait for its exit, start its successor on the same port."""
        self.generation += 1
        for index, old in enumerate(self.instances):
            old.signal(signal.SIGTERM)
            if not old.wait(60):
                raise RuntimeError(f"{self.kind} on port {old.port} did not exit within 60 s of TERM")
            successor = self._instance(old.port, self.generation)
            self.instances[index] = successor
            successor.start()
            if load is not None:
                load.wait_for_more(between)  # the successor takes its share before the next one goes


def measure(kind: str, scenario: str, workdir: Path, python: str, threads: int, pause: float) -> PostLoad:
    settle = 500 if not pause else threads * 3
    with Fleet(kind, workdir, python=python) as fleet, PostLoad(fleet.nginx.port, threads, pause=pause) as load:
        load.wait_for_more(settle)
        if scenario == "hup":
            fleet.hup_all()
        else:
            fleet.rolling_restart(load, between=settle)
        load.wait_for_more(settle)
        load.stop()
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="corral,gunicorn-uvicorn", help="also: gunicorn-asgi (gunicorn -k asgi)")
    parser.add_argument("--scenarios", default="hup,rolling")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4, help="client threads, each on its own connection")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between a thread's POSTs (0: none)")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and nginx files (default: a temp dir)")
    args = parser.parse_args()
    if nginx_binary() is None:
        sys.exit("nginx is not installed (Debian: apt-get install nginx)")
    import tempfile

    base = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-"))
    print(f"{'server':<18} {'scenario':<8} {'round':>5} {'POSTs':>7} {'lost':>5}  outcomes  (logs: {base})")
    for kind in args.servers.split(","):
        for scenario in args.scenarios.split(","):
            for round_ in range(1, args.rounds + 1):
                workdir = base / f"{kind}-{scenario}-{round_}"
                load = measure(kind, scenario, workdir, sys.executable, args.threads, args.pause)
                outcomes = ", ".join(f"{name}: {count}" for name, count in sorted(load.outcomes.items()))
                print(f"{kind:<18} {scenario:<8} {round_:>5} {load.total:>7} {load.failed:>5}  {outcomes}")


if __name__ == "__main__":
    main()
