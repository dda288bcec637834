"""Runs Autobahn|Testsuite's fuzzingclient against corral serving tests/autobahn/echo_app.py, and fails unless
every case is OK or INFORMATIONAL (or NON-STRICT with a written reason in allowed_non_strict.txt).

    .venv/bin/python tests/autobahn/run.py                     # the CI cases: 1-7, 10, 12, 13 (`make autobahn`)
    .venv/bin/python tests/autobahn/run.py --cases '9.*'       # the performance group, outside CI
    .venv/bin/python tests/autobahn/run.py --server uvicorn    # the same cases against uvicorn, for comparison

The testsuite runs on CPython 2.7 (pyenv's, or python2.7 on PATH); without one the run is skipped with exit
status 0. The pinned testsuite is installed once into .autobahn/ at the repository root; the reports (JSON and
HTML) go to .autobahn/reports/SERVER/. Exit status: 0 passed or skipped, 1 a case did not pass, 2 the harness
could not run (install, server start, time limit, cases missing from the report).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import glob
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "CI_CASES",
    "SPEEDUP_PINS",
    "TESTSUITE_PINS",
    "CaseResult",
    "HarnessError",
    "find_python27",
    "judge",
    "load_allowlist",
    "main",
]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".autobahn"
ALLOWLIST_PATH = HERE / "allowed_non_strict.txt"
ECHO_APP = "tests.autobahn.echo_app:app"
UVICORN = REPO_ROOT / "bench" / ".venv" / "bin" / "uvicorn"

# The testsuite and every dependency, pinned to the last releases that run on Python 2.7, installed with
# --no-deps so that nothing newer is resolved behind our back. autobahn's "accelerate" extra is left out.
TESTSUITE_VERSION = "25.10.1"
TESTSUITE_PINS = (
    f"autobahntestsuite=={TESTSUITE_VERSION}",
    "autobahn==0.10.9",
    "txaio==2.1.0",
    "Twisted==19.10.0",
    "zope.interface==4.6.0",
    "cryptography==3.3.2",
    "pyOpenSSL==19.1.0",
    "service-identity==18.1.0",
    "klein==17.10.0",
    "Werkzeug==1.0.1",
    "Jinja2==2.11.3",
    "MarkupSafe==1.1.1",
    "unittest2==1.1.0",
    "six==1.16.0",
    "incremental==16.10.1",
    "setuptools==44.0.0",
    "constantly==15.1.0",
    "Automat==20.2.0",
    "hyperlink==21.0.0",
    "typing==3.10.0.0",
    "idna==2.10",
    "PyHamcrest==1.10.1",
    "attrs==21.4.0",
    "cffi==1.15.1",
    "pycparser==2.21",
    "enum34==1.1.10",
    "ipaddress==1.0.23",
    "pyasn1==0.4.8",
    "pyasn1-modules==0.2.8",
    "traceback2==1.4.0",
    "linecache2==1.0.0",
)
# wsaccel (a C extension, built here) does the client's frame masking in C; it halves the time of the
# compression groups 12 and 13. Optional: without a compiler the run is slower but the same.
SPEEDUP_PINS = ("wsaccel==0.6.3",)

CI_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*", "12.*", "13.*")
# Groups that push gigabytes through the client: there the client skips its own UTF-8 check of incoming text,
# which costs it most of its time in pure Python. Those cases compare the SHA-1 (12, 13) or the bytes (9) of
# every echo with what they sent, so a server that altered the text would fail them anyway.
BULK_GROUPS = frozenset({"9", "12", "13"})
PASSING_BEHAVIOURS = frozenset({"OK", "INFORMATIONAL"})
PASSING_CLOSE_BEHAVIOURS = frozenset({"OK", "INFORMATIONAL"})
NON_STRICT = "NON-STRICT"

DEFAULT_TIMEOUT = 1200.0
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 15.0
INSTALL_TIMEOUT = 600.0
POLL_INTERVAL = 0.2

# Run by CPython 2.7 with `-c`: argv[1] is the site dir of the installed testsuite, the rest goes to wstest.
# addsitedir (not PYTHONPATH) so that the .pth files of the zope namespace package are processed.
_WSTEST_BOOTSTRAP = (
    "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['wstest'] + sys.argv[2:]; "
    "from autobahntestsuite.wstest import run; run()"
)
# Prints the case ids that a list of patterns (argv[2], JSON) selects, the way the fuzzingclient resolves them.
_EXPAND_BOOTSTRAP = (
    "import json, site, sys; site.addsitedir(sys.argv[1]); "
    "from autobahntestsuite.case import Cases, CaseSetname, CaseBasename, CaseCategories, CaseSubCategories; "
    "from autobahntestsuite.caseset import CaseSet; "
    "s = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories); "
    "ids = s.parseSpecCases({'cases': json.loads(sys.argv[2]), 'exclude-cases': json.loads(sys.argv[3])}); "
    "sys.stdout.write(json.dumps({'cases': ids, 'unknown': [c for c in ids if c not in s.CasesIndices]}))"
)


class HarnessError(Exception):
    """The harness itself could not do its job (not a verdict on the server)."""


# --------------------------------------------------------------------------------------------------
# Python 2.7 and the testsuite


def _python_version(python: str) -> str | None:
    """'2.7' for a working CPython 2.7 interpreter, otherwise its major.minor or None when it does not run."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _pyenv_roots() -> list[Path]:
    roots = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            if done.returncode == 0 and done.stdout.strip():
                roots.append(Path(done.stdout.strip()))
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    return roots


