"""configure_logging: logconfig_dict, logconfig_json and logconfig route corral's loggers, and every problem with
them is one line naming the setting. Each case runs in a fresh interpreter: logging's configuration is global."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loads the config from argv like the command line does, sets up logging, then logs one line on each logger.
SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from corral.config import load_config
    from corral.logging import LogConfigError, configure_logging
    logging.getLogger("corral.error")  # exists before the config is applied, as in the server
    cfg = load_config(sys.argv[1:], environ={})
    try:
        logger = configure_logging(cfg)
    except LogConfigError as error:
        print(f"corral: error: {error}", file=sys.stderr)
        sys.exit(2)
    logger.info("error-log line")
    logger.debug("debug line")
    logging.getLogger("corral.access").info("access line")
    logging.getLogger("app").warning("app line")
    """
)


def configure(tmp_path: Path, *args: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["main:app", *args]
    if config is not None:
        (tmp_path / "corral.conf.py").write_text(textwrap.dedent(config))
        argv += ["-c", "corral.conf.py"]
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def file_handler_config(path: Path, *loggers: str, level: str | None = None) -> dict:
    logger_config: dict = {"handlers": ["file"]}
    if level is not None:
        logger_config["level"] = level
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}},
        "loggers": {name: logger_config for name in loggers},
    }


def test_logconfig_dict_routes_the_error_and_access_loggers_to_a_file(tmp_path: Path):
    log = tmp_path / "all.log"
    config = file_handler_config(log, "corral.error", "corral.access")
    result = configure(tmp_path, config=f"logconfig_dict = {config!r}\n")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["corral.error INFO error-log line", "corral.access INFO access line"]
    assert "error-log line" not in result.stderr


def test_logconfig_dict_without_a_level_keeps_loglevel_for_the_error_logger(tmp_path: Path):
    log = tmp_path / "all.log"
    config = file_handler_config(log, "corral.error")
    result = configure(tmp_path, "--log-level", "debug", config=f"logconfig_dict = {config!r}\n")
    assert result.returncode == 0, result.stderr
    assert "corral.error DEBUG debug line" in log.read_text().splitlines()


def test_logconfig_dict_that_leaves_corral_error_alone_keeps_it_on_errorlog(tmp_path: Path):
    log = tmp_path / "app.log"
    config = file_handler_config(log, "app") | {"disable_existing_loggers": True}
    result = configure(tmp_path, "--log-format", "json", config=f"logconfig_dict = {config!r}\n")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["app WARNING app line"]
    # disable_existing_loggers did not silence corral's own logger, which still follows errorlog and log_format.
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["message"] == "error-log line"


def test_gunicorn_logger_names_in_a_logging_config_also_route_corrals_lines(tmp_path: Path):
    log = tmp_path / "gunicorn.log"
    config = file_handler_config(log, "gunicorn.error", "gunicorn.access", level="INFO")
    result = configure(tmp_path, config=f"logconfig_dict = {config!r}\n")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["corral.error INFO error-log line", "corral.access INFO access line"]


def test_corral_logger_named_in_the_config_wins_over_its_gunicorn_name(tmp_path: Path):
    ours, theirs = tmp_path / "corral.log", tmp_path / "gunicorn.log"
    config = file_handler_config(theirs, "gunicorn.error")
    config["handlers"]["ours"] = {"class": "logging.FileHandler", "filename": str(ours), "formatter": "plain"}
    config["loggers"]["corral.error"] = {"handlers": ["ours"]}
    result = configure(tmp_path, config=f"logconfig_dict = {config!r}\n")
    assert result.returncode == 0, result.stderr
    assert ours.read_text().splitlines() == ["corral.error INFO error-log line"]
    assert theirs.read_text() == ""


