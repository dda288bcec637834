"""What corral's request metrics cost: corral with them on (the default) and off (--no-request-metrics), and
optionally a corral from another source tree, measured in one run by the harness, rounds interleaved.

    bench/run --setup-only
    bench/.venv/bin/python bench/metrics_cost.py --repeat 3 [--baseline-src DIR] [harness options]

--baseline-src DIR runs DIR/corral (e.g. an unpacked older commit: `git archive HEAD src | tar -x -C /tmp/base`,
then --baseline-src /tmp/base/src) as "corral-baseline". Tests default to plaintext,json; results go to
bench/out/metrics/ so the main results are left alone. The last lines compare each variant with corral.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # found through the line above: bench/ is no package

__all__ = ["main"]

ON, OFF, BASELINE = "corral", "corral-no-metrics", "corral-baseline"


def _without_metrics(port: int, access_log: Path | None) -> list[str]:
    return [*harness.corral_command(port, access_log), "--no-request-metrics"]


def _baseline(source: Path) -> harness.ServerSpec:
    def command(port: int, access_log: Path | None) -> list[str]:
        # `env` puts the other tree first on sys.path (the harness sets PYTHONPATH to the repository for the app).
        return ["env", f"PYTHONPATH={source}:{harness.REPO_ROOT}", *harness.corral_command(port, access_log)]

    return harness.ServerSpec(BASELINE, f"corral from {source}", command)


def _comparison(rows: list[harness.Row]) -> list[str]:
    by_key = {(row.server, row.test): row for row in rows if row.status == "ok"}
    lines = []
    for test in sorted({row.test for row in rows}):
        mine = by_key.get((ON, test))
        for other in (OFF, BASELINE):
            theirs = by_key.get((other, test))
            if mine is None or theirs is None or not theirs.rps or not theirs.cpu_us_per_request:
                continue
            rps = 100.0 * (mine.rps / theirs.rps - 1)
            cpu = mine.cpu_us_per_request - theirs.cpu_us_per_request  # type: ignore[operator]
            lines.append(
                f"{test}: metrics on vs {other}: req/s {mine.rps:,.0f} vs {theirs.rps:,.0f} ({rps:+.1f} %), "
                f"CPU {mine.cpu_us_per_request:.2f} vs {theirs.cpu_us_per_request:.2f} us/request ({cpu:+.2f})"
            )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--baseline-src", type=Path)
    own, rest = parser.parse_known_args(argv)
    harness.SERVERS[OFF] = harness.ServerSpec(OFF, "corral --no-request-metrics", _without_metrics)
    servers = [ON, OFF]
    if own.baseline_src is not None:
        harness.SERVERS[BASELINE] = _baseline(own.baseline_src.resolve())
        servers.append(BASELINE)
    defaults = ["--only", ",".join(servers), "--tests", "plaintext,json", "--no-access-log-pass",
                "--out", str(harness.BENCH_DIR / "out" / "metrics")]  # fmt: skip
    args = harness.parse_args(defaults + rest)  # options given later win
    args.out.mkdir(parents=True, exist_ok=True)
    harness.check_cores(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rows, runs, failures = harness.run_all(args)
    finally:
        harness.stop_all_started()
    print(harness.write_outputs(rows, runs, failures, harness.environment_facts(), args))
    print("\n".join(_comparison(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
