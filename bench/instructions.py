"""Counts the CPU instructions corral's own code spends on one keep-alive request, with no sockets.

The protocol is driven in-process through a fake transport, so what is counted is corral's parsing, request
cycle and response writing plus the app, not the kernel. Run under callgrind, the count is the same whatever
else the machine is doing, which makes it the figure to compare before and after a change to the request path
on a busy machine (req/s from `bench/run` needs a quiet one):

    bench/.venv/bin/python bench/instructions.py            # runs itself twice under valgrind, prints per request
    bench/.venv/bin/python bench/instructions.py --src OTHER/src   # the same for another checkout's corral

Two runs with different request counts are subtracted, so start-up and import cost cancel out.

The wsgi_plain and wsgi_flask scenarios run bench/wsgi_apps.py's callables in corral's WSGI thread pool, as
`-k gthread --threads 4`. Valgrind runs one thread at a time and their interleaving varies, so their counts vary
by a few percent from run to run (the others do not): compare them with --requests 1000 5000 or more, and with
`--loop uvloop`, as a worker runs. The *_sync scenarios run the same callables as `-k sync` does, on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["main"]

_ITEM_BODY = (Path(__file__).resolve().parent / "item.json").read_bytes()
_HEAD = b"HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
_TESTS = {
    "plaintext": b"GET /plaintext " + _HEAD + b"\r\n",
    "json": b"GET /json " + _HEAD + b"\r\n",
    "fastapi_json": b"GET /fastapi/json " + _HEAD + b"\r\n",
    "fastapi_body": b"POST /fastapi/items " + _HEAD
    + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_ITEM_BODY), _ITEM_BODY),
    "fastapi_stream": b"GET /fastapi/stream " + _HEAD + b"\r\n",
    "wsgi_plain": b"GET / " + _HEAD + b"\r\n",
    "wsgi_flask": b"GET /json " + _HEAD + b"\r\n",
    "wsgi_plain_sync": b"GET / " + _HEAD + b"\r\n",
    "wsgi_flask_sync": b"GET /json " + _HEAD + b"\r\n",
}
# bench/wsgi_apps.py's callable each WSGI scenario runs, and with how many threads (1: on the loop, as -k sync).
_WSGI_APPS = {
    "wsgi_plain": ("plain", 4),
    "wsgi_flask": ("flask_app", 4),
    "wsgi_plain_sync": ("plain", 1),
    "wsgi_flask_sync": ("flask_app", 1),
}
_SMALL, _LARGE = 2_000, 12_000


class _Transport(asyncio.Transport):
    """Keeps only a byte count of what is written: enough for the protocol, nothing to grow."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False
        self.write_waiter: asyncio.Future[None] | None = None  # resolved by the next write

    def write(self, data: Any) -> None:
        self.written += len(data)
        waiter, self.write_waiter = self.write_waiter, None
        if waiter is not None:
            waiter.set_result(None)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


def _app(test: str) -> Any:
    if test not in _WSGI_APPS:
        from bench.apps import app  # the app every benchmarked server runs

        return app
    from bench import wsgi_apps
    from corral.http.wsgi import WSGIApp

    name, threads = _WSGI_APPS[test]
    return WSGIApp(getattr(wsgi_apps, name)).configure(threads=threads)


async def _drive(test: str, requests: int) -> None:
    from corral.http import eager
    from corral.http.h1 import H1Protocol

    eager.install()
    loop = asyncio.get_running_loop()
    protocol = H1Protocol(_server_state(_app(test)))
    transport = _Transport()
    protocol.connection_made(transport)
    request = _TESTS[test]
    in_thread = test in _WSGI_APPS and _WSGI_APPS[test][1] > 1
    for _ in range(requests):
        written = transport.written
        protocol.data_received(request)
        if in_thread and transport.written == written:  # the app runs in a pool thread: wait for its answer
            transport.write_waiter = loop.create_future()
            await transport.write_waiter
        for _ in range(100):  # let its Task run to the end of the response
            if protocol.cycle is None:
                break
            await asyncio.sleep(0)
    if transport.closing:
        raise SystemExit("the connection was closed: the request path failed")


def _server_state(app: Any) -> Any:
    """The worker's state with the settings table's defaults, as `corral APP` serves."""
    from corral.http.state import ServerState

    loop, logger = asyncio.get_running_loop(), logging.getLogger("bench")
    try:
        from corral.config import default_settings
    except ImportError:  # --src of a checkout older than the typed settings: its ServerState has its own defaults
        return ServerState(loop=loop, app=app, logger=logger)
    return ServerState(default_settings(), loop=loop, app=app, logger=logger)


def _run(main: Any, loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def _count(test: str, requests: int, src: Path | None, loop: str) -> int:
    """Total instructions of one child run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
             "--child", test, str(requests), loop],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        summary = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
        if summary is None:
            raise SystemExit("callgrind wrote no summary line")
        return int(summary.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        _run(_drive(argv[1], int(argv[2])), argv[3])
        return 0
    parser = argparse.ArgumentParser(prog="bench/instructions.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", default=",".join(_TESTS), help="comma-separated, of: %(default)s")
    parser.add_argument("--requests", type=int, nargs=2, default=(_SMALL, _LARGE), metavar=("SMALL", "LARGE"),
                        help=f"requests in the two runs subtracted ({_SMALL} {_LARGE})")
    parser.add_argument("--src", type=Path, help="the src/ folder of another corral checkout to count instead")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop (%(default)s; a worker runs uvloop, which makes loop wake-ups cheaper)")
    args = parser.parse_args(argv)
    for test in args.tests.split(","):
        few, many = args.requests
        small, large = _count(test, few, args.src, args.loop), _count(test, many, args.src, args.loop)
        per_request = (large - small) / (many - few)
        print(f"{test}: {per_request:,.0f} instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
