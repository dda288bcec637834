"""The typed settings (corral/core/settings.py): generated from the table, one frozen class per section, no
defaults of their own, built once by the loader; and the ServerState built from them."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from corral.config import SETTING_SECTIONS, SETTINGS, SETTINGS_BY_NAME, ConfigError, default_settings, load_config
from corral.core import settings as settings_module
from corral.core.settings import Settings
from corral.docs import render_settings_module
from tests.unit.fakes import server_state


def test_the_committed_module_is_what_the_table_generates() -> None:
    committed = Path(settings_module.__file__).read_text(encoding="utf-8")
    assert committed == render_settings_module(), "run `python -m corral.docs` and commit src/corral/core/settings.py"


def test_every_setting_is_a_field_of_its_sections_class_with_the_tables_type_and_no_default() -> None:
    classes = {section.class_name: vars(settings_module)[section.class_name] for section in SETTING_SECTIONS}
    fields_by_class = {name: {field.name: field for field in dataclasses.fields(cls)} for name, cls in classes.items()}
    class_of = {section.title: section.class_name for section in SETTING_SECTIONS}
    for setting in SETTINGS:
        field = fields_by_class[class_of[setting.section]].pop(setting.name)
        assert field.type == setting.annotation, setting.name
        assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, setting.name
    assert all(not left for left in fields_by_class.values()), f"fields that are no setting: {fields_by_class}"


def test_settings_holds_one_field_per_section_in_table_order() -> None:
    fields = dataclasses.fields(Settings)
    assert [(f.name, f.type) for f in fields] == [(s.attribute, s.class_name) for s in SETTING_SECTIONS]


def test_settings_and_their_sections_are_frozen_and_hold_no_mutable_containers() -> None:
    settings = default_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker.keepalive = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker = settings.worker  # type: ignore[misc]
    assert settings.socket.bind == ("127.0.0.1:8000",)
    with pytest.raises(TypeError):
        settings.proxy.secure_scheme_headers["X-FORWARDED-PROTO"] = "http"  # type: ignore[index]


def test_default_settings_are_the_tables_defaults_with_overrides_validated_like_any_source() -> None:
    settings = default_settings(keepalive="1", max_worker_memory="1M")
    assert settings.worker.keepalive == 1.0 and settings.worker.max_worker_memory == 1024 * 1024
    assert settings.security.body_timeout == 60.0  # the table's default, whatever a constructor once said
    with pytest.raises(ConfigError, match="backlog"):
        default_settings(backlog=0)


def test_loaded_config_gives_typed_sections_and_gunicorns_flat_reads_of_the_same_values() -> None:
    cfg = load_config(["main:app", "-w", "3", "--keep-alive", "2"], environ={}, cwd="/nonexistent-corral-test-dir")
    assert cfg.settings.worker.workers == 3 and cfg.settings.worker.keepalive == 2.0
    attribute_of = {section.title: section.attribute for section in SETTING_SECTIONS}
    for setting in SETTINGS:
        typed = getattr(getattr(cfg.settings, attribute_of[setting.section]), setting.name)
        flat = getattr(cfg, setting.name)  # the validator's own value: a list stays a list for Gunicorn's hooks
        assert (list(typed) if isinstance(flat, list) else typed) == flat, setting.name


def test_replace_rebuilds_the_typed_settings() -> None:
    cfg = load_config(["main:app"], environ={}, cwd="/nonexistent-corral-test-dir")
    changed = cfg.replace(body_timeout="5")
    assert changed.settings.security.body_timeout == 5.0 and cfg.settings.security.body_timeout == 60.0


def test_server_state_takes_its_limits_and_timeouts_from_the_settings() -> None:
    async def main() -> None:
        state = server_state(lambda: None, keepalive=2, body_timeout=7, limit_request_line=0, ws_max_queue=3)
        assert state.keepalive == 2.0 and state.body_timeout == 7.0 and state.header_timeout == 10.0
        assert state.limit_request_line == 8190  # Gunicorn's meaning of 0, applied by the table's validator
        assert state.ws_settings.ws_max_queue == 3
        assert state.proxy_trust is not None  # proxy_headers is on by default, from forwarded_allow_ips

    asyncio.run(main())


def test_a_settings_type_is_its_validators_return_annotation_unless_the_table_gives_one() -> None:
    keepalive = SETTINGS_BY_NAME["keepalive"]
    assert keepalive.annotation == "float"
    assert dataclasses.replace(keepalive, type="int | float").annotation == "int | float"
    unannotated = dataclasses.replace(keepalive, validator=lambda raw: raw)
    with pytest.raises(TypeError, match="keepalive"):
        unannotated.annotation  # noqa: B018
