"""Metric building, pure: wire fixtures -> model -> families. One golden exposition file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from exporter.metrics import PortalData, error_family, exporter_families, portal_families
from exporter.model import (
    decode_envelope,
    parse_history,
    parse_schedule,
    parse_settings,
    parse_tariff,
    parse_task,
)

WIRE = Path(__file__).parent / "fixtures" / "wire"
GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"
NOW = 1736700000.0  # 2025-01-12T16:40:00Z, 14 h 32 min 28 s after E1's lastBackupTime


def wire(name: str) -> tuple[bool, Any]:
    return decode_envelope((WIRE / name).read_bytes())


class _Static(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


def registry_of(portals: list[PortalData], errors: dict[tuple[str, str, str], int] | None = None,
                ) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    fams = portal_families(portals, NOW) + [error_family(errors or {})]
    reg.register(_Static(fams))
    return reg


def portal(name: str, *, schedule: str | None = "E01_schedule_weekly.json",
           backup: str | None = "E05_backup_completed.json",
           restore: str | None = "E03_nothing.json", history: str | None = None,
           failed: dict[str, str] | None = None, settings: str | None = None,
           tariff: str | None = None, zone: str | None = None) -> PortalData:
    data = PortalData(name=name, url=f"https://{name}.example.com", duration=0.25, zone=zone)
    if settings:
        data.answer("settings", parse_settings(*wire(settings)))
    if tariff:
        data.answer("tariff", parse_tariff(*wire(tariff)))
    if schedule:
        data.answer("schedule", parse_schedule(*wire(schedule)))
    if backup:
        data.answer("backup_progress", parse_task(*wire(backup)))
    if restore:
        data.answer("restore_progress", parse_task(*wire(restore)))
    if history:
        data.answer("history", parse_history(*wire(history)))
    for endpoint, reason in (failed or {}).items():
        data.fail(endpoint, reason)
    return data


def test_healthy_portal_values() -> None:
    reg = registry_of([portal("main", history="E09_history.json")])
    v = reg.get_sample_value
    assert v("docspace_up", {"portal": "main"}) == 1
    assert v("docspace_portal_info", {"portal": "main", "url": "https://main.example.com"}) == 1
    assert v("docspace_backup_schedule_configured", {"portal": "main"}) == 1
    assert v("docspace_backup_schedule_info", {
        "portal": "main", "period": "weekly", "hour": "2", "day": "1",
        "storage_type": "documents", "dump": "false"}) == 1
    assert v("docspace_backup_schedule_expected_interval_seconds", {"portal": "main"}) == 604800
    assert v("docspace_backup_schedule_backups_stored", {"portal": "main"}) == 5
    assert v("docspace_backup_schedule_last_backup_timestamp_seconds",
             {"portal": "main"}) == 1736647652
    assert v("docspace_backup_schedule_last_backup_age_seconds",
             {"portal": "main"}) == NOW - 1736647652
    assert v("docspace_backup_progress_ratio", {"portal": "main"}) == 1.0
    assert v("docspace_backup_completed", {"portal": "main"}) == 1
    assert v("docspace_backup_failed", {"portal": "main"}) == 0
    assert v("docspace_backup_status", {"portal": "main", "status": "completed"}) == 1
    assert v("docspace_backup_status", {"portal": "main", "status": "failed"}) == 0
    assert v("docspace_backup_history_backups", {"portal": "main"}) == 2
    assert v("docspace_backup_last_success_timestamp_seconds", {"portal": "main"}) == 1736765050


def test_no_restore_task_all_status_zero_and_no_ratio() -> None:
    reg = registry_of([portal("main")])
    for state in ("created", "running", "completed", "canceled", "failed"):
        assert reg.get_sample_value("docspace_restore_status",
                                    {"portal": "main", "status": state}) == 0
    assert reg.get_sample_value("docspace_restore_progress_ratio", {"portal": "main"}) is None
    assert reg.get_sample_value("docspace_restore_completed", {"portal": "main"}) is None
    assert reg.get_sample_value("docspace_restore_failed", {"portal": "main"}) is None


def test_failed_backup_reported_as_completed_is_failed() -> None:
    reg = registry_of([portal("p", backup="E07_backup_failed.json")])
    assert reg.get_sample_value("docspace_backup_failed", {"portal": "p"}) == 1
    assert reg.get_sample_value("docspace_backup_completed", {"portal": "p"}) == 1
    assert reg.get_sample_value("docspace_backup_status", {"portal": "p", "status": "failed"}) == 1
    assert reg.get_sample_value("docspace_backup_status",
                                {"portal": "p", "status": "completed"}) == 0
    assert reg.get_sample_value("docspace_backup_progress_ratio", {"portal": "p"}) == 0.27


def test_never_ran_schedule_has_no_timestamp_or_age() -> None:
    reg = registry_of([portal("new", schedule="E02_schedule_never_ran.json")])
    assert reg.get_sample_value("docspace_backup_schedule_configured", {"portal": "new"}) == 1
    assert reg.get_sample_value("docspace_backup_schedule_last_backup_timestamp_seconds",
                                {"portal": "new"}) is None
    assert reg.get_sample_value("docspace_backup_schedule_last_backup_age_seconds",
                                {"portal": "new"}) is None


def test_no_schedule_is_zero_not_absent() -> None:
    reg = registry_of([portal("none", schedule="E03_nothing.json")])
    assert reg.get_sample_value("docspace_backup_schedule_configured", {"portal": "none"}) == 0
    assert reg.get_sample_value("docspace_backup_schedule_expected_interval_seconds",
                                {"portal": "none"}) is None


def test_failed_endpoint_series_are_left_out_not_stale() -> None:
    p = portal("locked", schedule=None, backup=None, restore="E08_restore_running.json",
               failed={"schedule": "forbidden", "backup_progress": "forbidden"})
    reg = registry_of([p], {("locked", "schedule", "forbidden"): 3})
    v = reg.get_sample_value
    assert v("docspace_up", {"portal": "locked"}) == 0
    assert v("docspace_scrape_duration_seconds", {"portal": "locked"}) == 0.25
    assert v("docspace_backup_schedule_configured", {"portal": "locked"}) is None
    assert v("docspace_backup_status", {"portal": "locked", "status": "completed"}) is None
    assert v("docspace_restore_status", {"portal": "locked", "status": "running"}) == 1
    assert v("docspace_endpoint_up", {"portal": "locked", "endpoint": "schedule"}) == 0
    assert v("docspace_endpoint_up", {"portal": "locked", "endpoint": "restore_progress"}) == 1
    assert v("docspace_scrape_errors_total", {"portal": "locked", "endpoint": "schedule",
                                              "reason": "forbidden"}) == 3


def test_exporter_families() -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Static(exporter_families("1.2.3", False, 1700000000.0, 4)))
    import platform

    assert reg.get_sample_value("docspace_exporter_build_info", {
        "version": "1.2.3", "python_version": platform.python_version()}) == 1
    assert reg.get_sample_value("docspace_exporter_config_last_reload_successful") == 0
    assert reg.get_sample_value(
        "docspace_exporter_config_last_reload_success_timestamp_seconds") == 1700000000.0


def golden_registry() -> CollectorRegistry:
    portals = [
        portal("main", history="E09_history.json", settings="E16_settings.json",
               tariff="E17_tariff_paid.json", zone="Europe/Berlin"),
        portal("fresh", schedule="E02_schedule_never_ran.json", backup="E04_backup_running.json",
               tariff="E18_tariff_delay.json", zone="Australia/Sydney"),
        portal("broken", backup="E07_backup_failed.json", restore=None,
               failed={"restore_progress": "timeout", "settings": "timeout"}),
        portal("locked", schedule=None, backup=None, restore="E08_restore_running.json",
               failed={"schedule": "forbidden", "backup_progress": "forbidden"}),
        portal("none", schedule="E03_nothing.json", backup="E03_nothing.json",
               history="E03_nothing.json"),
    ]
    errors = {("broken", "restore_progress", "timeout"): 1,
              ("broken", "settings", "timeout"): 1,
              ("locked", "schedule", "forbidden"): 2,
              ("locked", "backup_progress", "forbidden"): 2}
    return registry_of(portals, errors)


def test_golden_exposition() -> None:
    """The whole exposition for five portals in different states, pinned byte for byte.
    Regenerate with UPDATE_GOLDEN=1 after an intended change, and read the diff."""
    text = generate_latest(golden_registry()).decode()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_series_has_a_portal_label() -> None:
    for metric in golden_registry().collect():
        for sample in metric.samples:
            assert "portal" in sample.labels, sample


def test_settings_tariff_and_next_due() -> None:
    reg = registry_of([portal("main", settings="E16_settings.json",
                              tariff="E17_tariff_paid.json", zone="Europe/Berlin")])
    v = reg.get_sample_value
    assert v("docspace_portal_settings_info", {"portal": "main", "timezone": "Europe/Berlin",
                                               "version": "3.7.2.1877"}) == 1
    assert v("docspace_portal_tariff_state", {"portal": "main", "state": "paid"}) == 1
    for state in ("trial", "delay", "not_paid"):
        assert v("docspace_portal_tariff_state", {"portal": "main", "state": state}) == 0
    assert v("docspace_portal_tariff_due_timestamp_seconds", {"portal": "main"}) == 1738368000
    # E1: weekly, day 1 = Sunday, 02:00 portal time; last run 2025-01-12T02:07:32 UTC (a
    # Sunday). Next: Sunday 2025-01-19 02:00 in Berlin (CET) = 01:00 UTC.
    assert v("docspace_backup_schedule_next_due_timestamp_seconds",
             {"portal": "main"}) == 1737248400


def test_next_due_needs_a_known_zone() -> None:
    for zone in (None, "Not/AZone"):
        reg = registry_of([portal("main", zone=zone)])
        assert reg.get_sample_value("docspace_backup_schedule_next_due_timestamp_seconds",
                                    {"portal": "main"}) is None


def test_never_ran_next_due_follows_the_utc_date() -> None:
    # E2: daily 03:00, never ran. NOW is 2025-01-12 16:40 UTC: the reference is 2025-01-11
    # 23:59:59 read as Sydney wall time, so the due time is 2025-01-12 03:00 Sydney (AEDT,
    # +11) = 2025-01-11 16:00 UTC: in the past, the scheduler's next pass starts it.
    reg = registry_of([portal("fresh", schedule="E02_schedule_never_ran.json",
                              zone="Australia/Sydney")])
    assert reg.get_sample_value("docspace_backup_schedule_next_due_timestamp_seconds",
                                {"portal": "fresh"}) == 1736611200


def test_failed_settings_or_tariff_never_make_up_zero() -> None:
    p = portal("main", failed={"settings": "timeout", "tariff": "forbidden"}, zone="UTC")
    reg = registry_of([p])
    v = reg.get_sample_value
    assert v("docspace_up", {"portal": "main"}) == 1
    assert v("docspace_portal_tariff_state", {"portal": "main", "state": "paid"}) is None
    assert v("docspace_backup_schedule_next_due_timestamp_seconds", {"portal": "main"}) \
        is not None
    p = portal("main", failed={"settings": "timeout", "schedule": "timeout"}, schedule=None)
    assert registry_of([p]).get_sample_value("docspace_up", {"portal": "main"}) == 0


def test_delay_tariff_and_unknown_state() -> None:
    reg = registry_of([portal("late", tariff="E18_tariff_delay.json")])
    assert reg.get_sample_value("docspace_portal_tariff_state",
                                {"portal": "late", "state": "delay"}) == 1
    p = portal("odd")
    p.answer("tariff", parse_tariff(True, {"state": 7}))
    reg = registry_of([p])
    for state in ("trial", "paid", "delay", "not_paid"):
        assert reg.get_sample_value("docspace_portal_tariff_state",
                                    {"portal": "odd", "state": state}) == 0
