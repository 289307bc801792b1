"""The only place with metric names and HELP: pure functions from fetched data to families."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import schedule as sched
from exporter.model import (
    TARIFF_STATES,
    TASK_STATES,
    History,
    PortalSettings,
    Schedule,
    Tariff,
    Task,
)

ENDPOINTS = ("schedule", "backup_progress", "restore_progress", "history")
# Read at most once an hour (collector.SIDE_REFRESH); not part of docspace_up.
SIDE_ENDPOINTS = ("settings", "tariff")


@dataclass
class PortalData:
    """What one scrape learned about one portal. An endpoint that failed is absent."""

    name: str
    url: str
    duration: float
    # endpoint -> parsed value (Schedule | None, Task | None, History) for each success
    ok: dict[str, object] = field(default_factory=dict)
    # endpoint -> reason for each endpoint that failed (or missed the deadline)
    failed: dict[str, str] = field(default_factory=dict)
    # IANA zone DocSpace's scheduler uses for this portal; None when unknown
    zone: str | None = None

    @property
    def up(self) -> bool:
        # About the backup API only: settings and tariff failures never make it 0.
        return not any(e not in SIDE_ENDPOINTS for e in self.failed)


def _gauge(name: str, doc: str, labels: Iterable[str] = ("portal",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def portal_families(portals: list[PortalData], now: float) -> list[Metric]:
    """Families for the portals' data. `now` is the scrape's Unix time, for ages."""
    up = _gauge("docspace_up", "1 if every backup API call for the portal succeeded in this "
                "scrape, else 0.")
    dur = _gauge("docspace_scrape_duration_seconds", "Time spent on the portal in this scrape.")
    ep_up = _gauge("docspace_endpoint_up", "1 if this API endpoint answered usably in this "
                   "scrape, else 0.", ("portal", "endpoint"))
    info = _gauge("docspace_portal_info", "1 for every configured portal.", ("portal", "url"))
    configured = _gauge("docspace_backup_schedule_configured",
                        "1 if an automatic backup schedule exists, 0 if none.")
    sched_info = _gauge(
        "docspace_backup_schedule_info", "Automatic backup schedule settings (always 1).",
        ("portal", "period", "hour", "day", "storage_type", "dump"))
    interval = _gauge("docspace_backup_schedule_expected_interval_seconds",
                      "The longest gap between two due times of the schedule: 86400 daily, "
                      "604800 weekly, monthly 2678400 (day 1-28), 5097600 (29), 5184000 (30), "
                      "5270400 (31).")
    next_due = _gauge("docspace_backup_schedule_next_due_timestamp_seconds",
                      "Unix time DocSpace's scheduler considers the next scheduled backup due "
                      "(cron in the portal's time zone, first time after lastBackupTime). In "
                      "the past: the scheduler should have started it. Absent without a "
                      "schedule or a known time zone.")
    settings_info = _gauge("docspace_portal_settings_info",
                           "Portal settings from GET /api/2.0/settings (always 1): the time "
                           "zone the scheduler uses and the DocSpace version.",
                           ("portal", "timezone", "version"))
    tariff_state = _gauge("docspace_portal_tariff_state",
                          "Tariff state from GET /api/2.0/portal/tariff: 1 for the current "
                          "state. At delay or not_paid DocSpace skips scheduled backups.",
                          ("portal", "state"))
    tariff_due = _gauge("docspace_portal_tariff_due_timestamp_seconds",
                        "The tariff's dueDate as Unix time, when the portal reports one.")
    stored = _gauge("docspace_backup_schedule_backups_stored",
                    "How many backup copies the schedule keeps (backupsStored).")
    last_ts = _gauge("docspace_backup_schedule_last_backup_timestamp_seconds",
                     "Unix time the scheduler last started a scheduled backup (lastBackupTime, "
                     "UTC). Absent when the schedule never ran.")
    last_age = _gauge("docspace_backup_schedule_last_backup_age_seconds",
                      "Seconds from lastBackupTime to this scrape. Absent when it never ran.")
    task_fams: dict[str, dict[str, GaugeMetricFamily]] = {}
    for kind in ("backup", "restore"):
        task_fams[kind] = {
            "ratio": _gauge(f"docspace_{kind}_progress_ratio",
                            f"Progress of the current or last {kind} task, 0..1. "
                            "Absent when there is no task."),
            "completed": _gauge(f"docspace_{kind}_completed",
                                f"1 if the current or last {kind} task has finished, else 0."),
            "failed": _gauge(f"docspace_{kind}_failed",
                             f"1 if the last {kind} task finished with an error, else 0."),
            "status": _gauge(f"docspace_{kind}_status",
                             f"State of the current or last {kind} task: 1 for the effective "
                             "state, 0 for the others, all 0 when there is no task.",
                             ("portal", "status")),
        }
    warning = _gauge("docspace_backup_warning",
                     "1 if the last backup task finished with a warning (e.g. files not "
                     "included), else 0. Absent when there is no task.")
    hist_count = _gauge("docspace_backup_history_backups",
                        "Number of backup copies listed by getbackuphistory (history: true).")
    hist_last = _gauge("docspace_backup_last_success_timestamp_seconds",
                       "Newest createdOn in the backup history: the last successful backup "
                       "that still exists (history: true).")

    for p in portals:
        name = p.name
        up.add_metric([name], 1.0 if p.up else 0.0)
        dur.add_metric([name], p.duration)
        info.add_metric([name, p.url], 1.0)
        for endpoint in ENDPOINTS:
            if endpoint in p.ok:
                ep_up.add_metric([name, endpoint], 1.0)
            elif endpoint in p.failed:
                ep_up.add_metric([name, endpoint], 0.0)

        if "schedule" in p.ok:
            s = p.ok["schedule"]
            s = s if isinstance(s, Schedule) else None
            configured.add_metric([name], 1.0 if s is not None else 0.0)
            if s is not None:
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

        for kind, endpoint in (("backup", "backup_progress"), ("restore", "restore_progress")):
            if endpoint not in p.ok:
                continue
            t = p.ok[endpoint]
            t = t if isinstance(t, Task) else None
            fams = task_fams[kind]
            state = t.state if t is not None else None
            for s_name in TASK_STATES:
                fams["status"].add_metric([name, s_name], 1.0 if s_name == state else 0.0)
            if t is None:
                continue
            fams["ratio"].add_metric([name], t.progress / 100.0)
            fams["completed"].add_metric([name], 1.0 if t.is_completed else 0.0)
            fams["failed"].add_metric([name], 1.0 if t.failed else 0.0)
            if kind == "backup":
                warning.add_metric([name], 1.0 if t.has_warning else 0.0)

        settings = p.ok.get("settings")
        if isinstance(settings, PortalSettings):
            settings_info.add_metric([name, settings.timezone, settings.version], 1.0)
        tariff = p.ok.get("tariff")
        if isinstance(tariff, Tariff):
            for state in TARIFF_STATES:
                tariff_state.add_metric([name, state], 1.0 if state == tariff.state else 0.0)
            if tariff.due is not None:
                tariff_due.add_metric([name], tariff.due)

        if "history" in p.ok:
            h = p.ok["history"]
            if not isinstance(h, History):
                continue
            hist_count.add_metric([name], float(h.backups))
            if h.last_created is not None:
                hist_last.add_metric([name], h.last_created)

    families: list[Metric] = [up, dur, ep_up, info, configured, sched_info, interval, stored,
                              last_ts, last_age]
    for kind in ("backup", "restore"):
        f = task_fams[kind]
        families += [f["ratio"], f["completed"], f["failed"], f["status"]]
    families += [warning, hist_count, hist_last, next_due, settings_info, tariff_state,
                 tariff_due]
    return families


def error_family(errors: Mapping[tuple[str, str, str], int],
                 portals: Iterable[str] | None = None) -> CounterMetricFamily:
    """docspace_scrape_errors_total from the running counts; optionally only some portals."""
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
