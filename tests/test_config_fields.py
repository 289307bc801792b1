"""The config's field tables (exporter/config.py): every setting has one row, the rows
agree with the dataclasses they fill, and the one loop converts and reports each key."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from exporter.config import (
    DEFAULTABLE_KEYS,
    PORTAL_FIELDS,
    PORTAL_KEYS,
    REQUIRED,
    TOP_FIELDS,
    TOP_KEYS,
    Config,
    ConfigError,
    PortalConfig,
    parse_config,
)


def test_every_portal_setting_has_exactly_one_row() -> None:
    """A PortalConfig field without a row (or a row without a field) fails here, so a new
    key cannot be added in one place only."""
    converted = [f.key for f in PORTAL_FIELDS if f.convert is not None]
    assert len(converted) == len(set(converted))
    assert set(converted) == {f.name for f in dataclasses.fields(PortalConfig)} - {"auth"}
    top = [f.key for f in TOP_FIELDS]
    assert set(top) == {f.name for f in dataclasses.fields(Config)} - {"portals", "source"}
    assert TOP_KEYS == {"defaults", "portals", *top}


def test_defaults_in_the_table_are_the_dataclass_defaults() -> None:
    for row in PORTAL_FIELDS:
        if row.convert is None or row.default is REQUIRED:
            continue
        assert PortalConfig.__dataclass_fields__[row.key].default == row.default, row.key
    for row in TOP_FIELDS:
        assert Config.__dataclass_fields__[row.key].default == row.default, row.key


def test_secret_rows_accept_a_file_and_only_name_and_url_are_per_portal() -> None:
    secrets = {f.key for f in PORTAL_FIELDS if f.secret}
    assert secrets == {"api_key", "token", "password"}
    assert {k + "_file" for k in secrets} <= PORTAL_KEYS
    assert PORTAL_KEYS - DEFAULTABLE_KEYS == {"name", "url"}


def portal(**extra: Any) -> dict[str, Any]:
    return {"name": "a", "url": "https://a.example", "api_key": "sk-x", **extra}


@pytest.mark.parametrize(("key", "value", "want"), [
    ("timeout", "500ms", 0.5), ("dump", "TRUE", True), ("history", False, False),
    ("insecure_skip_verify", "true", True), ("max_response_bytes", "2048", 2048),
    ("timezone", "Europe/Berlin", "Europe/Berlin"),
])
def test_the_loop_converts_each_key(key: str, value: Any, want: Any) -> None:
    cfg = parse_config({"portals": [portal(**{key: value})]})
    assert getattr(cfg.portals[0], key) == want
    via_defaults = parse_config({"defaults": {key: value}, "portals": [portal()]})
    assert getattr(via_defaults.portals[0], key) == want


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("timeout", "soon", "portals[0].timeout: must be a duration"),
    ("dump", "maybe", "portals[0].dump: must be true or false"),
    ("max_response_bytes", 0, "portals[0].max_response_bytes: must be a whole number"),
    # str.isdigit() is true for these; int() crashed on the first and took the second as 3
    ("max_response_bytes", "²", "portals[0].max_response_bytes: must be a whole number"),
    ("max_response_bytes", "٣", "portals[0].max_response_bytes: must be a whole number"),
    ("timezone", "Mars/Base", "portals[0].timezone: 'Mars/Base' is not an IANA time zone"),
    ("ca_file", "/nonexistent/ca.pem", "portals[0].ca_file: cannot read /nonexistent/ca.pem"),
])
def test_the_loop_reports_each_key_with_its_path(key: str, value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"portals": [portal(**{key: value})], "max_concurrency": 0})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    # ... and the top-level table's problem in the same error.
    assert "max_concurrency: must be a whole number of at least 1" in info.value.problems


def test_required_rows_are_reported_per_portal() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"portals": [{"api_key": "sk-x"}]})
    assert info.value.problems == ["portals[0].name: is required", "portals[0].url: is required"]
