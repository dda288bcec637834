"""Three corral instances behind a real nginx (deploy/nginx/nginx.conf) with upstream keep-alive, under a
steady POST load: a deploy must lose no POST. nginx never retries a POST it has sent, so every POST that
meets a connection corral closed under it comes back 502.

The fleet, the rendering of the deploy example and the load are bench/fleet.py's, which also measures
gunicorn + UvicornWorker the same way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.fleet import NGINX_TEMPLATE, Fleet, PostLoad, free_port, nginx_binary, render_nginx

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (Debian package nginx: scripts/install-system-packages)"
)

LOAD = {"threads": 4, "max_requests": 40_000, "max_seconds": 90.0}


def _report(fleet: Fleet, load: PostLoad) -> str:
    return f"outcomes {dict(load.outcomes)}; nginx errors:\n{fleet.nginx.errors()[-3000:]}"


def test_the_nginx_deploy_example_is_a_valid_nginx_config(tmp_path: Path) -> None:
    config = tmp_path / "nginx.conf"
    rendered = render_nginx(
        NGINX_TEMPLATE.read_text(), listen_port=free_port(), upstream_ports=[free_port()] * 3, workdir=tmp_path
    )
    config.write_text(rendered)
    assert "keepalive 32;" in rendered and "proxy_http_version 1.1;" in rendered
    assert 'proxy_set_header Connection "";' in rendered
    checked = subprocess.run(
        [nginx_binary(), "-t", "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_a_hup_of_every_instance_behind_nginx_loses_no_post(tmp_path: Path) -> None:
    with Fleet("corral", tmp_path) as fleet, PostLoad(fleet.nginx.port, **LOAD) as load:
        assert load.wait_for_more(300), _report(fleet, load)
        assert fleet.hup_all(), "every instance replaces its worker"
        assert load.wait_for_more(300), _report(fleet, load)
        load.stop()
        assert load.outcomes["200"] >= 600
        assert load.failed == 0, _report(fleet, load)


def test_a_rolling_restart_behind_nginx_loses_no_post(tmp_path: Path) -> None:
    with Fleet("corral", tmp_path) as fleet, PostLoad(fleet.nginx.port, **LOAD) as load:
        assert load.wait_for_more(300), _report(fleet, load)
        fleet.rolling_restart(load)
        assert load.wait_for_more(300), _report(fleet, load)
        load.stop()
        assert load.outcomes["200"] >= 600
        assert load.failed == 0, _report(fleet, load)
