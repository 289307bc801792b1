"""The exporter against the simulator's corrections of docspace-api.md sections 14-16."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from docspace_simulator import Simulator
from exporter.config import Config
from tests.harness import portal_config, value


def scrape(sim: Simulator, exporter: Callable[..., Any], scenario: str, *, auth: str = "api_key",
           **kw: Any) -> dict[Any, float]:
    sp = sim.add_portal("p", scenario, **kw)
    run = exporter(Config(portals=(portal_config(sim, sp, auth=auth, history=True),)))
    samples: dict[Any, float] = run.samples()
    return samples


def errors(samples: dict[Any, float]) -> dict[tuple[str, str], float]:
    out = {}
    for (name, labels), v in samples.items():
        if name == "docspace_scrape_errors_total":
            d = dict(labels)
            out[(d["endpoint"], d["reason"])] = v
    return out


def status(samples: dict[Any, float], kind: str = "backup") -> str | None:
    on = [dict(labels)["status"] for (name, labels), v in samples.items()
          if name == f"docspace_{kind}_status" and v == 1]
    return on[0] if on else None


def test_canceled_task_with_warning(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "backup_canceled")
    assert status(s) == "canceled"
    assert value(s, "docspace_backup_warning", portal="p") == 1
    assert value(s, "docspace_backup_failed", portal="p") == 0


def test_created_task(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "backup_created")
    assert status(s) == "created"
    assert value(s, "docspace_backup_completed", portal="p") == 0


def test_completed_with_warning(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "backup_warning")
    assert status(s) == "completed"
    assert value(s, "docspace_backup_warning", portal="p") == 1


def test_failed_task_gone_after_a_day_leaves_the_history_evidence(
        sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "backup_failed_expired")
    assert status(s) is None  # the task left the queue: DocSpaceBackupFailed has resolved
    last = value(s, "docspace_backup_schedule_last_backup_timestamp_seconds", portal="p")
    copy = value(s, "docspace_backup_last_success_timestamp_seconds", portal="p")
    assert last is not None and copy is not None and copy < last  # DocSpaceBackupLeftNoCopy


def test_schedule_deleted_by_the_server(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "schedule_deleted")
    assert value(s, "docspace_up", portal="p") == 1
    assert value(s, "docspace_backup_schedule_configured", portal="p") == 0
    assert value(s, "docspace_backup_schedule_next_due_timestamp_seconds", portal="p") is None


def test_ip_restriction_is_forbidden(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "ip_restricted")
    assert value(s, "docspace_up", portal="p") == 0
    assert set(errors(s)) == {(e, "forbidden") for e in (
        "schedule", "backup_progress", "restore_progress", "history", "settings", "tariff")}


def test_restore_scope_forbidden_only_there(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "restore_scope")
    assert errors(s) == {("restore_progress", "forbidden"): 1}
    assert value(s, "docspace_backup_schedule_configured", portal="p") == 1


def test_login_refused_during_a_restore(sim: Simulator, exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "restore_running", auth="password", username="a@example.com",
               password="pw")
    assert errors(s) == {("login", "forbidden"): 1}
    assert value(s, "docspace_up", portal="p") == 0


def test_429_without_headers_is_not_retried(sim: Simulator,
                                            exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "rate_limited_bare")
    assert ("schedule", "rate_limited") in errors(s)
    assert sim.request_count("p", "schedule") == 1


def test_429_with_retry_after_zero_is_retried_once(sim: Simulator,
                                                   exporter: Callable[..., Any]) -> None:
    s = scrape(sim, exporter, "healthy", rate_limit_first=1, retry_after=0)
    assert value(s, "docspace_up", portal="p") == 1
    assert errors(s) == {}
    assert sim.request_count("p") == 7  # 6 endpoints and the one retried after 0 s


def test_lowercase_bearer_is_refused_by_the_server(sim: Simulator) -> None:
    import urllib.error
    import urllib.request

    sp = sim.add_portal("p")
    req = urllib.request.Request(sim.portal_url("p") + "/api/2.0/backup/getbackupschedule",
                                 headers={"Authorization": "bearer " + sp.api_key})
    try:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310
        raise AssertionError("lowercase bearer accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    # ...and the exporter sends "Bearer " exactly (tests/test_integration.py checks it).
