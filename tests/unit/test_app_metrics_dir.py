"""Which multiprocess directory the master prepares for the app's prometheus-client metrics: its own (made,
exported, removed at exit), the user's (used as it is), none (off, or no admin endpoint), and a fresh one for
the new master of a binary upgrade, which inherits its predecessor's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.admin import app_metrics
from corral.admin.app_metrics import ENV, AppMetricsError, prepare_app_metrics
from corral.config import default_settings
from corral.core.privileges import Identity
from corral.core.settings import MetricsSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (ENV, "prometheus_multiproc_dir", "CORRAL_APP_METRICS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(app_metrics.tempfile, "tempdir", None)  # re-read TMPDIR
    # This test process imports prometheus-client for other tests: keep its in-process values.
    monkeypatch.setattr(app_metrics, "_refresh_value_class", lambda: None)


def cfg(**values: object) -> MetricsSettings:
    return default_settings(**{"app_metrics": True, "admin_bind": "127.0.0.1:9000", **values}).metrics


def test_corral_makes_exports_and_at_exit_removes_a_private_directory(tmp_path: Path) -> None:
    made = prepare_app_metrics(cfg(), None)
    assert made is not None and made.owned
    assert os.environ[ENV] == made.path and Path(made.path).parent == tmp_path
    assert os.stat(made.path).st_mode & 0o777 == 0o700
    made.close()
    assert not os.path.exists(made.path) and ENV not in os.environ


def test_a_directory_the_user_set_is_used_and_never_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv(ENV, str(mine))
    used = prepare_app_metrics(cfg(), None)
    assert used is not None and used.path == str(mine) and not used.owned
    used.close()
    assert mine.is_dir() and os.environ[ENV] == str(mine)


def test_a_user_directory_that_is_missing_is_a_config_error_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, str(tmp_path / "missing"))
    with pytest.raises(AppMetricsError, match=r"^app_metrics: PROMETHEUS_MULTIPROC_DIR="):
        prepare_app_metrics(cfg(), None)


@pytest.mark.parametrize("settings", [{"app_metrics": False}, {"admin_bind": None}], ids=["off", "no-admin"])
def test_nothing_is_prepared_when_off_or_without_the_admin_endpoint(settings: dict[str, object]) -> None:
    assert prepare_app_metrics(cfg(**settings), None) is None
    assert ENV not in os.environ


def test_the_new_master_of_a_binary_upgrade_makes_its_own_directory() -> None:
    old = prepare_app_metrics(cfg(), None)  # the old master's, inherited through the environment by exec
    assert old is not None
    new = prepare_app_metrics(cfg(), None)
    assert new is not None and new.owned and new.path != old.path and os.environ[ENV] == new.path
    new.close()
    old.close()


def test_a_forked_child_never_removes_the_directory() -> None:
    made = prepare_app_metrics(cfg(), None)
    assert made is not None
    made.owner_pid = os.getpid() + 1  # as seen from a worker that returned through the master's code
    made.close()
    assert os.path.isdir(made.path)
    made.owner_pid = os.getpid()
    made.close()


def test_a_directory_that_cannot_be_made_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(prefix: str) -> str:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(app_metrics.tempfile, "mkdtemp", refuse)
    with pytest.raises(AppMetricsError, match=r"^app_metrics: cannot make a directory .*--no-app-metrics"):
        prepare_app_metrics(cfg(), None)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_the_directory_belongs_to_the_workers_user_when_they_drop_privileges() -> None:
    made = prepare_app_metrics(cfg(), Identity(65534, 65534, "nobody", False))
    assert made is not None
    info = os.stat(made.path)
    assert (info.st_uid, info.st_gid) == (65534, 65534)
    made.close()
    assert not os.path.exists(made.path)
