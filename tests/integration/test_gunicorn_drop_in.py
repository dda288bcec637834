"""Gunicorn config files and command lines run unchanged under corral, and every setting in them takes effect.

Two sets of inputs: config files and command lines from public deployment guides (../shared, skipped where
absent), and the project's own fixtures in tests/fixtures/gunicorn/.
"""

from __future__ import annotations

import grp
import multiprocessing
import os
import pwd
import re
import runpy
import shlex
import socket
from pathlib import Path

import httpx
import pytest

from corral.config import SETTINGS_BY_NAME, load_config
from tests.integration.conftest import REPO_ROOT, exchange, wait_for_ready_workers, wait_until
from tests.integration.test_cli_config import assert_one_error_line, printed_config, run_corral

SEED_CONFIGS = REPO_ROOT.parent / "shared" / "fixtures" / "seed-configs"
OWN_CONFIGS = REPO_ROOT / "tests" / "fixtures" / "gunicorn"
APP = "tests.apps.master_apps:app"
ME = ["-u", pwd.getpwuid(os.getuid()).pw_name, "-g", grp.getgrgid(os.getgid()).gr_name]


def seed(name: str) -> Path:
    path = SEED_CONFIGS / name
    if not path.is_file():
        pytest.skip(f"the shared seed config {name} is not present")
    return path


def seed_configs() -> list[Path]:
    return sorted(SEED_CONFIGS.glob("*.py")) if SEED_CONFIGS.is_dir() else []


def settings_in(path: Path) -> dict[str, object]:
    """The settings a config file assigns or defines, as Python sees them."""
    namespace = runpy.run_path(str(path))
    return {name: value for name, value in namespace.items() if name in SETTINGS_BY_NAME}


def assert_file_values_took_effect(path: Path, overridden: tuple[str, ...] = ()) -> None:
    overrides = ME if "user" in overridden else []
    cfg = load_config(["-c", str(path), APP, *overrides], environ={})
    for name, value in settings_in(path).items():
        if name in overridden:
            continue
        assert cfg.sources[name] == f"config file {path}", name
        if callable(value):  # a hook: the file was run twice, so compare what it is, not the object
            assert getattr(cfg, name).__code__.co_code == value.__code__.co_code, name
        else:
            assert getattr(cfg, name) == SETTINGS_BY_NAME[name].validator(value), name


# --------------------------------------------------------------------------------------------------
# Every setting in every file takes effect (effective values)


@pytest.mark.skipif(not seed_configs(), reason="the shared seed configs are not present")
@pytest.mark.parametrize("path", seed_configs(), ids=lambda p: p.name)
def test_every_setting_of_a_seed_config_takes_effect(path):
    overridden = ("user", "group") if "user" in settings_in(path) else ()
    assert_file_values_took_effect(path, overridden)


def test_seed_config_with_a_user_this_machine_lacks_fails_with_one_line(tmp_path):
    result = run_corral(["-c", str(seed("guide_a.gunicorn.conf.py")), APP], tmp_path)
    line = assert_one_error_line(result, "user: ")
    assert "'fasterapi'" in line


def test_own_production_config_takes_effect_and_names_each_ignored_setting(tmp_path):
    path = OWN_CONFIGS / "production.conf.py"
    assert_file_values_took_effect(path)
    result = run_corral(["-c", str(path), "--print-config", APP], tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2, warnings
    for name in ("worker_tmp_dir", "capture_output"):
        assert [w for w in warnings if w.startswith(f"corral: warning: {name}: ignored (")], name
    rows = printed_config(result.stdout)
    assert rows["worker_class"][0] == "'corral'"
    assert rows["raw_env"][0] == "['SHOP_ENV=production', 'SHOP_REGION=eu']"


@pytest.mark.parametrize("worker_class", ["gevent", "eventlet", "tornado", "myapp.MyWorker"])
def test_a_worker_class_corral_cannot_be_fails_with_one_line_saying_what_it_supports(tmp_path, worker_class):
    result = run_corral(["-k", worker_class, APP], tmp_path)
    line = assert_one_error_line(result, "worker_class: ")
    assert "uvicorn.workers.UvicornWorker" in line


def test_a_sync_worker_config_file_is_accepted(tmp_path):
    result = run_corral(["-c", str(OWN_CONFIGS / "sync_worker.conf.py"), "--print-config", APP], tmp_path)
    assert result.returncode == 0, result.stderr
    assert printed_config(result.stdout)["worker_class"][0] == "'sync'"


def test_a_config_file_naming_a_missing_user_fails_before_binding(tmp_path):
    result = run_corral(["-c", str(OWN_CONFIGS / "unknown_user.conf.py"), APP], tmp_path)
    assert "corral-fixture-no-such-user" in assert_one_error_line(result, "user: ")


UVICORN_WORKERS = ["uvicorn.workers.UvicornWorker", "uvicorn_worker.UvicornWorker", "uvicorn.workers.UvicornH11Worker"]


@pytest.mark.parametrize("worker_class", UVICORN_WORKERS)
def test_uvicorn_worker_classes_all_mean_corrals_worker(tmp_path, worker_class):
    result = run_corral(["-k", worker_class, "--print-config", APP], tmp_path)
    assert printed_config(result.stdout)["worker_class"][0] == "'corral'"


def test_daemon_mode_is_refused_in_one_line(tmp_path):
    assert "does not daemonize" in assert_one_error_line(run_corral(["-D", APP], tmp_path), "daemon: ")


# --------------------------------------------------------------------------------------------------
# Command lines


def seed_command_lines() -> list[str]:
    path = SEED_CONFIGS / "guide_e.cli.txt"
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith("gunicorn ")]


