"""Samples one server with py-spy while wrk loads it, and prints where its CPU time goes.

Started by bench/profile inside bench/.venv; `bench/profile --help` lists the options.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

import harness

__all__ = ["main"]

# "name (file.py:12)" -> "name (file.py)": time is summed per function, not per line.
_LINE_NUMBER = re.compile(r":\d+\)$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/profile", description=__doc__)
    parser.add_argument("--server", default="corral", choices=list(harness.SERVERS))
    parser.add_argument("--test", default="plaintext", choices=list(harness.ALL_TESTS))
    parser.add_argument("--duration", type=int, default=10, help="seconds of load (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second (500)")
    parser.add_argument("--blocking", action="store_true",
                        help="pause the server at each sample: exact stacks, much slower server "
                             "(implied by --native)")
    parser.add_argument("--native", action="store_true", help="include C frames (httptools, uvloop)")
    parser.add_argument("--access-log", action="store_true", help="run the server with its access log on")
    parser.add_argument("--top", type=int, default=30, help="functions to list (30)")
    parser.add_argument("--out", type=Path, default=harness.BENCH_DIR / "out")
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 120 and 1 <= args.rate <= 2000):
        parser.error("--duration must be in (0, 120] and --rate in [1, 2000]")
    # What harness.wrk_command reads: wrk on core 1 with the profiler, the server alone on core 0.
    args.threads, args.server_cpu, args.client_cpu = 1, 0, 1
    return args


def record(args: argparse.Namespace, server: harness.RunningServer, raw_path: Path) -> str:
    """Runs py-spy and wrk together; returns wrk's output."""
    py_spy = [harness._bin("py-spy"), "record", "--pid", str(server.process.pid), "--subprocesses",
              "--rate", str(args.rate), "--duration", str(args.duration + 1), "--format", "raw",
              "--output", str(raw_path)]
    if args.native:
        py_spy.append("--native")
    if not (args.blocking or args.native):  # py-spy reads C stacks only from a paused process
        py_spy.append("--nonblocking")
    path = harness.TESTS[args.test].path
    with open(args.out / "profile.py-spy.log", "wb") as log:
        sampler = subprocess.Popen(harness.pinned(args.client_cpu, py_spy), stdout=log, stderr=log)
        try:
            time.sleep(1.0)  # let py-spy attach before the load starts
            output, _ = harness.run_wrk(
                harness.wrk_command(args, server.url(path), args.test, args.duration), args.duration
            )
            sampler.wait(timeout=args.duration + 30)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait(timeout=5)
    return output


def summarise(raw_path: Path, top: int) -> str:
    """Self and inclusive sample shares per function, from py-spy's collapsed-stack output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack_text.split(";")
                  if not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples (did the server get any load?)"
    return "\n".join([
        f"{total} samples",
        "", "self time (the function itself was running):", *_listing(own, total, top),
        "", "inclusive time (the function or anything it called):", *_listing(inclusive, total, top),
    ])


def _listing(counter: collections.Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100.0 * count / total:5.1f}%  {name}" for name, count in counter.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    raw_path = args.out / f"profile-{args.server}-{args.test}.txt"
    raw_path.unlink(missing_ok=True)
    access_log = args.out / "profile.access.log" if args.access_log else None
    spec = harness.SERVERS[args.server]
    server = harness.start_server(spec, args.server_cpu, args.out, access_log, "-profile")
    try:
        problem = harness.wait_until_ready(server, 30)
        if problem:
            print(f"{args.server}: {problem}\n{server.stderr_tail()}", file=sys.stderr)
            return 1
        wrk_output = record(args, server, raw_path)
    finally:
        harness.stop_server(server.process)
        if access_log:
            access_log.unlink(missing_ok=True)
    print(f"under the profiler: {harness.parse_wrk(wrk_output)}")
    if not raw_path.exists():
        log = (args.out / "profile.py-spy.log").read_text(errors="replace").strip()
        print(f"py-spy wrote no profile:\n{log[-2000:]}", file=sys.stderr)
        return 1
    print(summarise(raw_path, args.top))
    print(f"\ncollapsed stacks: {raw_path} (flamegraph.pl or speedscope read them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
