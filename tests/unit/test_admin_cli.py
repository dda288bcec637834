"""`corral status`, `corral reload` and `corral scale N`: how they are told apart from an app, how they find
the master, and how scale walks the target one signal at a time (with the master faked)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.admin import client
from corral.admin.identity import start_ticks
from corral.cli import _command_options, _UsageError, main
from corral.config import load_config
from corral.core.settings import Settings


def config(*args: str, cwd: Path) -> Settings:
    return load_config(list(args), environ={}, cwd=str(cwd)).settings


def test_status_takes_json_and_passes_the_servers_options_on() -> None:
    options, rest = _command_options("status", ["--json", "-c", "prod.py", "--admin-bind", "127.0.0.1:9000"])
    assert options["json"] and rest == ["-c", "prod.py", "--admin-bind", "127.0.0.1:9000"]


def test_scale_takes_the_count_first_and_a_timeout() -> None:
    options, rest = _command_options("scale", ["4", "--timeout=2.5", "-p", "/run/corral.pid"])
    assert (options["workers"], options["timeout"], rest) == (4, 2.5, ["-p", "/run/corral.pid"])
    options, _ = _command_options("scale", ["1", "--timeout", "9"])
    assert options["timeout"] == 9.0
    for bad in ([], ["-c", "x.py", "4"], ["four"], ["4", "--timeout", "soon"]):
        with pytest.raises(_UsageError):
            _command_options("scale", bad)


def test_status_without_an_admin_endpoint_says_what_to_give_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_CMD_ARGS", raising=False)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    assert main(["status"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("corral: error: corral status needs the admin endpoint") and "\n" not in error


def test_a_command_refuses_an_extra_argument_rather_than_taking_it_for_an_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["reload", "main:app"]) == 2
    assert "unexpected argument 'main:app'" in capsys.readouterr().err


def test_a_command_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scale", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: corral scale N")


def test_an_unreachable_admin_endpoint_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--admin-bind", f"unix:{tmp_path}/nobody.sock"]) == 1
    assert "cannot reach the admin endpoint" in capsys.readouterr().err


def test_the_master_pid_comes_from_the_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "corral.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    assert client.master_pid(config("-p", str(pidfile), cwd=tmp_path)) == os.getpid()
    pidfile.write_text("nonsense")
    with pytest.raises(client.CommandError, match="not a process id"):
        client.master_pid(config("-p", str(pidfile), cwd=tmp_path))
    with pytest.raises(client.CommandError, match=r"(?i)no such file"):
        client.master_pid(config("-p", str(tmp_path / "missing.pid"), cwd=tmp_path))
    with pytest.raises(client.NotConfigured):
        client.master_pid(config(cwd=tmp_path))


def test_a_stale_pidfile_is_named(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that existed and is gone
    pidfile = tmp_path / "corral.pid"
    pidfile.write_text(str(pid))
    with pytest.raises(client.CommandError, match="stale"):
        client.master_pid(config("-p", str(pidfile), cwd=tmp_path))


def test_reload_sends_hup_to_the_master(tmp_path: Path) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: received.append(signum))
    try:
        (tmp_path / "corral.pid").write_text(str(os.getpid()))
        message = client.reload(config("-p", str(tmp_path / "corral.pid"), cwd=tmp_path))
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert received == [signal.SIGHUP]
    assert f"pid {os.getpid()}" in message


class FakeMaster:
    """Answers /status with a target that TTIN and TTOU move, as the arbiter does (never below 1)."""

    def __init__(self, target: int, *, deaf: bool = False) -> None:
        self.target = target
        self.deaf = deaf
        self.signals: list[int] = []

    def fetch(self, address: str) -> dict[str, Any]:
        return {"master": {"pid": os.getpid(), "start_ticks": start_ticks(os.getpid()), "target": self.target}}

    def send(self, pid: int, signum: int) -> None:
        self.signals.append(signum)
        if not self.deaf:
            self.target = max(1, self.target + (1 if signum == signal.SIGTTIN else -1))


@pytest.mark.parametrize(("start", "wanted", "sent"), [(2, 4, ["SIGTTIN"] * 2), (3, 1, ["SIGTTOU"] * 2), (2, 2, [])])
def test_scale_sends_one_signal_per_step_until_the_target_is_reached(
    tmp_path: Path, start: int, wanted: int, sent: list[str]
) -> None:
    master = FakeMaster(start)
    cfg = config("--admin-bind", "127.0.0.1:9000", cwd=tmp_path)
    message = client.scale(cfg, wanted, fetch=master.fetch, send=master.send)
    assert [signal.Signals(s).name for s in master.signals] == sent
    assert master.target == wanted and f"target {start} -> {wanted}" in message


def test_scale_gives_up_when_the_master_does_not_move(tmp_path: Path) -> None:
    master = FakeMaster(2, deaf=True)
    cfg = config("--admin-bind", "127.0.0.1:9000", cwd=tmp_path)
    with pytest.raises(client.CommandError, match="did not change its target from 2"):
        client.scale(cfg, 3, timeout=0.2, fetch=master.fetch, send=master.send)


def test_scale_needs_at_least_one_worker_and_the_admin_endpoint(tmp_path: Path) -> None:
    with pytest.raises(client.CommandError, match="at least 1"):
        client.scale(config("--admin-bind", "127.0.0.1:9000", cwd=tmp_path), 0)
    with pytest.raises(client.NotConfigured):
        client.scale(config(cwd=tmp_path), 2)


def test_a_pidfile_written_before_its_process_started_is_stale(tmp_path: Path) -> None:
    pidfile = tmp_path / "corral.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    os.utime(pidfile, (1_000_000_000, 1_000_000_000))  # written in 2001: long before this process started
    with pytest.raises(client.CommandError, match=r"stale: process \d+ started after it was written"):
        client.master_pid(config("-p", str(pidfile), cwd=tmp_path))


@pytest.mark.parametrize("reported", [-1, 0, 1, True, "1234", None])
def test_scale_refuses_a_master_pid_that_is_no_process_of_ours(tmp_path: Path, reported: object) -> None:
    sent: list[tuple[int, int]] = []
    document = {"master": {"pid": reported, "start_ticks": 1, "target": 2}}
    cfg = config("--admin-bind", "127.0.0.1:9000", cwd=tmp_path)
    with pytest.raises(client.CommandError):
        client.scale(cfg, 3, fetch=lambda address: document, send=lambda pid, signum: sent.append((pid, signum)))
    assert sent == []


def test_scale_refuses_a_pid_whose_start_time_is_not_the_published_one(tmp_path: Path) -> None:
    sent: list[tuple[int, int]] = []
    ticks = start_ticks(os.getpid())
    assert ticks is not None
    document = {"master": {"pid": os.getpid(), "start_ticks": ticks + 1, "target": 2}}
    cfg = config("--admin-bind", "127.0.0.1:9000", cwd=tmp_path)
    with pytest.raises(client.CommandError, match="not that master"):
        client.scale(cfg, 3, fetch=lambda address: document, send=lambda pid, signum: sent.append((pid, signum)))
    assert sent == []
