"""The simulator's settings, tariff and the corrections of docspace-api.md sections 14-16."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from docspace_simulator import DEMO_PORTALS, DEMO_ZONES, Simulator, add_demo_portals
from tests.test_simulator import T0, api, bearer, call, login, ok_json

NEW = ("overdue", "tariff_delay", "backup_warning", "backup_canceled", "backup_created",
       "backup_failed_expired", "schedule_deleted", "ip_restricted", "restore_scope",
       "rate_limited_bare", "restore_running", "unpaid", "healthy", "auth_failure")


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    s = Simulator(clock=lambda: T0)
    for scenario in NEW:
        s.add_portal(scenario, scenario, timezone="Australia/Sydney")
    s.add_portal("login", "restore_running", username="a@example.com", password="pw")
    s.add_portal("berlin", timezone="Europe/Berlin")
    with s:
        yield s


def get(sim: Simulator, portal: str, path: str, *, auth: bool = True) -> tuple[int, Any, bytes]:
    return call(sim, "GET", f"/{portal}/api/2.0/{path}", bearer(sim, portal) if auth else {})


def test_settings_timezone_only_when_authenticated(sim: Simulator) -> None:
    doc = ok_json(get(sim, "berlin", "settings"))
    r = doc["response"]
    assert r["timezone"] == "Europe/Berlin"
    assert r["version"] and r["tenantStatus"] == 0
    # T0 is in January: Berlin is at +01:00.
    assert (r["utcOffset"], r["utcHoursOffset"]) == ("01:00:00", 1)
    anon = ok_json(get(sim, "berlin", "settings", auth=False))["response"]
    assert "timezone" not in anon and anon["version"] == r["version"]
    assert "timezone" not in ok_json(get(sim, "auth_failure", "settings"))["response"]


def test_settings_answer_during_a_restore_but_not_login_nor_tariff(sim: Simulator) -> None:
    assert ok_json(get(sim, "restore_running", "settings"))["response"]["tenantStatus"] == 4
    assert get(sim, "restore_running", "portal/tariff")[0] == 403
    assert login(sim, "login", "a@example.com", "pw")[0] == 403


def test_tariff_states(sim: Simulator) -> None:
    paid = ok_json(get(sim, "healthy", "portal/tariff"))["response"]
    assert paid["state"] == 1
    assert datetime.fromisoformat(paid["dueDate"]).replace(tzinfo=timezone.utc).timestamp() \
        == T0 + 30 * 86400
    assert ok_json(get(sim, "tariff_delay", "portal/tariff"))["response"]["state"] == 2
    # NotPaid: the tariff and settings still answer ([AllowNotPayment]), the schedule is 402.
    assert ok_json(get(sim, "unpaid", "portal/tariff"))["response"]["state"] == 3
    assert api(sim, "unpaid", "getbackupschedule")[0] == 402
    # Delay: the backup API answers normally.
    assert ok_json(api(sim, "tariff_delay", "getbackupschedule"))["response"]
    assert get(sim, "healthy", "portal/tariff", auth=False)[0] == 401


def test_overdue_schedule_slot_passed_without_a_run(sim: Simulator) -> None:
    sched = ok_json(api(sim, "overdue", "getbackupschedule"))["response"]
    assert sched["cronParams"]["period"] == 0
    hour = sched["cronParams"]["hour"]
    last = datetime.fromisoformat(sched["lastBackupTime"]).replace(tzinfo=timezone.utc)
    sydney = ZoneInfo("Australia/Sydney")
    # The last run was 5 minutes after the previous day's slot; today's slot, at the same
    # local hour, lies 2 to 3 hours before T0 and has not run.
    local_last = last.astimezone(sydney)
    assert (local_last.hour, local_last.minute) == (hour, 5)
    slot = local_last.replace(minute=0).timestamp() + 86400
    assert T0 - 3 * 3600 <= slot <= T0 - 2 * 3600


def test_task_variants(sim: Simulator) -> None:
    warn = ok_json(api(sim, "backup_warning", "getbackupprogress"))["response"]
    assert warn["status"] == 2 and warn["warning"].startswith("Some files were not included")
    assert list(warn)[:4] == ["isCompleted", "progress", "error", "warning"]
    canceled = ok_json(api(sim, "backup_canceled", "getbackupprogress"))["response"]
    assert (canceled["status"], canceled["isCompleted"], canceled["warning"]) == (
        3, True, "Backup cancelled")
    created = ok_json(api(sim, "backup_created", "getbackupprogress"))["response"]
    assert (created["status"], created["isCompleted"], created["progress"]) == (0, False, 0)
    assert "warning" not in ok_json(api(sim, "healthy", "getbackupprogress"))["response"]


def test_failed_task_gone_after_a_day_and_no_copy_since(sim: Simulator) -> None:
    assert ok_json(api(sim, "backup_failed_expired", "getbackupprogress"))["count"] == 0
    sched = ok_json(api(sim, "backup_failed_expired", "getbackupschedule"))["response"]
    history = ok_json(api(sim, "backup_failed_expired", "getbackuphistory"))["response"]
    newest = max(rec["createdOn"] for rec in history)
    assert newest < sched["lastBackupTime"]  # the last scheduled run left no copy


def test_task_leaves_the_queue_24_hours_after_it_finished() -> None:
    now = [T0]
    with Simulator(clock=lambda: now[0]) as s:
        s.add_portal("p", "backup_failed", task_finished_at=T0 - 3600)
        assert ok_json(api(s, "p", "getbackupprogress"))["response"]["error"]
        now[0] = T0 - 3600 + 86400 - 1
        assert ok_json(api(s, "p", "getbackupprogress"))["count"] == 1
        now[0] = T0 - 3600 + 86400
        assert ok_json(api(s, "p", "getbackupprogress"))["count"] == 0


def test_schedule_deleted_by_the_server(sim: Simulator) -> None:
    assert ok_json(api(sim, "schedule_deleted", "getbackupschedule"))["count"] == 0
    assert ok_json(api(sim, "schedule_deleted", "getbackuphistory"))["count"] > 0


def test_ip_restriction_is_plain_text_everywhere(sim: Simulator) -> None:
    for path in ("backup/getbackupschedule", "settings", "portal/tariff"):
        status, headers, body = get(sim, "ip_restricted", path)
        assert (status, body) == (403, b"The access to the portal is restricted")
        assert headers["Content-Type"].startswith("text/plain")
    assert login(sim, "ip_restricted", "x", "y")[0] == 403


def test_restore_scope_forbidden_with_an_empty_body(sim: Simulator) -> None:
    assert api(sim, "restore_scope", "getrestoreprogress")[:3:2] == (403, b"")
    assert api(sim, "restore_scope", "getbackupschedule")[0] == 200


def test_429_without_headers_and_with_retry_after_zero() -> None:
    with Simulator(clock=lambda: T0) as s:
        s.add_portal("bare", "rate_limited_bare")
        s.add_portal("zero", "rate_limited", retry_after=0)
        status, headers, body = api(s, "bare", "getbackupschedule")
        assert (status, body) == (429, b"")
        assert not [k for k in headers if k.lower().startswith(("retry-after", "x-ratelimit"))]
        status, headers, _ = api(s, "zero", "getbackupschedule")
        assert (status, headers["Retry-After"]) == (429, "0")
        assert "X-RateLimit-Reset" not in headers


def test_demo_has_zones_an_overdue_and_a_tariff_blocked_portal() -> None:
    with Simulator() as s:
        portals = {p.name: p for p in add_demo_portals(s)}
        assert dict(DEMO_PORTALS)["overdue"] == "overdue"
        assert dict(DEMO_PORTALS)["tariff-delay"] == "tariff_delay"
        assert len({p.timezone for p in portals.values()}) >= 4
        for name, zone in DEMO_ZONES.items():
            r = json.loads(get(s, name, "settings")[2])["response"]
            assert r["timezone"] == zone
        assert json.loads(get(s, "tariff-delay", "portal/tariff")[2])["response"]["state"] == 2
        assert time.time() - portals["overdue"].added_at < 60