FLAG_SETTINGS = {
    "--workers": "workers", "-w": "workers", "--bind": "bind", "-b": "bind", "--timeout": "timeout",
    "--graceful-timeout": "graceful_timeout", "--keep-alive": "keepalive", "--max-requests": "max_requests",
    "--max-requests-jitter": "max_requests_jitter", "--access-logfile": "accesslog", "--error-logfile": "errorlog",
    "--log-level": "loglevel", "--preload": "preload_app", "--worker-class": "worker_class", "-k": "worker_class",
}  # fmt: skip


@pytest.mark.skipif(not seed_command_lines(), reason="the shared seed command lines are not present")
@pytest.mark.parametrize("command", seed_command_lines())
def test_seed_gunicorn_command_line_means_the_same_to_corral(command):
    argv = shlex.split(command)[1:]
    cfg = load_config(argv, environ={})
    assert cfg.app == argv[0]
    for index, token in enumerate(argv):
        name = FLAG_SETTINGS.get(token)
        if name is None:
            continue
        assert cfg.sources[name] == "command line", token
        if name == "preload_app":
            assert cfg.preload_app is True
        elif name != "worker_class":
            assert getattr(cfg, name) == SETTINGS_BY_NAME[name].validator(argv[index + 1]), token


def test_every_gunicorn_flag_operators_use_is_understood():
    argv = [
        "-w", "2", "-b", "127.0.0.1:9001", "-k", "uvicorn.workers.UvicornWorker", "-t", "40", "--preload",
        "--access-logfile", "-", "--error-logfile", "-", "--log-level", "debug", "--keep-alive", "3",
        "--max-requests", "10", "--max-requests-jitter", "2", "--graceful-timeout", "7", "--timeout", "41",
        "--bind", "127.0.0.1:9002", "--workers", "3", "--worker-class", "uvicorn_worker.UvicornWorker",
        "--chdir", "/", "--pid", "/tmp/x.pid", "--name", "n", "--umask", "0o22",
        "--forwarded-allow-ips", "10.0.0.1", "--limit-request-line", "100", "--limit-request-fields", "10",
        "--limit-request-field_size", "100", "--limit-request-field-size", "200", "main:app",
    ]  # fmt: skip
    cfg = load_config(argv, environ={})
    assert (cfg.workers, cfg.timeout, cfg.keepalive, cfg.graceful_timeout) == (3, 41.0, 3.0, 7.0)
    assert cfg.bind == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert (cfg.pidfile, cfg.proc_name, cfg.umask, cfg.chdir) == ("/tmp/x.pid", "n", 0o22, "/")
    assert (cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size) == (100, 10, 200)


# --------------------------------------------------------------------------------------------------
# Behaviour, where a setting is observable from outside


def title_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_guide_a_runs_with_its_worker_count_title_and_access_log_format(serve):
    path = seed("guide_a.gunicorn.conf.py")
    server = serve(APP, "-c", str(path), *ME)
    expected_workers = multiprocessing.cpu_count() * 2 + 1
    workers = wait_for_ready_workers(server, expected_workers, timeout=60.0)
    assert title_of(server.proc.pid).startswith("corral: master [fasterapi]")
    assert all(title_of(pid).startswith("corral: worker [fasterapi]") for pid in workers)
    assert httpx.get(server.url).status_code == 200
    access_line = re.compile(r'^127\.0\.0\.1 "GET / HTTP/1\.1" 200 \d+ \d+μs$', re.MULTILINE)
    assert wait_until(lambda: access_line.search(server.stdout_text()), 10.0), server.stdout_text()


def test_guide_b_runs_logging_at_info_to_stderr_and_access_to_stdout(serve):
    server = serve(APP, "-c", str(seed("guide_b.gunicorn_conf.py")))
    wait_for_ready_workers(server, multiprocessing.cpu_count() * 2 + 1, timeout=60.0)
    assert httpx.get(server.url).status_code == 200
    assert wait_until(lambda: '"GET / HTTP/1.1" 200' in server.stdout_text(), 10.0)
    assert "Application startup complete" in server.stderr_text()  # an info line


def test_guide_c_request_limits_are_the_files_not_the_defaults(serve):
    server = serve(APP, "-c", str(seed("guide_c.gunicorn_config.py")), "-w", "1")
    long_target = "/" + "a" * 6000  # over the 4094 default, under the file's 8190
    assert exchange(server.port, f"GET {long_target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).responses()[0].status == 200
    too_many = "".join(f"X-H{i}: v\r\n" for i in range(101))
    reply = exchange(server.port, f"GET / HTTP/1.1\r\nHost: x\r\n{too_many}\r\n".encode()).responses()
    assert reply[0].status == 431


def test_guide_d_hooks_file_runs_and_stops_cleanly(serve):
    server = serve(APP, "-c", str(seed("guide_d.hooks.py")))
    assert httpx.get(server.url).status_code == 200
    assert server.stop() == 0


def test_own_production_config_serves_with_its_environment_and_umask(serve, tmp_path):
    sock_path = tmp_path / "shop.sock"
    server = serve(APP, "-c", str(OWN_CONFIGS / "production.conf.py"), "-w", "1", "-b", f"unix:{sock_path}")
    assert wait_until(sock_path.exists, 10.0)
    assert oct(sock_path.stat().st_mode & 0o777) == oct(0o770)  # umask 007 from the file
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5.0)
        client.connect(str(sock_path))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
    assert server.stop() == 0