def _version_key(path: str) -> tuple[int, ...]:
    found = re.search(r"versions/(\d+(?:\.\d+)*)", path)
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def find_python27() -> str | None:
    """A CPython 2.7 interpreter: the newest 2.7 under the pyenv root, else python2.7 / python2 on PATH."""
    candidates: list[str] = []
    for root in _pyenv_roots():
        candidates += sorted(glob.glob(str(root / "versions" / "2.7*" / "bin" / "python")), key=_version_key,
                             reverse=True)  # fmt: skip
    candidates += [found for name in ("python2.7", "python2") if (found := shutil.which(name))]
    seen: set[str] = set()
    for candidate in candidates:
        if candidate not in seen and _python_version(candidate) == "2.7":
            return candidate
        seen.add(candidate)
    return None


def _site_dir(prefix: Path) -> Path:
    return prefix / "lib" / "python2.7" / "site-packages"


def _pip_install(python27: str, prefix: Path, pins: Sequence[str], log_path: Path) -> bool:
    # --ignore-installed: pip 19 would otherwise uninstall the interpreter's own setuptools to put the pinned
    # one into the prefix, changing the machine's Python 2.7.
    command = [
        python27, "-s", "-m", "pip", "install", "--disable-pip-version-check", "--no-warn-script-location",
        "--ignore-installed", "--no-deps", "--prefer-binary", "--prefix", str(prefix), *pins,
    ]  # fmt: skip
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=INSTALL_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            log.write(f"timed out after {INSTALL_TIMEOUT:.0f} s\n")
            return False
    return done.returncode == 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def install_testsuite(python27: str, cache_dir: Path) -> tuple[Path, list[str]]:
    """The site dir of the pinned testsuite under cache_dir (installed on first use); notes for the summary."""
    prefix = cache_dir / "py27"
    stamp = prefix / "installed.txt"
    wanted = "\n".join([os.path.realpath(python27), *TESTSUITE_PINS, *SPEEDUP_PINS]) + "\n"
    if not (stamp.is_file() and stamp.read_text() == wanted and _site_dir(prefix).is_dir()):
        _install_into(python27, prefix, wanted, cache_dir)
    if not (_site_dir(prefix) / "wsaccel").is_dir():
        return _site_dir(prefix), ["wsaccel did not build (see the install log): the bulk groups run slower"]
    return _site_dir(prefix), []