def test_uvicorn_logging_config_given_to_log_config_routes_corrals_lines(tmp_path: Path):
    log = tmp_path / "uvicorn.log"
    # uvicorn's shape: the error handlers sit on "uvicorn", its child "uvicorn.error" only has a level.
    config = file_handler_config(log, "uvicorn", "uvicorn.access", level="INFO")
    config["loggers"]["uvicorn.error"] = {"level": "INFO"}
    (tmp_path / "log-config.json").write_text(json.dumps(config))
    result = configure(tmp_path, "--log-config", "log-config.json")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["corral.error INFO error-log line", "corral.access INFO access line"]


def test_logconfig_json_routes_a_logger_to_a_file(tmp_path: Path):
    log = tmp_path / "json-config.log"
    (tmp_path / "logging.json").write_text(json.dumps(file_handler_config(log, "corral.error")))
    result = configure(tmp_path, "--log-config-json", "logging.json")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["corral.error INFO error-log line"]


def test_logconfig_file_routes_a_logger_to_a_file(tmp_path: Path):
    log = tmp_path / "ini.log"
    (tmp_path / "logging.ini").write_text(
        textwrap.dedent(
            f"""
            [loggers]
            keys = root, error

            [handlers]
            keys = file

            [formatters]
            keys = plain

            [logger_root]
            handlers =

            [logger_error]
            qualname = corral.error
            handlers = file
            propagate = 0

            [handler_file]
            class = FileHandler
            args = ({str(log)!r}, "a")
            formatter = plain

            [formatter_plain]
            format = ini %(name)s %(message)s
            """
        )
    )
    result = configure(tmp_path, "--log-config", "logging.ini")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["ini corral.error error-log line"]


def test_logconfig_dict_takes_precedence_over_logconfig_json_and_logconfig(tmp_path: Path):
    log = tmp_path / "dict.log"
    config = file_handler_config(log, "corral.error")
    others = ("--log-config-json", "missing.json", "--log-config", "missing.ini")
    result = configure(tmp_path, *others, config=f"logconfig_dict = {config!r}\n")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["corral.error INFO error-log line"]


@pytest.mark.parametrize(
    ("args", "config", "expected"),
    [
        (
            (),
            "logconfig_dict = {'handlers': {'h': {'class': 'no.such.Handler'}}, 'root': {'handlers': ['h']}}\n",
            "corral: error: logconfig_dict: Unable to configure handler 'h': ",
        ),
        (
            (),
            "logconfig_dict = {'handlers': {'h': {'class': 'logging.FileHandler', 'filename': '/no/dir/x.log'}}}\n",
            "corral: error: logconfig_dict: Unable to configure handler 'h': [Errno 2] No such file or directory",
        ),
        (("--log-config-json", "missing.json"), None, "corral: error: logconfig_json: cannot read missing.json: "),
        (("--log-config-json", "broken.json"), None, "corral: error: logconfig_json: broken.json is not valid JSON: "),
        (("--log-config-json", "list.json"), None, "corral: error: logconfig_json: list.json must hold a JSON object"),
        (("--log-config", "missing.ini"), None, "corral: error: logconfig: missing.ini: no such file"),
        (("--log-config", "broken.ini"), None, "corral: error: logconfig: broken.ini: "),
        (("--error-logfile", "/no/such/dir/error.log"), None, "corral: error: errorlog: cannot open /no/such/dir/"),
        (("--access-logformat", "%(h)s 100%"), None, "corral: error: access_log_format: a lone '%'"),
    ],
)
def test_logging_setting_that_cannot_be_applied_is_one_line_naming_it(tmp_path: Path, args, config, expected):
    (tmp_path / "broken.json").write_text('{"version": 1,')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.ini").write_text("[loggers]\nkeys = root\n")
    line = one_line_error(configure(tmp_path, *args, config=config))
    assert line.startswith(expected), line


def test_access_log_format_is_not_checked_for_json_lines(tmp_path: Path):
    result = configure(tmp_path, "--log-format", "json", "--access-logformat", "%(h)s 100%")
    assert result.returncode == 0, result.stderr
