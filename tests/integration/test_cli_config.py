"""`corral` as a real process: configuration errors exit 2 with one line before anything is bound,
--print-config shows values and their sources, and Gunicorn-style config files load."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_CONFIGS = REPO_ROOT.parent / "shared" / "fixtures" / "seed-configs"
RUN_TIMEOUT = 60.0

# Env vars that would change the effective configuration of the child.
_CONFIG_ENV = ("CORRAL_CMD_ARGS", "GUNICORN_CMD_ARGS", "PORT", "WEB_CONCURRENCY", "WEB_TIMEOUT",
               "WEB_MAX_REQUESTS", "FORWARDED_ALLOW_IPS")  # fmt: skip
_LINE = re.compile(r"^(\w+) *= (.*)  # (.*)$")


def run_corral(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if k not in _CONFIG_ENV}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def printed_config(stdout: str) -> dict[str, tuple[str, str]]:
    """{name: (value repr, source)} from --print-config output."""
    rows = {}
    for line in stdout.splitlines():
        match = _LINE.match(line)
        assert match, f"not a `name = value  # source` line: {line!r}"
        rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def assert_one_error_line(result: subprocess.CompletedProcess[str], setting: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"corral: error: {setting}"), lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["main:app", "--keep-alive", "soon"], "keepalive: "),
        (["main:app", "--backlog", "0"], "backlog: "),
        (["main:app", "-b", "127.0.0.1:99999"], "bind: "),
        (["main:app", "--limit-request-line", "-1"], "limit_request_line: "),
        (["main:app", "-k", "gevent"], "worker_class: "),
        (["main:app", "--paste", "app.ini"], "paste: not supported ("),
        (["main:app", "--no-such-flag"], "--no-such-flag: unknown option"),
        (["main:app", "-D"], "daemon: not supported (corral does not daemonize"),
        (["main:app", "-c", "missing.conf.py"], "config file missing.conf.py: no such file"),
        ([], "APP: missing"),
    ],
)
def test_configuration_error_exits_2_with_one_line_naming_the_setting(tmp_path, args, setting):
    assert_one_error_line(run_corral(args, tmp_path), setting)


def test_bad_value_in_cmd_args_env_exits_2(tmp_path):
    result = run_corral(["main:app"], tmp_path, {"CORRAL_CMD_ARGS": "--header-timeout never"})
    line = assert_one_error_line(result, "header_timeout: ")
    assert "CORRAL_CMD_ARGS" in line


def test_config_error_happens_before_anything_is_bound(tmp_path):
    # A unix socket leaves a file behind once bound: its absence proves the exit came first.
    socket_path = tmp_path / "corral.sock"
    app = tmp_path / "never_imported.py"
    app.write_text("raise SystemExit('the app must not be imported')\n")
    result = run_corral(
        ["never_imported:app", "--app-dir", str(tmp_path), "-b", f"unix:{socket_path}", "--backlog", "-3"],
        tmp_path,
    )
    assert_one_error_line(result, "backlog: ")
    assert not socket_path.exists()


def test_config_file_syntax_error_names_the_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("bind = '127.0.0.1:8000'\nworkers = (\n")
    line = assert_one_error_line(run_corral(["-c", "broken.py", "main:app"], tmp_path), "config file broken.py")
    assert re.search(r"line \d+: syntax error", line)


def test_print_config_shows_values_and_where_each_came_from(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(
        textwrap.dedent(
            """
            bind = ["127.0.0.1:9001", "[::1]:9001"]
            keepalive = 7
            backlog = 128
            worker_class = "uvicorn.workers.UvicornWorker"
            """
        )
    )
    env = {"CORRAL_CMD_ARGS": "--backlog 256 --root-path /api", "FORWARDED_ALLOW_IPS": "10.0.0.0/8"}
    result = run_corral(["-c", "gunicorn.conf.py", "--print-config", "--root-path", "/v2", "main:app"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = printed_config(result.stdout)
    assert rows["app"] == ("'main:app'", "command line")
    assert rows["bind"] == ("['127.0.0.1:9001', '[::1]:9001']", "config file gunicorn.conf.py")
    assert rows["keepalive"] == ("7.0", "config file gunicorn.conf.py")
    assert rows["worker_class"] == ("'corral'", "config file gunicorn.conf.py")
    assert rows["backlog"] == ("256", "CORRAL_CMD_ARGS")
    assert rows["root_path"] == ("'/v2'", "command line")
    assert rows["forwarded_allow_ips"] == ("'10.0.0.0/8'", "env FORWARDED_ALLOW_IPS")
    assert rows["limit_request_line"] == ("4094", "default")
    assert rows["on_starting"] == ("None", "default")


def test_print_config_reads_corral_conf_py_from_the_working_directory(tmp_path):
    (tmp_path / "corral.conf.py").write_text("header_timeout = 3\n")
    result = run_corral(["--print-config"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = printed_config(result.stdout)
    assert rows["header_timeout"][0] == "3.0"
    assert rows["header_timeout"][1].startswith("config file ")
    assert rows["header_timeout"][1].endswith("corral.conf.py")


def test_port_env_sets_bind_when_nothing_else_does(tmp_path):
    result = run_corral(["--print-config", "main:app"], tmp_path, {"PORT": "8123"})
    assert printed_config(result.stdout)["bind"] == ("['0.0.0.0:8123']", "env PORT")


def test_unknown_names_in_a_config_file_are_warned_about(tmp_path):
    (tmp_path / "c.py").write_text("import multiprocessing\ncores = multiprocessing.cpu_count()\nbacklog = 8\n")
    result = run_corral(["-c", "c.py", "--print-config", "main:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["corral: warning: config file c.py: unknown setting 'cores' ignored"]


def test_check_config_imports_the_app(tmp_path):
    (tmp_path / "okapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    result = run_corral(["--check-config", "okapp:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_corral(["--check-config", "no_such_module_here:app"], tmp_path)
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("corral: error: ")


def test_version_and_help(tmp_path):
    version = run_corral(["--version"], tmp_path)
    assert version.returncode == 0
    assert re.fullmatch(r"corral \d+\.\d+\.\d+\S* \((pure Python|request path compiled with mypyc)\)\n", version.stdout)
    help_text = run_corral(["--help"], tmp_path)
    assert help_text.returncode == 0
    assert "Server Socket:" in help_text.stdout
    assert "--bind ADDRESS" in help_text.stdout


def test_check_config_checks_the_tls_files(tmp_path):
    missing = tmp_path / "missing-cert.pem"
    result = run_corral(["--check-config", "--certfile", str(missing), "tests.apps.master_apps:app"], REPO_ROOT)
    assert str(missing) in assert_one_error_line(result, "certfile: ")
