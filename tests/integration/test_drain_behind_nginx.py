"""Rolling restarts behind nginx with upstream keep-alive: no POST may turn into a 502.

nginx reuses its pooled upstream connections and does not retry a POST whose connection was closed under it;
a draining worker that closed idle connections early lost exactly those requests. The race itself needs a close
and a reuse within the same instant, which a bounded test rarely hits: tests/integration/test_drain.py proves the
server side deterministically with a client that, like a busy proxy, sends without first watching for a close.
This one proves the deployment as a whole: a real proxy, its pool, two rolling restarts, no failed POST.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, ServerFactory, free_port, wait_for_ready_workers, wait_until

APP = "tests.apps.drain_apps:app"

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/install-system-packages)")

# nginx's upstream keepalive_timeout is below corral's keep-alive timeout, as a proxy in front of any keep-alive
# server must be set up: the server never closes a connection the proxy may still pick.
NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream corral {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://corral;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(prefix: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    assert NGINX is not None
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, upstream=upstream, port=port))
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/pid", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(answers, 15), (prefix / "error.log").read_text()
    return proc, port


@pytest.fixture
def behind_nginx(serve: ServerFactory, tmp_path: Path) -> Iterator[tuple[Server, int]]:
    server = serve(APP, "-w", "2", "--keep-alive", "5", "--graceful-timeout", "20")
    wait_for_ready_workers(server, 2)
    proc, port = start_nginx(tmp_path, server.port)
    try:
        yield server, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class ProxiedPosts:
    """Threads POSTing through the proxy with short idle pauses; every answer that is not 200 is kept."""

    def __init__(self, port: int, clients: int = 16, max_seconds: float = 60.0) -> None:
        self.url = f"http://127.0.0.1:{port}/pid"
        self.max_seconds = max_seconds
        self.answered = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> ProxiedPosts:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def wait_for_answers(self, count: int, timeout: float = 20.0) -> bool:
        target = self.answered + count
        return wait_until(lambda: self.answered >= target, timeout)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10) as client:
            for _ in range(100_000):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    response = client.post(self.url, content=b"x" * 200)
                    outcome = "" if response.status_code == 200 else f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    outcome = repr(exc)
                with self._lock:
                    if outcome:
                        self.failures.append(outcome)
                    else:
                        self.answered += 1
                time.sleep(rng.uniform(0.0, 1.5))


def test_rolling_restarts_behind_nginx_with_upstream_keepalive_lose_no_post(behind_nginx: tuple[Server, int]) -> None:
    server, port = behind_nginx
    with ProxiedPosts(port) as posts:
        assert posts.wait_for_answers(40)
        for _ in range(2):
            old = wait_for_ready_workers(server, 2)
            server.signal(signal.SIGHUP)
            assert wait_until(
                lambda old=old: all(f"[{pid}] [INFO] Shutdown complete" in server.stderr_text() for pid in old), 40
            ), server.stderr_text()
            assert posts.wait_for_answers(40)
        posts.stop()
    failed = len(posts.failures)
    assert failed == 0, f"{failed} of {posts.answered + failed} requests failed: {posts.failures[:5]}"
