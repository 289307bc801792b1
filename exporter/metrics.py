"""The only place with metric names and HELP: pure functions from fetched data to families."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import endpoints
from exporter import schedule as sched
from exporter.model import TARIFF_STATES, TASK_STATES
from exporter.results import Failed, PortalData, value

# The backup API's endpoints, each with a docspace_endpoint_up series (from the table).
ENDPOINTS = endpoints.BACKUP
__all__ = ["ENDPOINTS", "PortalData", "error_family", "exporter_families", "portal_families"]


def _gauge(name: str, doc: str, labels: Iterable[str] = ("portal",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def portal_families(portals: list[PortalData], now: float) -> list[Metric]:
    """Families for the portals' data. `now` is the scrape's Unix time, for ages."""
    made = {f.name: f for f in (*up_families(portals), *schedule_families(portals, now),
                                *task_families(portals), *history_families(portals),
                                *settings_families(portals), *tariff_families(portals))}
    return [made[name] for name in ORDER]


# The exposition order of the families portal_families returns, kept byte for byte from
# before the split (tests/golden/metrics.prom): the schedule's next-due time and the backup
# warning came after the other families of their endpoint, so they are placed by hand.
ORDER = (
    "docspace_up", "docspace_scrape_duration_seconds", "docspace_endpoint_up",
    "docspace_portal_info", *endpoints.BY_NAME["schedule"].families[:6],
    *endpoints.BY_NAME["backup_progress"].families[:4],
    *endpoints.BY_NAME["restore_progress"].families,
    "docspace_backup_warning", *endpoints.BY_NAME["history"].families,
    "docspace_backup_schedule_next_due_timestamp_seconds",
    *endpoints.BY_NAME["settings"].families, *endpoints.BY_NAME["tariff"].families,
)


def up_families(portals: Iterable[PortalData]) -> list[Metric]:
    """Whether each portal and each backup endpoint answered, and how long it took:

        docspace_up{portal="main"} 1.0
        docspace_scrape_duration_seconds{portal="main"} 0.25
        docspace_endpoint_up{endpoint="schedule",portal="main"} 1.0
        docspace_endpoint_up{endpoint="restore_progress",portal="broken"} 0.0
        docspace_portal_info{portal="main",url="https://main.example.com"} 1.0
    """
    up = _gauge("docspace_up", "1 if every backup API call for the portal succeeded in this "
                "scrape, else 0.")
    dur = _gauge("docspace_scrape_duration_seconds", "Time spent on the portal in this scrape.")
    ep_up = _gauge("docspace_endpoint_up", "1 if this API endpoint answered usably in this "
                   "scrape, else 0.", ("portal", "endpoint"))
    info = _gauge("docspace_portal_info", "1 for every configured portal.", ("portal", "url"))
    for p in portals:
        up.add_metric([p.name], 1.0 if p.up else 0.0)
        dur.add_metric([p.name], p.duration)
        info.add_metric([p.name, p.url], 1.0)
        for endpoint in ENDPOINTS:
            outcome = p.outcome(endpoint)
            if isinstance(outcome, Failed):
                ep_up.add_metric([p.name, endpoint], 0.0)
            elif outcome is not None:
                ep_up.add_metric([p.name, endpoint], 1.0)
    return [up, dur, ep_up, info]


def schedule_families(portals: Iterable[PortalData], now: float) -> list[Metric]:
    """getbackupschedule: the automatic backup schedule, when it last ran and is next due:

        docspace_backup_schedule_configured{portal="main"} 1.0
        docspace_backup_schedule_info{day="1",dump="false",hour="2",period="weekly",portal="main",storage_type="documents"} 1.0
        docspace_backup_schedule_expected_interval_seconds{portal="main"} 604800.0
        docspace_backup_schedule_backups_stored{portal="main"} 5.0
        docspace_backup_schedule_last_backup_timestamp_seconds{portal="main"} 1.736647652e+09
        docspace_backup_schedule_last_backup_age_seconds{portal="main"} 52348.0
        docspace_backup_schedule_next_due_timestamp_seconds{portal="main"} 1.7372484e+09
    """  # noqa: E501 - a sample line is as long as it is
    configured = _gauge("docspace_backup_schedule_configured",
                        "1 if an automatic backup schedule exists, 0 if none.")
    sched_info = _gauge(
        "docspace_backup_schedule_info", "Automatic backup schedule settings (always 1).",
        ("portal", "period", "hour", "day", "storage_type", "dump"))
    interval = _gauge("docspace_backup_schedule_expected_interval_seconds",
                      "The longest gap between two due times of the schedule: 86400 daily, "
                      "604800 weekly, monthly 2678400 (day 1-28), 5097600 (29), 5184000 (30), "
                      "5270400 (31).")
    stored = _gauge("docspace_backup_schedule_backups_stored",
                    "How many backup copies the schedule keeps (backupsStored).")
    last_ts = _gauge("docspace_backup_schedule_last_backup_timestamp_seconds",
                     "Unix time the scheduler last started a scheduled backup (lastBackupTime, "
                     "UTC). Absent when the schedule never ran.")
    last_age = _gauge("docspace_backup_schedule_last_backup_age_seconds",
                      "Seconds from lastBackupTime to this scrape. Absent when it never ran.")
    next_due = _gauge("docspace_backup_schedule_next_due_timestamp_seconds",
                      "Unix time DocSpace's scheduler considers the next scheduled backup due "
                      "(cron in the portal's time zone, first time after lastBackupTime). In "
                      "the past: the scheduler should have started it. Absent without a "
                      "schedule or a known time zone.")
    for p in portals:
        name = p.name
        if p.schedule is None or isinstance(p.schedule, Failed):
            continue
        s = value(p.schedule)
        configured.add_metric([name], 1.0 if s is not None else 0.0)
        if s is None:
            continue
        sched_info.add_metric(
            [name, s.period, str(s.hour), str(s.day), s.storage_type,
             "true" if s.dump else "false"], 1.0)
        if s.expected_interval is not None:
            interval.add_metric([name], s.expected_interval)
        stored.add_metric([name], float(s.backups_stored))
        if s.last_backup_time is not None:
            last_ts.add_metric([name], s.last_backup_time)
            last_age.add_metric([name], max(0.0, now - s.last_backup_time))
        tz = sched.zone(p.zone) if p.zone else None
        if tz is not None:
            due = sched.next_due(s.period, s.hour, s.day, s.last_backup_time, tz, now)
            if due is not None:
                next_due.add_metric([name], due)
    return [configured, sched_info, interval, stored, last_ts, last_age, next_due]


def task_families(portals: Iterable[PortalData]) -> list[Metric]:
    """getbackupprogress and getrestoreprogress: the current or last task of each kind
    (docspace_restore_* alike, without the warning):

        docspace_backup_progress_ratio{portal="main"} 1.0
        docspace_backup_completed{portal="main"} 1.0
        docspace_backup_failed{portal="main"} 0.0
        docspace_backup_status{portal="main",status="completed"} 1.0
        docspace_backup_status{portal="main",status="failed"} 0.0
        docspace_backup_warning{portal="main"} 0.0
    """
    families: list[Metric] = []
    warning = _gauge("docspace_backup_warning",
                     "1 if the last backup task finished with a warning (e.g. files not "
                     "included), else 0. Absent when there is no task.")
    for kind in ("backup", "restore"):
        ratio = _gauge(f"docspace_{kind}_progress_ratio",
                       f"Progress of the current or last {kind} task, 0..1. "
                       "Absent when there is no task.")
        completed = _gauge(f"docspace_{kind}_completed",
                           f"1 if the current or last {kind} task has finished, else 0.")
        failed = _gauge(f"docspace_{kind}_failed",
                        f"1 if the last {kind} task finished with an error, else 0.")
        status = _gauge(f"docspace_{kind}_status",
                        f"State of the current or last {kind} task: 1 for the effective "
                        "state, 0 for the others, all 0 when there is no task.",
                        ("portal", "status"))
        for p in portals:
            outcome = p.backup_progress if kind == "backup" else p.restore_progress
            if outcome is None or isinstance(outcome, Failed):
                continue
            t = value(outcome)
            state = t.state if t is not None else None
            for s_name in TASK_STATES:
                status.add_metric([p.name, s_name], 1.0 if s_name == state else 0.0)
            if t is None:
                continue
            ratio.add_metric([p.name], t.progress / 100.0)
            completed.add_metric([p.name], 1.0 if t.is_completed else 0.0)
            failed.add_metric([p.name], 1.0 if t.failed else 0.0)
            if kind == "backup":
                warning.add_metric([p.name], 1.0 if t.has_warning else 0.0)
        families += [ratio, completed, failed, status]
    return [*families, warning]


def history_families(portals: Iterable[PortalData]) -> list[Metric]:
    """getbackuphistory (portals with `history: true`): the copies that still exist:

        docspace_backup_history_backups{portal="main"} 2.0
        docspace_backup_last_success_timestamp_seconds{portal="main"} 1.73676505e+09
    """
    count = _gauge("docspace_backup_history_backups",
                   "Number of backup copies listed by getbackuphistory (history: true).")
    last = _gauge("docspace_backup_last_success_timestamp_seconds",
                  "Newest createdOn in the backup history: the last successful backup "
                  "that still exists (history: true).")
    for p in portals:
        h = value(p.history)
        if h is None:
            continue
        count.add_metric([p.name], float(h.backups))
        if h.last_created is not None:
            last.add_metric([p.name], h.last_created)
    return [count, last]


def settings_families(portals: Iterable[PortalData]) -> list[Metric]:
    """/api/2.0/settings (read hourly): the scheduler's zone and the DocSpace version:

        docspace_portal_settings_info{portal="main",timezone="Europe/Berlin",version="3.7.2.1877"} 1.0
    """  # noqa: E501 - a sample line is as long as it is
    info = _gauge("docspace_portal_settings_info",
                  "Portal settings from GET /api/2.0/settings (always 1): the time "
                  "zone the scheduler uses and the DocSpace version.",
                  ("portal", "timezone", "version"))
    for p in portals:
        s = value(p.settings)
        if s is not None:
            info.add_metric([p.name, s.timezone, s.version], 1.0)
    return [info]


def tariff_families(portals: Iterable[PortalData]) -> list[Metric]:
    """/api/2.0/portal/tariff (read hourly): the billing state and its due date:

        docspace_portal_tariff_state{portal="main",state="paid"} 1.0
        docspace_portal_tariff_state{portal="main",state="delay"} 0.0
        docspace_portal_tariff_due_timestamp_seconds{portal="main"} 1.738368e+09
    """
    state = _gauge("docspace_portal_tariff_state",
                   "Tariff state from GET /api/2.0/portal/tariff: 1 for the current "
                   "state. At delay or not_paid DocSpace skips scheduled backups.",
                   ("portal", "state"))
    due = _gauge("docspace_portal_tariff_due_timestamp_seconds",
                 "The tariff's dueDate as Unix time, when the portal reports one.")
    for p in portals:
        t = value(p.tariff)
        if t is None:
            continue
        for s in TARIFF_STATES:
            state.add_metric([p.name, s], 1.0 if s == t.state else 0.0)
        if t.due is not None:
            due.add_metric([p.name], t.due)
    return [state, due]


def error_family(errors: Mapping[tuple[str, str, str], int],
                 portals: Iterable[str] | None = None) -> CounterMetricFamily:
    """docspace_scrape_errors_total from the running counts; optionally only some portals:

        docspace_scrape_errors_total{endpoint="restore_progress",portal="broken",reason="timeout"} 1.0
    """  # noqa: E501 - a sample line is as long as it is
    fam = CounterMetricFamily(
        "docspace_scrape_errors",
        "Failed DocSpace API calls since the exporter started, by endpoint and reason.",
        labels=["portal", "endpoint", "reason"])
    wanted = set(portals) if portals is not None else None
    for (portal, endpoint, reason), count in sorted(errors.items()):
        if wanted is None or portal in wanted:
            fam.add_metric([portal, endpoint, reason], float(count))
    return fam


def exporter_families(version: str, reload_ok: bool, reload_ts: float | None,
                      portals_configured: int) -> list[Metric]:
    build = GaugeMetricFamily("docspace_exporter_build_info",
                              "Version of the exporter and of Python (always 1).",
                              labels=["version", "python_version"])
    build.add_metric([version, platform.python_version()], 1.0)
    ok = GaugeMetricFamily("docspace_exporter_config_last_reload_successful",
                           "1 if the last config (re)load succeeded, else 0.")
    ok.add_metric([], 1.0 if reload_ok else 0.0)
    ts = GaugeMetricFamily("docspace_exporter_config_last_reload_success_timestamp_seconds",
                           "Unix time of the last successful config (re)load.")
    if reload_ts is not None:
        ts.add_metric([], reload_ts)
    n = GaugeMetricFamily("docspace_exporter_portals_configured",
                          "Number of portals in the loaded config.")
    n.add_metric([], float(portals_configured))
    return [build, ok, ts, n]
