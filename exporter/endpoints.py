"""The one table of DocSpace endpoints the exporter reads: path, parser, flags, families.

The client takes paths and parsers from it, the collector the list of calls, metrics the
docspace_endpoint_up series; each endpoint's families are written by the function of that
name in metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.model import parse_history, parse_schedule, parse_settings, parse_tariff, parse_task

API = "/api/2.0"


@dataclass(frozen=True)
class Endpoint:
    name: str  # also the DocSpaceClient method that reads it, and the `endpoint` label
    path: str  # below API
    parse: Callable[[bool, Any], Any]  # (present, response) -> value; raises ParseError
    dump: bool  # takes Dump=true on a portal with `dump: true`
    side: bool  # read at most hourly (collector.SIDE_REFRESH); not part of docspace_up
    needs_history: bool  # read only for a portal with `history: true`
    families: tuple[str, ...]  # metric families fed by its answer


_TASK = ("progress_ratio", "completed", "failed", "status")

TABLE: tuple[Endpoint, ...] = (
    Endpoint("schedule", "/backup/getbackupschedule", parse_schedule, dump=True, side=False,
             needs_history=False, families=(
                 "docspace_backup_schedule_configured", "docspace_backup_schedule_info",
                 "docspace_backup_schedule_expected_interval_seconds",
                 "docspace_backup_schedule_backups_stored",
                 "docspace_backup_schedule_last_backup_timestamp_seconds",
                 "docspace_backup_schedule_last_backup_age_seconds",
                 "docspace_backup_schedule_next_due_timestamp_seconds")),
    Endpoint("backup_progress", "/backup/getbackupprogress", parse_task, dump=True, side=False,
             needs_history=False,
             families=(*(f"docspace_backup_{s}" for s in _TASK), "docspace_backup_warning")),
    Endpoint("restore_progress", "/backup/getrestoreprogress", parse_task, dump=True,
             side=False, needs_history=False,
             families=tuple(f"docspace_restore_{s}" for s in _TASK)),
    Endpoint("history", "/backup/getbackuphistory", parse_history, dump=True, side=False,
             needs_history=True, families=(
                 "docspace_backup_history_backups",
                 "docspace_backup_last_success_timestamp_seconds")),
    # Served by the web API, not the backup service (docspace-api.md section 15); read at
    # most once an hour per portal, settings then tariff in one job.
    Endpoint("settings", "/settings", parse_settings, dump=False, side=True,
             needs_history=False, families=("docspace_portal_settings_info",)),
    Endpoint("tariff", "/portal/tariff", parse_tariff, dump=False, side=True,
             needs_history=False, families=(
                 "docspace_portal_tariff_state",
                 "docspace_portal_tariff_due_timestamp_seconds")),
)

BY_NAME: dict[str, Endpoint] = {e.name: e for e in TABLE}
# The backup API's endpoints (docspace_up, docspace_endpoint_up), in exposition order.
BACKUP: tuple[str, ...] = tuple(e.name for e in TABLE if not e.side)
# The hourly ones, in the order one job reads them.
SIDE: tuple[str, ...] = tuple(e.name for e in TABLE if e.side)
