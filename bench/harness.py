"""Runs every benchmarked server in turn on bench.apps:app, drives it with wrk and prints one table.

Started by bench/run inside bench/.venv; `bench/run --help` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
APP = "bench.apps:app"
ECHO_BODY_SIZE = 64 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """One test: the request wrk repeats (a wrk Lua script in bench/ when it is not a plain GET)."""

    method: str
    path: str
    script: str | None = None


TESTS = {
    "plaintext": TestSpec("GET", "/plaintext"),
    "json": TestSpec("GET", "/json"),
    "echo": TestSpec("POST", "/echo", "echo.lua"),
    # bench/fastapi_app.py: what people run. A JSON hello, a Pydantic model from a 1 KiB JSON body,
    # and a StreamingResponse of eight parts (chunked).
    "fastapi_json": TestSpec("GET", "/fastapi/json"),
    "fastapi_body": TestSpec("POST", "/fastapi/items", "fastapi_items.lua"),
    "fastapi_stream": TestSpec("GET", "/fastapi/stream"),
}
ALL_TESTS = tuple(TESTS)
ITEM_BODY = (BENCH_DIR / "item.json").read_bytes()
ACCESS_LOG_TEST = "plaintext+log"
PACKAGES = (
    "corral", "uvicorn", "httptools", "uvloop", "gunicorn", "gunicorn_h1c",
    "uvicorn-worker", "hypercorn", "granian",
)


# --------------------------------------------------------------------------- servers

@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """How to start one server: `command(port, access_log_path)` is its argv (access log off when None)."""

    name: str
    describe: str
    command: Callable[[int, Path | None], list[str]]
    # Says why this server cannot run here, or None when it can.
    unavailable: Callable[[], str | None] = lambda: None
    # Where the access log goes when it is on: "stdout" means the server's stdout is the log file.
    access_log_to_stdout: bool = False


def _bin(name: str) -> str:
    return str(VENV_BIN / name)


def _corral_flags() -> str:
    """corral's --help text, so optional flags are passed only once corral knows them."""
    try:
        done = subprocess.run(
            [_bin("corral"), "--help"], capture_output=True, text=True, timeout=20, cwd=REPO_ROOT
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def corral_command(port: int, access_log: Path | None) -> list[str]:
    argv = [_bin("corral"), APP, "--bind", f"127.0.0.1:{port}"]
    if "--workers" in _corral_flags():
        argv += ["--workers", "1"]
    if access_log is not None:
        argv += ["--access-logfile", str(access_log)]
    return argv


def uvicorn_command(port: int, access_log: Path | None) -> list[str]:
    argv = [_bin("uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools"]
    # uvicorn's access logger obeys --log-level, so the access-log run needs "info" to log at all.
    if access_log is None:
        return [*argv, "--no-access-log", "--log-level", "warning"]
    return [*argv, "--access-log", "--log-level", "info"]


def gunicorn_uvicorn_command(port: int, access_log: Path | None) -> list[str]:
    return [_bin("gunicorn"), "-w", "1", "-k", "uvicorn_worker.UvicornWorker",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", APP]


def gunicorn_asgi_command(port: int, access_log: Path | None) -> list[str]:
    return [_bin("gunicorn"), "-w", "1", "-k", "asgi", "--asgi-loop", "uvloop",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", APP]


def gunicorn_asgi_unavailable() -> str | None:
    version = package_version("gunicorn")
    probe = "from gunicorn.workers import SUPPORTED_WORKERS as w; raise SystemExit('asgi' not in w)"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return f"n/a (could not import gunicorn {version})"
    return None if done.returncode == 0 else f"n/a (gunicorn {version} has no asgi worker)"


def hypercorn_command(port: int, access_log: Path | None) -> list[str]:
    return [_bin("hypercorn"), "-w", "1", "-k", "uvloop", "-b", f"127.0.0.1:{port}",
            "--log-level", "warning", APP]


def granian_command(port: int, access_log: Path | None) -> list[str]:
    return [_bin("granian"), "--interface", "asgi", "--workers", "1", "--loop", "uvloop",
            "--http", "1", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning", APP]


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("uvicorn", "uvicorn, uvloop + httptools, 1 process", uvicorn_command,
                   access_log_to_stdout=True),
        ServerSpec("corral", "corral, 1 worker", corral_command),
        ServerSpec("gunicorn-uvicorn", "gunicorn -w 1 -k uvicorn_worker.UvicornWorker",
                   gunicorn_uvicorn_command),
        ServerSpec("gunicorn-asgi", "gunicorn -w 1 -k asgi (uvloop)", gunicorn_asgi_command,
                   unavailable=gunicorn_asgi_unavailable),
        ServerSpec("hypercorn", "hypercorn -w 1 -k uvloop", hypercorn_command),
        ServerSpec("granian", "granian --interface asgi --workers 1 --loop uvloop --http 1",
                   granian_command),
    )
}
ACCESS_LOG_SERVERS = ("uvicorn", "corral")


# --------------------------------------------------------------------------- /proc

def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """root and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def child_pids(pid: int) -> list[int]:
    """The living (not zombie) direct children of pid, sorted: a pre-fork server's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(int(entry.name))
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread of pid, in clock ticks; 0 once it is gone."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def command_name(pid: int) -> str:
    """The program's name and its first arguments, without directories (reports name no local paths)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    return " ".join([Path(argv[0]).name, *argv[1:3]]).strip()


# --------------------------------------------------------------------------- running a server

@dataclasses.dataclass
class RunningServer:
    """A started server process group and what was learnt about it."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    idle_rss_kib: dict[int, int] = dataclasses.field(default_factory=dict)
    cpu_by_pid: dict[int, int] = dataclasses.field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stderr_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


STARTED: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def start_server(spec: ServerSpec, cpu: int | None, out_dir: Path, access_log: Path | None,
                 tag: str) -> RunningServer:
    port = free_port()
    stderr_path = out_dir / f"{spec.name}{tag}.stderr"
    stdout_target = access_log if (access_log is not None and spec.access_log_to_stdout) else None
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    with open(stderr_path, "wb") as stderr, _open_or_devnull(stdout_target) as stdout:
        process = subprocess.Popen(
            pinned(cpu, spec.command(port, access_log)), cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True,  # its own process group, so stopping it reaches its workers too
        )
    STARTED.append(process)
    return RunningServer(spec, process, port, stderr_path)


@contextlib.contextmanager
def _open_or_devnull(path: Path | None) -> Iterator[Any]:
    if path is None:
        yield subprocess.DEVNULL
    else:
        with open(path, "wb") as handle:
            yield handle


def stop_server(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """TERM the server's group, KILL whatever is left after grace seconds (by pid and by group)."""
    if process.poll() is not None and not _group_alive(process.pid):
        return
    survivors = process_tree(process.pid) if process.poll() is None else []
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    _signal_group(process.pid, signal.SIGKILL)
    for pid in survivors:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    if process.poll() is not None and not _group_alive(process.pid) and process in STARTED:
        STARTED.remove(process)  # gone for good: its pid may now belong to someone else's process


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def stop_all_started() -> None:
    for process in list(STARTED):
        stop_server(process, grace=3.0)


def http_call(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 2.0,
              headers: dict[str, str] | None = None) -> tuple[int, bytes, list[tuple[str, str]]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheaders()
    finally:
        connection.close()


def wait_until_ready(server: RunningServer, timeout: float) -> str | None:
    """None once GET /plaintext answers 200, else why it never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"failed to start (exit {server.process.returncode})"
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_call(server.port, "GET", "/plaintext", timeout=1.0)[0] == 200:
                return None
        time.sleep(0.2)
    return f"failed to start (no answer within {timeout:.0f}s)"


def check_answers(port: int) -> dict[str, str | None]:
    """Per test: None when the server answers it correctly, else what was wrong."""
    echo_body = os.urandom(ECHO_BODY_SIZE)
    expected = {
        "plaintext": (None, b"Hello, World!"),
        "json": (None, b'{"message": "Hello, World!"}'),
        "echo": (echo_body, echo_body),
        "fastapi_json": (None, b'{"message":"Hello, World!"}'),
        "fastapi_body": (ITEM_BODY, _item_answer()),
        "fastapi_stream": (None, b"".join(b"%02d %s\n" % (n, b"x" * 60) for n in range(8))),
    }
    problems: dict[str, str | None] = {}
    for test, (body, want) in expected.items():
        spec = TESTS[test]
        try:
            # The first /fastapi/ request imports the framework: it gets longer than the others.
            status, got, headers = http_call(port, spec.method, spec.path, body, timeout=15.0,
                                             headers=_CONTENT_TYPES.get(test))
        except (OSError, http.client.HTTPException) as error:
            problems[test] = f"wrong answer ({type(error).__name__})"
            continue
        problems[test] = _framing_problem(headers)
        if (status, got) != (200, want):
            problems[test] = f"wrong answer ({status}, {len(got)} B)"
    return problems


# What the test's wrk script sends as Content-Type, where it sends one.
_CONTENT_TYPES = {"echo": {"Content-Type": "application/octet-stream"},
                  "fastapi_body": {"Content-Type": "application/json"}}


def _item_answer() -> bytes:
    """What /fastapi/items answers for bench/item.json, as FastAPI serialises it (compact JSON)."""
    item = json.loads(ITEM_BODY)
    total = round((item["price"] + (item["tax"] or 0.0)) * item["quantity"], 2)
    answer = {"name": item["name"], "total": total, "tags": len(item["tags"])}
    return json.dumps(answer, separators=(",", ":")).encode()


def _framing_problem(headers: list[tuple[str, str]]) -> str | None:
    """Strict clients (wrk among them) drop a response whose length is given twice."""
    names = [name.lower() for name, _ in headers]
    if names.count("content-length") > 1:
        return f"wrong answer ({names.count('content-length')} content-length headers)"
    if "content-length" in names and "transfer-encoding" in names:
        return "wrong answer (content-length and transfer-encoding)"
    return None


# --------------------------------------------------------------------------- wrk

@dataclasses.dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    percentiles = {
        match.group(1): _duration_ms(match.group(2), match.group(3))
        for match in re.finditer(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rate is None or len(percentiles) != 2:
        raise ValueError("unreadable wrk output:\n" + output)
    errors = []
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if socket_errors:
        errors.append("socket " + socket_errors.group(1).strip())
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad_status:
        errors.append(f"{bad_status.group(1)} non-2xx")
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2), total.group(3)) / 1000.0,
        rps=float(rate.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        errors="; ".join(errors),
    )


def wrk_command(args: argparse.Namespace, url: str, test: str, seconds: int) -> list[str]:
    argv = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s",
            "--timeout", "5s", "--latency"]
    script = TESTS[test.split("+")[0]].script
    if script is not None:
        argv += ["-s", str(BENCH_DIR / script)]
    return pinned(args.client_cpu, [*argv, url])


def run_wrk(argv: list[str], seconds: int) -> tuple[str, float]:
    """wrk's stdout and the CPU seconds wrk itself used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return done.stdout, used


# --------------------------------------------------------------------------- one measurement

@dataclasses.dataclass
class Row:
    """One line of the result table."""

    server: str
    test: str
    status: str = "ok"
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_request: float | None = None
    server_cpu_percent: float | None = None
    wrk_cpu_percent: float | None = None
    other_cpu_percent: float | None = None
    client_other_cpu_percent: float | None = None
    requests: int | None = None
    errors: str = ""
    worker_rss_mib: float | None = None
    master_rss_mib: float | None = None
    loaded_rss_mib: float | None = None
    ratio_rps: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def tree_cpu(pids: list[int]) -> dict[int, int]:
    return {pid: cpu_ticks(pid) for pid in pids}


def core_busy_ticks(cpu: int | None) -> int:
    """Ticks the core spent on anything but idle and iowait, from /proc/stat (0 when not pinned)."""
    if cpu is None:
        return 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(field) for field in line.split()[1:]]
            return sum(ticks[:8]) - ticks[3] - ticks[4]  # user..steal, less idle and iowait
    return 0


def wait_for_quiet(args: argparse.Namespace) -> None:
    """Waits (at most --wait-quiet seconds) until both cores are under 10% busy for a whole second."""
    if args.wait_quiet <= 0 or args.server_cpu is None:
        return
    deadline = time.monotonic() + args.wait_quiet
    while True:
        before = [core_busy_ticks(cpu) for cpu in (args.server_cpu, args.client_cpu)]
        time.sleep(1.0)
        busiest = max(core_busy_ticks(cpu) - was for cpu, was in zip(
            (args.server_cpu, args.client_cpu), before, strict=True)) / CLOCK_TICKS
        if busiest < 0.10:
            return
        if time.monotonic() > deadline:
            print(f"bench: cores still {100 * busiest:.0f}% busy with other work; measuring anyway",
                  file=sys.stderr, flush=True)
            return


def measure(server: RunningServer, test: str, args: argparse.Namespace) -> Row:
    url = server.url(TESTS[test.split("+")[0]].path)
    if args.warmup > 0:
        run_wrk(wrk_command(args, url, test, args.warmup), args.warmup)
    wait_for_quiet(args)
    pids = process_tree(server.process.pid)
    before, core_before = tree_cpu(pids), core_busy_ticks(args.server_cpu)
    client_before = core_busy_ticks(args.client_cpu)
    output, wrk_cpu = run_wrk(wrk_command(args, url, test, args.duration), args.duration)
    after, core_after = tree_cpu(pids), core_busy_ticks(args.server_cpu)
    client_after = core_busy_ticks(args.client_cpu)
    result = parse_wrk(output)
    if result.requests == 0:
        raise RuntimeError(f"no request completed ({result.errors or 'no errors reported'})")
    used = {pid: after[pid] - before[pid] for pid in pids}
    for pid, ticks in used.items():
        server.cpu_by_pid[pid] = server.cpu_by_pid.get(pid, 0) + ticks
    server_seconds = sum(used.values()) / CLOCK_TICKS
    # Whatever else ran on the server's core (other processes, steal) makes this row less trustworthy.
    others_seconds = max(0, core_after - core_before - sum(used.values())) / CLOCK_TICKS
    client_others_seconds = max(0.0, (client_after - client_before) / CLOCK_TICKS - wrk_cpu)
    return Row(
        server=server.spec.name, test=test, rps=result.rps, p50_ms=result.p50_ms, p99_ms=result.p99_ms,
        cpu_us_per_request=server_seconds / result.requests * 1e6 if result.requests else None,
        server_cpu_percent=100.0 * server_seconds / result.seconds,
        wrk_cpu_percent=100.0 * wrk_cpu / result.seconds,
        other_cpu_percent=100.0 * others_seconds / result.seconds if args.server_cpu is not None else None,
        client_other_cpu_percent=(100.0 * client_others_seconds / result.seconds
                                  if args.client_cpu is not None else None),
        requests=result.requests, errors=result.errors,
    )


def worker_and_master(server: RunningServer) -> tuple[int, int | None]:
    """The pid that served (the one that burnt the most CPU) and the master pid if that is another."""
    root = server.process.pid
    if not server.cpu_by_pid:
        return root, None
    worker = max(server.cpu_by_pid, key=lambda pid: server.cpu_by_pid[pid])
    return worker, (root if worker != root else None)


def run_server(spec: ServerSpec, tests: list[str], args: argparse.Namespace, access_log: Path | None,
               tag: str = "") -> tuple[list[Row], str]:
    """Rows for every test on one server, and its stderr tail when it failed."""
    reason = spec.unavailable()
    if reason:
        return [Row(spec.name, test, status=reason) for test in tests], ""
    server = start_server(spec, args.server_cpu, args.out, access_log, tag)
    try:
        return _measure_all(server, tests, args), ""
    except _ServerFailed as failure:
        return [Row(spec.name, test, status=str(failure)) for test in tests], server.stderr_tail()
    finally:
        stop_server(server.process)


class _ServerFailed(Exception):
    pass


def _measure_all(server: RunningServer, tests: list[str], args: argparse.Namespace) -> list[Row]:
    problem = wait_until_ready(server, args.startup_timeout)
    if problem:
        raise _ServerFailed(problem)
    time.sleep(1.0)  # let imports, lifespan and worker boot settle before the idle RSS is read
    server.idle_rss_kib = {pid: memory_kib(pid) for pid in process_tree(server.process.pid)}
    wrong = check_answers(server.port)
    rows = []
    for test in tests:
        if wrong.get(test.split("+")[0]):
            rows.append(Row(server.spec.name, test, status=str(wrong[test.split("+")[0]])))
            continue
        try:
            rows.append(measure(server, test, args))
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
            rows.append(Row(server.spec.name, test, status=f"failed: {error}"[:200]))
        if server.process.poll() is not None:
            raise _ServerFailed(f"died during {test} (exit {server.process.returncode})")
    _add_memory(server, rows)
    return rows


def _add_memory(server: RunningServer, rows: list[Row]) -> None:
    worker, master = worker_and_master(server)
    for row in rows:
        row.worker_rss_mib = server.idle_rss_kib.get(worker, 0) / 1024
        row.master_rss_mib = server.idle_rss_kib.get(master, 0) / 1024 if master else None
        row.loaded_rss_mib = memory_kib(worker, "VmHWM") / 1024
        others = [pid for pid in server.idle_rss_kib if pid not in (worker, master)]
        if others:
            row.notes.append("other processes: " + ", ".join(
                f"{command_name(pid)[:40]} {server.idle_rss_kib[pid] / 1024:.1f} MiB" for pid in others
            ))


# --------------------------------------------------------------------------- report

def add_ratios(rows: list[Row]) -> None:
    baseline = {row.test: row.rps for row in rows if row.server == "uvicorn" and row.rps}
    for row in rows:
        if row.rps and baseline.get(row.test):
            row.ratio_rps = row.rps / baseline[row.test]


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


TABLE_HEADER = ("server", "test", "req/s", "x uvicorn", "p50 ms", "p99 ms", "CPU us/req", "server CPU %",
                "other CPU % on server core", "wrk CPU %", "idle worker RSS MiB", "master RSS MiB", "errors")


def table_cells(row: Row) -> tuple[str, ...]:
    if row.status != "ok":
        return (row.server, row.test, row.status, *[""] * (len(TABLE_HEADER) - 3))
    return (
        row.server, row.test, _fmt(row.rps, ",.0f"), _fmt(row.ratio_rps, ".2f"),
        _fmt(row.p50_ms, ".2f"), _fmt(row.p99_ms, ".2f"), _fmt(row.cpu_us_per_request, ".1f"),
        _fmt(row.server_cpu_percent, ".0f"), _fmt(row.other_cpu_percent, ".0f"),
        _fmt(row.wrk_cpu_percent, ".0f"),
        _fmt(row.worker_rss_mib, ".1f"), _fmt(row.master_rss_mib, ".1f"), row.errors or "",
    )


def text_table(rows: list[Row]) -> str:
    cells = [TABLE_HEADER, *(table_cells(row) for row in rows)]
    measured = [TABLE_HEADER, *(table_cells(row) for row in rows if row.status == "ok")]
    widths = [max(len(line[i]) for line in measured) for i in range(len(TABLE_HEADER))]
    lines = []
    for row, line in zip([None, *rows], cells, strict=True):
        if row is not None and row.status != "ok":  # a status message: print it whole
            lines.append(f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]}")
        else:
            lines.append("  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(line)).rstrip())
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in table_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Target:
    what: str
    check: Callable[[dict[tuple[str, str], Row]], tuple[str, bool] | None]


def _ratio_target(test: str, minimum: float, peer: str = "uvicorn") -> Target:
    def check(by_key: dict[tuple[str, str], Row]) -> tuple[str, bool] | None:
        mine, theirs = by_key.get(("corral", test)), by_key.get((peer, test))
        if not (mine and theirs and mine.rps and theirs.rps):
            return None
        ratio = mine.rps / theirs.rps
        return f"{ratio:.2f}x", ratio >= minimum
    return Target(f"{test} req/s >= {minimum}x {peer}", check)


def _p99_target(by_key: dict[tuple[str, str], Row]) -> tuple[str, bool] | None:
    pairs = [(by_key.get(("corral", t)), by_key.get(("uvicorn", t))) for t in (*ALL_TESTS, ACCESS_LOG_TEST)]
    pairs = [(a, b) for a, b in pairs if a and b and a.p99_ms is not None and b.p99_ms is not None]
    if not pairs:
        return None
    text = ", ".join(f"{a.test} {a.p99_ms:.2f} vs {b.p99_ms:.2f} ms" for a, b in pairs)
    return text, all(a.p99_ms <= b.p99_ms for a, b in pairs)  # type: ignore[operator]


def _rss_target(by_key: dict[tuple[str, str], Row]) -> tuple[str, bool] | None:
    mine = next((r for k, r in by_key.items() if k[0] == "corral" and r.worker_rss_mib), None)
    theirs = next((r for k, r in by_key.items() if k[0] == "uvicorn" and r.worker_rss_mib), None)
    if not (mine and theirs):
        return None
    return f"{mine.worker_rss_mib:.1f} vs {theirs.worker_rss_mib:.1f} MiB", \
        mine.worker_rss_mib <= theirs.worker_rss_mib  # type: ignore[operator]


def _cpu_target(by_key: dict[tuple[str, str], Row]) -> tuple[str, bool] | None:
    mine = by_key.get(("corral", "plaintext"))
    if not (mine and mine.cpu_us_per_request):
        return None
    return f"{mine.cpu_us_per_request:.1f} us", mine.cpu_us_per_request <= 13.0


TARGETS = (
    _ratio_target("plaintext", 1.6), _ratio_target("json", 1.6), _ratio_target("echo", 1.2),
    _ratio_target(ACCESS_LOG_TEST, 1.6),
    _ratio_target("fastapi_json", 1.15), _ratio_target("fastapi_json", 1.05, "granian"),
    # "Ahead of both": strictly more than 1x is read as at least 1.01x, above the noise of one round.
    *(_ratio_target(test, 1.01, peer) for test in ("fastapi_body", "fastapi_stream")
      for peer in ("uvicorn", "granian")),
    Target("p99 no worse than uvicorn's", _p99_target),
    Target("idle worker RSS <= uvicorn's", _rss_target),
    Target("plaintext server CPU <= 13 us/request", _cpu_target),
)


def _verdict(outcome: tuple[str, bool] | None) -> str:
    if outcome is None:
        return "not measured"
    return ("PASS" if outcome[1] else "FAIL") + f"  {outcome[0]}"


def target_lines(rows: list[Row]) -> list[str]:
    by_key = {(row.server, row.test): row for row in rows if row.status == "ok"}
    lines = []
    for target in TARGETS:
        outcome = target.check(by_key)
        lines.append(f"{target.what}: {_verdict(outcome)}")
    return lines


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_facts() -> dict[str, str]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown")
    facts = {
        "date": datetime.date.today().isoformat(),
        "cpus": f"{os.cpu_count()} ({cpu_model})",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr or "?").splitlines()[0].split(" Copyright")[0].strip(),
    }
    facts["corral source"] = corral_revision()
    facts.update({name: package_version(name) for name in PACKAGES})
    return facts


def corral_revision() -> str:
    """The commit the measured corral was built from, and whether the tree had changes on top."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=REPO_ROOT)
        changes = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True,
                                 text=True, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "no commit yet" + (" (uncommitted sources)" if changes.stdout.strip() else "")
    return f"commit {head.stdout.strip()}" + (" + uncommitted changes" if changes.stdout.strip() else "")


def how_it_ran(args: argparse.Namespace) -> str:
    return (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency after a {args.warmup:g}s "
        f"warm-up; server pinned to CPU {args.server_cpu}, wrk to CPU {args.client_cpu}, on 127.0.0.1; "
        f"access logs of the plaintext+log rows written in {args.access_log_dir}"
        + (f"; each figure is the median of {args.repeat} rounds over all servers" if args.repeat > 1 else "")
    )


def write_outputs(rows: list[Row], runs: list[Row], failures: dict[str, str], facts: dict[str, str],
                  args: argparse.Namespace) -> str:
    report = "\n".join([
        text_table(rows), "",
        "corral targets:", *("  " + line for line in target_lines(rows)),
        *(f"\n{name} stderr (tail):\n{tail}" for name, tail in failures.items() if tail),
    ])
    (args.out / "last-run.json").write_text(json.dumps(
        {"facts": facts, "how": how_it_ran(args), "rows": [dataclasses.asdict(r) for r in rows],
         "rounds": [dataclasses.asdict(r) for r in runs]}, indent=2
    ))
    (args.out / "last-run.md").write_text(markdown_report(rows, facts, args))
    if args.write_results:
        Path(args.write_results).write_text(markdown_report(rows, facts, args))
    return report


def markdown_report(rows: list[Row], facts: dict[str, str], args: argparse.Namespace) -> str:
    notes = [f"- {row.server} {row.test}: {'; '.join(row.notes)}" for row in rows if row.notes]
    return "\n".join([
        "# Benchmark results", "",
        f"Run on {facts['date']} with `bench/run` ({how_it_ran(args)}).", "",
        *([args.remark, ""] if args.remark else []),
        "## Machine and versions", "",
        *(f"- {key}: {value}" for key, value in facts.items() if key != "date"), "",
        "## Table", "",
        markdown_table(rows), "",
        "## corral targets", "",
        *(f"- {line}" for line in target_lines(rows)), "",
        *(["## Notes per row", "", *notes, ""] if notes else []),
        METHOD_NOTES,
    ])


METHOD_NOTES = """## How to read it

- Every server runs the same raw ASGI app, `bench/apps.py`, with one worker process, pinned to one core;
  wrk runs on the other core. `echo` POSTs a 64 KiB body (`bench/echo.lua`) and gets it back.
  The `fastapi_*` rows run the FastAPI service in `bench/fastapi_app.py` (under /fastapi/ of the same app):
  a JSON hello, a Pydantic model from a POSTed 1 KiB JSON body, a StreamingResponse of eight parts.
- `CPU us/req` is the server's CPU time (utime + stime of all its processes, from /proc, master included)
  during the measured run divided by the requests wrk completed. Unlike req/s it does not depend on whether
  wrk or the server was the bottleneck, so it is the figure to compare first.
- `other CPU % on server core` is the time the server's core spent on anything else (other processes,
  the hypervisor's steal) during the run: above a few percent, that row is disturbed; run it again.
- `server CPU %` near 100 means the server's core was saturated; `wrk CPU %` near 100 means the load
  generator was, and the req/s of that row understate the server.
- `idle worker RSS` is VmRSS of the serving process after start-up, before any load; `master RSS` is the
  supervising process where there is one.
- `plaintext+log` is plaintext with the access log on, written to a file in the same directory for both
  (a tmpfs by default, so that the disk's stalls do not blur the servers' logging cost):
  corral with `--access-logfile FILE`; uvicorn with `--access-log --log-level info` and its stdout (where
  its access logger writes) redirected to FILE. Every other row runs with access logs off.
- gunicorn's `asgi` worker uses gunicorn_h1c (its C parser) when installed; bench/requirements.txt pins it.
"""


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run (2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all servers; each figure is the median over the rounds (1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--only", default=",".join(SERVERS), help="servers, comma separated: %(default)s")
    parser.add_argument("--tests", default=",".join(ALL_TESTS), help="tests, comma separated: %(default)s")
    parser.add_argument("--no-access-log-pass", action="store_true",
                        help="skip the plaintext run with access logs on (corral and uvicorn)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each run, wait up to SECONDS for other work to leave both cores (0)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core the server is pinned to (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core wrk is pinned to (1)")
    parser.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to wait for a server")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="logs and raw results")
    parser.add_argument("--access-log-dir", type=Path, default=_default_access_log_dir(),
                        help="where the access-log pass writes its logs (default: %(default)s)")
    parser.add_argument("--remark", default="", help="a paragraph to put at the top of the report")
    parser.add_argument("--write-results", metavar="FILE", help="also write the markdown report to FILE")
    args = parser.parse_args(argv)
    args.only = _choices(args.only, SERVERS, parser, "--only")
    args.tests = _choices(args.tests, ALL_TESTS, parser, "--tests")
    if not (0 < args.duration <= 120 and 0 <= args.warmup <= 30 and 1 <= args.repeat <= 9):
        parser.error("--duration must be in (0, 120], --warmup in [0, 30], --repeat in [1, 9]")
    return args


def _default_access_log_dir() -> Path:
    # A tmpfs, when there is one, so the pass measures the servers' logging work rather than the disk.
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else BENCH_DIR / "out"


def _choices(text: str, allowed: Any, parser: argparse.ArgumentParser, flag: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown:
        parser.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def check_cores(args: argparse.Namespace) -> None:
    usable = os.sched_getaffinity(0)
    if shutil.which("taskset") is None:
        print("bench: taskset not found: nothing is pinned", file=sys.stderr)
        args.server_cpu = args.client_cpu = None
        return
    if {args.server_cpu, args.client_cpu} - usable or args.server_cpu == args.client_cpu:
        print(f"bench: CPUs {args.server_cpu} and {args.client_cpu} are not two usable cores "
              f"(usable: {sorted(usable)}): nothing is pinned", file=sys.stderr)
        args.server_cpu = args.client_cpu = None
        return
    # This script only waits, but keep it off the server's core all the same.
    os.sched_setaffinity(0, {args.client_cpu})


def run_all(args: argparse.Namespace) -> tuple[list[Row], list[Row], dict[str, str]]:
    runs: list[Row] = []
    failures: dict[str, str] = {}
    for round_number in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"bench: round {round_number} of {args.repeat}", file=sys.stderr, flush=True)
        runs += run_round(args, failures)
    rows = median_rows(runs)
    add_ratios(rows)
    return rows, runs, failures


def run_round(args: argparse.Namespace, failures: dict[str, str]) -> list[Row]:
    rows: list[Row] = []
    for name in args.only:
        print(f"bench: {SERVERS[name].describe} ...", file=sys.stderr, flush=True)
        server_rows, tail = run_server(SERVERS[name], args.tests, args, access_log=None)
        rows += server_rows
        if tail:
            failures[name] = tail
    if not args.no_access_log_pass and "plaintext" in args.tests:
        for name in (n for n in ACCESS_LOG_SERVERS if n in args.only):
            rows += run_access_log_pass(SERVERS[name], args, failures)
    return rows


MEDIAN_FIELDS = (
    "rps", "p50_ms", "p99_ms", "cpu_us_per_request", "server_cpu_percent", "other_cpu_percent",
    "client_other_cpu_percent", "wrk_cpu_percent", "requests", "worker_rss_mib", "master_rss_mib",
    "loaded_rss_mib",
)


def median_rows(runs: list[Row]) -> list[Row]:
    """One row per (server, test), each figure the median of that figure over the rounds that measured."""
    grouped: dict[tuple[str, str], list[Row]] = {}
    for row in runs:
        grouped.setdefault((row.server, row.test), []).append(row)
    return [_median_row(group) for group in grouped.values()]


def _median_row(group: list[Row]) -> Row:
    measured = [row for row in group if row.status == "ok"]
    if len(group) == 1 or not measured:
        return group[0]
    combined = dataclasses.replace(measured[0], notes=[])
    for name in MEDIAN_FIELDS:
        values = [getattr(row, name) for row in measured if getattr(row, name) is not None]
        setattr(combined, name, statistics.median(values) if values else None)
    with_errors = [row.errors for row in measured if row.errors]
    combined.errors = with_errors[0] if with_errors else ""
    if len(with_errors) > 1:
        combined.errors += f" (errors in {len(with_errors)} of {len(measured)} rounds)"
    combined.notes = list(dict.fromkeys(note for row in measured for note in row.notes
                                        if not note.startswith("access log lines")))
    combined.notes.append(f"{len(group)} rounds, req/s: " + ", ".join(_round_figure(row, "rps", ",.0f")
                                                                    for row in group))
    combined.notes.append("CPU us/req: " + ", ".join(_round_figure(row, "cpu_us_per_request", ".1f")
                                                     for row in group))
    return combined


def _round_figure(row: Row, name: str, pattern: str) -> str:
    return format(getattr(row, name), pattern) if row.status == "ok" else row.status


def run_access_log_pass(spec: ServerSpec, args: argparse.Namespace, failures: dict[str, str]) -> list[Row]:
    print(f"bench: {spec.describe}, access log on ...", file=sys.stderr, flush=True)
    log_path = args.access_log_dir / f"corral-bench-{os.getpid()}-{spec.name}.access.log"
    log_path.unlink(missing_ok=True)
    rows, tail = run_server(spec, [ACCESS_LOG_TEST], args, access_log=log_path, tag="-log")
    if tail:
        failures[f"{spec.name} (access log)"] = tail
    for row in rows:
        if row.status == "ok":
            _check_access_log_written(row, log_path)
    log_path.unlink(missing_ok=True)  # can be hundreds of MB; only its line count matters
    return rows


def _check_access_log_written(row: Row, log_path: Path) -> None:
    try:
        with open(log_path, "rb") as handle:
            lines = sum(1 for _ in handle)
    except OSError:
        lines = 0
    row.notes.append(f"access log lines: {lines}")
    if row.requests and lines < row.requests:
        row.errors = (row.errors + "; " if row.errors else "") + f"access log has {lines} lines"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk); nothing measured", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    check_cores(args)
    # A TERM (or ^C) must still stop the servers: turn it into an exception that reaches `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rows, runs, failures = run_all(args)
    finally:
        stop_all_started()
    print(write_outputs(rows, runs, failures, environment_facts(), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