def _install_into(python27: str, prefix: Path, stamp_text: str, cache_dir: Path) -> None:
    # Installed beside the final place and renamed at the end, so an interrupted install is never taken as done.
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f"py27.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    log_path = cache_dir / "install.log"
    log_path.write_text("")
    print(f"autobahn: installing autobahntestsuite=={TESTSUITE_VERSION} and its pinned dependencies for "
          f"Python 2.7 into {_display(prefix)} (once)", flush=True)  # fmt: skip
    if not _pip_install(python27, staging, TESTSUITE_PINS, log_path):
        shutil.rmtree(staging, ignore_errors=True)
        raise HarnessError(f"pip could not install the testsuite (log: {_display(log_path)}):\n{_tail(log_path)}")
    _pip_install(python27, staging, SPEEDUP_PINS, log_path)  # optional: its absence is reported, not fatal
    _check_wstest_runs(python27, _site_dir(staging))
    (staging / "installed.txt").write_text(stamp_text)
    shutil.rmtree(prefix, ignore_errors=True)
    os.replace(staging, prefix)


def _check_wstest_runs(python27: str, site_dir: Path) -> None:
    command = [python27, "-s", "-c", _WSTEST_BOOTSTRAP, str(site_dir), "--autobahnversion"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise HarnessError(f"the installed testsuite does not start:\n{done.stdout}{done.stderr}")


def expand_cases(python27: str, site_dir: Path, patterns: Sequence[str], excluded: Sequence[str] = ()) -> list[str]:
    """The case ids the patterns select less the excluded ones, in the testsuite's order; HarnessError for an
    unknown case."""
    command = [python27, "-s", "-c", _EXPAND_BOOTSTRAP, str(site_dir), json.dumps(list(patterns)),
               json.dumps(list(excluded))]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise HarnessError(f"could not list the cases {' '.join(patterns)}:\n{done.stderr}")
    answer = json.loads(done.stdout)
    if answer["unknown"]:
        raise HarnessError(f"--cases: no such case: {', '.join(answer['unknown'])}")
    if not answer["cases"]:
        raise HarnessError(f"--cases: {' '.join(patterns)} selects no case (after --exclude)")
    return list(answer["cases"])


# --------------------------------------------------------------------------------------------------
# The server under test


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(server: str, port: int, workers: int) -> list[str]:
    if server == "corral":
        return [
            sys.executable, "-m", "corral", ECHO_APP, "--bind", f"127.0.0.1:{port}", "--app-dir", str(REPO_ROOT),
            "--workers", str(workers), "--log-level", "warning",
        ]  # fmt: skip
    if not UVICORN.exists():
        raise HarnessError(f"--server uvicorn needs {_display(UVICORN)}: run bench/run --setup-only first")
    command = [
        str(UVICORN), ECHO_APP, "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(REPO_ROOT),
        "--ws", "websockets", "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
    ]  # fmt: skip
    return command if workers == 1 else [*command, "--workers", str(workers)]


def _answers_http(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_server(server: str, port: int, workers: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the server in its own session and wait until the echo app answers over HTTP."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            server_command(server, port, workers), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{server} exited with status {proc.returncode} at start:\n{_tail(log_path)}")
        if _answers_http(port):
            return proc
        time.sleep(POLL_INTERVAL)
    stop_server(proc)
    raise HarnessError(f"{server} did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{_tail(log_path)}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """TERM the server by its pid (graceful), then KILL the session it leads if it overstays."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
    # The server leads its own session (start_new_session), so its group is exactly what it forked.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=SERVER_STOP_TIMEOUT)


# --------------------------------------------------------------------------------------------------
# fuzzingclient runs


@dataclasses.dataclass
class ClientRun:
    """One wstest fuzzingclient process: its cases, whether it checks incoming UTF-8, where it writes."""

    name: str
    cases: list[str]
    validate_utf8: bool
    outdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.outdir / "wstest.log"


def plan_runs(cases: Sequence[str], jobs: int, reports_dir: Path) -> list[ClientRun]:
    """The ordinary cases in one run; the bulk ones dealt round-robin over `jobs` runs that go in parallel."""
    ordinary = [case for case in cases if case.split(".")[0] not in BULK_GROUPS]
    bulk = [case for case in cases if case.split(".")[0] in BULK_GROUPS]
    runs = []
    if ordinary:
        runs.append(ClientRun("protocol", ordinary, True, reports_dir / "protocol"))
    # Neighbouring cases differ mostly in message size, so dealing them out balances the runs' work.
    shares = [bulk[index::jobs] for index in range(jobs)]
    runs += [
        ClientRun(f"bulk-{index + 1}", share, False, reports_dir / f"bulk-{index + 1}")
        for index, share in enumerate(shares) if share
    ]  # fmt: skip
    return runs


def write_spec(run: ClientRun, url: str, agent: str) -> Path:
    spec = {
        "outdir": str(run.outdir),
        "options": {} if run.validate_utf8 else {"utf8validateIncoming": False},
        "servers": [{"agent": agent, "url": url}],
        "cases": run.cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    path = run.outdir / "spec.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def start_client(python27: str, site_dir: Path, run: ClientRun, url: str, agent: str) -> None:
    shutil.rmtree(run.outdir, ignore_errors=True)
    run.outdir.mkdir(parents=True)
    spec = write_spec(run, url, agent)
    command = [python27, "-s", "-c", _WSTEST_BOOTSTRAP, str(site_dir), "--mode", "fuzzingclient", "--spec", str(spec)]
    with run.log_path.open("wb") as log:
        # cwd: anything wstest writes besides its reports lands beside them.
        run.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=run.outdir, start_new_session=True)  # fmt: skip


def _last_case_started(run: ClientRun) -> str:
    started = re.findall(r"Running test case ID (\S+)", run.log_path.read_text(errors="replace"))
    return started[-1] if started else "none"


def run_clients(python27: str, site_dir: Path, runs: Sequence[ClientRun], url: str, agent: str, jobs: int,
                timeout: float) -> list[str]:  # fmt: skip
    """Run every client, at most `jobs` at a time, within `timeout` seconds; the problems seen. A client still
    running at the limit (or when this is interrupted) is killed."""
    waiting, running, problems = list(runs), [], []
    deadline = time.monotonic() + timeout
    try:
        for _ in range(int(timeout / POLL_INTERVAL) + len(runs) + 2):
            while waiting and len(running) < jobs:
                run = waiting.pop(0)
                start_client(python27, site_dir, run, url, agent)
                running.append(run)
            for run in [run for run in running if run.proc is not None and run.proc.poll() is not None]:
                running.remove(run)
                if run.proc is not None and run.proc.returncode != 0:
                    problems.append(f"{run.name}: wstest exited with {run.proc.returncode}:\n{_tail(run.log_path)}")
            if (not waiting and not running) or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
    finally:
        for run in running:
            _kill_client(run)
    problems += [f"{run.name}: stopped at the --timeout limit in case {_last_case_started(run)}" for run in running]
    problems += [f"{run.name}: not started before the --timeout limit" for run in waiting]
    return problems


def _kill_client(run: ClientRun) -> None:
    if run.proc is None or run.proc.poll() is not None:
        return
    # Each client leads its own session (start_new_session), so its group is that one wstest process.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.proc.wait(timeout=SERVER_STOP_TIMEOUT)


# --------------------------------------------------------------------------------------------------
# Verdict


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One case as reports/index.json gives it."""

    case: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def load_results(runs: Iterable[ClientRun], agent: str) -> dict[str, CaseResult]:
    results: dict[str, CaseResult] = {}
    for run in runs:
        index = run.outdir / "index.json"
        if not index.is_file():
            continue
        for case, entry in json.loads(index.read_text()).get(agent, {}).items():
            results[case] = CaseResult(case, entry["behavior"], entry["behaviorClose"],
                                       entry.get("remoteCloseCode"), int(entry.get("duration") or 0))  # fmt: skip
    return results


_ALLOW_LINE = re.compile(r"(?P<case>\d+(?:\.\d+)+)\s+(?P<reason>\S.*)")


def load_allowlist(text: str) -> dict[str, str]:
    """case id -> reason, from lines `CASE  REASON` ('#' starts a comment line); ValueError for a bad line."""
    allowed: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _ALLOW_LINE.fullmatch(line)
        if found is None:
            raise ValueError(f"line {number}: expected 'CASE  REASON', got {line!r}")
        if found["case"] in allowed:
            raise ValueError(f"line {number}: case {found['case']} is listed twice")
        allowed[found["case"]] = found["reason"]
    return allowed


def case_passes(result: CaseResult, allowed: dict[str, str]) -> bool:
    if result.behavior_close not in PASSING_CLOSE_BEHAVIOURS:
        return False
    return result.behavior in PASSING_BEHAVIOURS or (result.behavior == NON_STRICT and result.case in allowed)


def judge(results: dict[str, CaseResult], allowed: dict[str, str]) -> list[CaseResult]:
    """The cases that do not pass, in case order."""
    return sorted((r for r in results.values() if not case_passes(r, allowed)), key=lambda r: _case_key(r.case))


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO_ROOT))
    return str(path)


def _shorten(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def print_summary(server: str, selection: str, results: dict[str, CaseResult], allowed: dict[str, str],
                  elapsed: float) -> None:  # fmt: skip
    behaviours = collections.Counter(r.behavior for r in results.values())
    closes = collections.Counter(r.behavior_close for r in results.values())
    print(f"\nAutobahn|Testsuite {TESTSUITE_VERSION} fuzzingclient against {server}, cases {selection}: "
          f"{len(results)} cases in {elapsed:.0f} s")  # fmt: skip
    print(f"  {'result':<16}{'cases':>6}   {'closing handshake':<18}{'cases':>6}")
    rows = max(len(behaviours), len(closes))
    left = sorted(behaviours.items(), key=lambda item: -item[1]) + [("", 0)] * rows
    right = sorted(closes.items(), key=lambda item: -item[1]) + [("", 0)] * rows
    for (name, count), (close_name, close_count) in list(zip(left, right, strict=False))[:rows]:
        print(f"  {name:<16}{count or '':>6}   {close_name:<18}{close_count or '':>6}")
    listed = sorted((r for r in results.values() if r.behavior != "OK" or r.behavior_close != "OK"),
                    key=lambda r: _case_key(r.case))  # fmt: skip
    if listed:
        print("  cases not plainly OK:")
    for result in listed:
        verdict = "passes" if case_passes(result, allowed) else "FAILS"
        allowed_reason = allowed.get(result.case) if result.behavior == NON_STRICT else None
        reason = f" (allowed: {_shorten(allowed_reason)})" if allowed_reason else ""
        print(f"    {result.case:<9}{result.behavior:<14} close {result.behavior_close:<13} "
              f"code {result.remote_close_code!s:<5} {verdict}{reason}")  # fmt: skip
    stale = sorted((case for case in allowed if case in results and results[case].behavior in PASSING_BEHAVIOURS),
                   key=_case_key)  # fmt: skip
    if stale:
        print(f"  note: allowed as NON-STRICT but now OK (the allow-list line can go): {', '.join(stale)}")


# --------------------------------------------------------------------------------------------------
# Command line


def _split_patterns(chunks: Iterable[str]) -> list[str]:
    return [pattern for chunk in chunks for pattern in re.split(r"[,\s]+", chunk) if pattern]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tests/autobahn/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--cases", action="append", metavar="PATTERNS",
                        help="case patterns, comma-separated, repeatable (default: the CI cases "
                             f"{','.join(CI_CASES)}); '9.*' is the slow performance group")  # fmt: skip
    parser.add_argument("--exclude", action="append", metavar="PATTERNS",
                        help="case patterns to leave out, comma-separated, repeatable")
    parser.add_argument("--server", choices=("corral", "uvicorn"), default="corral",
                        help="server under test; uvicorn (websockets implementation) from bench/.venv")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--jobs", type=int, default=4,
                        help="fuzzingclient processes run in parallel for the bulk groups 9, 12, 13 (default 4)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds the clients may take in all (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--python27", help="the CPython 2.7 interpreter (default: pyenv's, else PATH)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the testsuite is installed and the reports go (default .autobahn/)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.jobs < 1 or args.timeout <= 0:
        parser.error("--workers and --jobs must be at least 1, --timeout positive")
    args.patterns = _split_patterns(args.cases or [",".join(CI_CASES)])
    args.excluded = _split_patterns(args.exclude or [])
    return args


def _run_all_clients(python27: str, site_dir: Path, runs: Sequence[ClientRun], url: str,
                     args: argparse.Namespace) -> list[str]:  # fmt: skip
    # Some protocol cases time their waits (a second or two), so they run alone before the bulk groups load
    # the machine; the bulk runs then share the cores.
    deadline = time.monotonic() + args.timeout
    protocol = [run for run in runs if run.validate_utf8]
    bulk = [run for run in runs if not run.validate_utf8]
    problems = run_clients(python27, site_dir, protocol, url, args.server, 1, args.timeout)
    remaining = max(POLL_INTERVAL, deadline - time.monotonic())
    return problems + run_clients(python27, site_dir, bulk, url, args.server, args.jobs, remaining)


def _tree_cpu_seconds(root: int) -> float:
    """utime + stime of a process and its living descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child, parent in parents.items() if parent == pid and child not in tree]
    return sum(times.get(pid, 0.0) for pid in tree)


def _children_cpu_seconds() -> float:
    """CPU time of the processes this one has waited for: the clients and the server, once stopped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_suite(args: argparse.Namespace, python27: str) -> int:
    started = time.monotonic()
    try:
        allowed = load_allowlist(ALLOWLIST_PATH.read_text())
    except ValueError as problem:
        raise HarnessError(f"{_display(ALLOWLIST_PATH)}: {problem}") from None
    site_dir, notes = install_testsuite(python27, args.cache_dir)
    installed_at = time.monotonic()
    cases = expand_cases(python27, site_dir, args.patterns, args.excluded)
    reports_dir = args.cache_dir / "reports" / args.server
    shutil.rmtree(reports_dir, ignore_errors=True)
    reports_dir.mkdir(parents=True)
    runs = plan_runs(cases, args.jobs, reports_dir)
    port = free_port()
    server_log = reports_dir / "server.log"
    print(f"autobahn: {len(cases)} cases against {args.server} on 127.0.0.1:{port} ({args.workers} worker(s), "
          f"{len(runs)} client run(s), at most {args.jobs} at a time)", flush=True)  # fmt: skip
    cpu_before = _children_cpu_seconds()
    server = start_server(args.server, port, args.workers, server_log)
    try:
        problems = _run_all_clients(python27, site_dir, runs, f"ws://127.0.0.1:{port}", args)
        server_cpu = _tree_cpu_seconds(server.pid)
    finally:
        stop_server(server)
    cpu_used = _children_cpu_seconds() - cpu_before
    results = load_results(runs, args.server)
    selection = " ".join(args.patterns) + (f" less {' '.join(args.excluded)}" if args.excluded else "")
    print_summary(args.server, selection, results, allowed, time.monotonic() - installed_at)
    print(f"  CPU time: {cpu_used - server_cpu:.0f} s in the fuzzing clients, {server_cpu:.0f} s in {args.server}")
    missing = [case for case in cases if case not in results]
    if missing:
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        problems.append(f"{len(missing)} of {len(cases)} cases are missing from the reports: {shown}")
    tracebacks = server_log.read_text(errors="replace").count("Traceback")
    for note in [*notes, *([f"the server logged {tracebacks} traceback(s)"] if tracebacks else [])]:
        print(f"  note: {note}")
    print(f"  reports: {_display(reports_dir)}/*/index.html; server log: {_display(server_log)}; "
          f"install took {installed_at - started:.0f} s")  # fmt: skip
    failing = judge(results, allowed)
    for problem in problems:
        print(f"autobahn: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    if failing:
        print(f"autobahn: FAIL: {len(failing)} of {len(results)} cases do not pass: "
              f"{', '.join(r.case for r in failing[:30])}{' ...' if len(failing) > 30 else ''}")  # fmt: skip
        return 1
    print(f"autobahn: PASS: all {len(results)} cases OK, INFORMATIONAL or allowed NON-STRICT")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.python27 and _python_version(args.python27) != "2.7":
        print(f"autobahn: error: --python27 {args.python27}: not a working CPython 2.7", file=sys.stderr)
        return 2
    python27 = args.python27 or find_python27()
    if python27 is None:
        print("autobahn: SKIPPED: no CPython 2.7 found (looked under the pyenv root and for python2.7/python2 on "
              "PATH); Autobahn|Testsuite needs it. Install one, e.g. `pyenv install 2.7.18`.")  # fmt: skip
        return 0
    try:
        return run_suite(args, python27)
    except (HarnessError, OSError, subprocess.SubprocessError) as problem:
        print(f"autobahn: error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
