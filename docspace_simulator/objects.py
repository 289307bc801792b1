"""The object each endpoint answers, computed from a portal's fields and its scenario row."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta
from typing import Any

from docspace_simulator.scenarios import SimPortal
from docspace_simulator.wire import (
    DAY,
    INTERVALS,
    NEVER,
    compact,
    fmt_dt,
    fmt_file_stamp,
    guid,
)

__all__ = ["backup_obj", "fragment", "settings_obj", "tariff_obj", "zone"]


def _period(p: SimPortal) -> int:
    if p.period is not None:
        return p.period
    return 0 if p.sc.daily else 1


def zone(p: SimPortal) -> Any:
    try:
        return zoneinfo.ZoneInfo(p.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")  # the server falls back to UTC for an unknown id


def _overdue_times(p: SimPortal) -> tuple[int, float]:
    """(hour, lastBackupTime) of a daily schedule whose slot was ~2-3 h before added_at and
    did not run: the previous day's run happened 5 minutes after that day's slot."""
    tz = zone(p)
    slot = datetime.fromtimestamp(p.added_at - 2 * 3600, tz).replace(
        minute=0, second=0, microsecond=0, tzinfo=None)
    previous = (slot - timedelta(days=1)).replace(tzinfo=tz)
    return slot.hour, previous.timestamp() + 300


def _hour(p: SimPortal) -> int:
    if p.sc.overdue and p.last_backup_time is None:
        return _overdue_times(p)[0]
    return p.hour


def _last_backup(p: SimPortal) -> float | None:
    if p.last_backup_time is not None:
        return p.last_backup_time
    sc = p.sc
    if sc.overdue:
        # Delay: lastBackupTime stops moving, so the slot passes like a missed one.
        return _overdue_times(p)[1]
    return None if sc.last_backup_ago is None else p.added_at - sc.last_backup_ago


def tariff_obj(p: SimPortal) -> dict[str, Any]:
    state = p.tariff_state if p.tariff_state is not None else p.sc.tariff_state
    due = p.tariff_due
    if due is None:
        due = p.added_at + (30 * DAY if state < 2 else -5 * DAY)
    return {
        "id": -1,
        "state": state,
        "dueDate": fmt_dt(due),
        "delayDueDate": fmt_dt(due + 14 * DAY),
        "licenseDate": NEVER,
        "customerId": "",
        "quotas": [{"id": -3, "quantity": 1, "wallet": False}],
        "enterprise": False,
        "openSource": False,
    }


def settings_obj(p: SimPortal, authenticated: bool, now: float) -> dict[str, Any]:
    """GetPortalSettings: `timezone` only for an authenticated caller (section 15)."""
    tz = zone(p)
    offset = datetime.fromtimestamp(now, tz).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else ""
    hh, mm = divmod(abs(minutes), 60)
    obj: dict[str, Any] = {"utcOffset": f"{sign}{hh:02d}:{mm:02d}:00",
                           "utcHoursOffset": minutes / 60, "culture": "en-US"}
    if authenticated:
        obj["timezone"] = p.timezone
    obj.update({
        "docSpace": True,
        "standalone": False,
        "version": p.version,
        "tenantStatus": p.sc.tenant_status,
        "tenantAlias": p.name,
    })
    return obj


def _storage_params(storage: int) -> dict[str, str | None]:
    if storage == 5:  # ThirdPartyConsumer keeps its own parameters
        return {"module": "S3", "bucket": "docspace-backups", "region": "eu-west-1"}
    folder = {0: "7", 1: "sbox-4711", 3: "/var/www/onlyoffice/Data/backup"}.get(storage)
    return {"folderId": folder}


def _history_records(p: SimPortal, dump: bool) -> list[tuple[str, float, float]]:
    """(id, started, created) of the backup copies, in the server's (unordered) list order."""
    sc = p.sc
    if not sc.history:
        return []
    base = _last_backup(p)
    if base is None:
        return []
    base -= sc.history_shift
    interval = INTERVALS.get(_period(p), 604800.0)
    # A failed last run left no copy: the newest one is from the run before it.
    ks = (2, 3, 4) if sc.history_skip_newest else (1, 2, 3)
    out = []
    for k in (ks[1], ks[0], ks[2]):  # deliberately not sorted, like the server
        started = base - (k - 1) * interval + 1
        out.append((guid(p.name, f"backup-{k}{'-dump' if dump else ''}"), started, started + 433))
    return out


def _schedule_obj(p: SimPortal, dump: bool) -> dict[str, Any] | None:
    sc = p.sc
    if not sc.schedule:
        return None
    period = _period(p)
    storage = sc.storage_type if sc.storage_type is not None else p.storage_type
    last = _last_backup(p)
    day = 0 if period == 0 else (p.day if p.day is not None else 1)
    obj: dict[str, Any] = {
        "storageType": storage,
        "storageParams": _storage_params(storage),
        "cronParams": {"period": period, "hour": _hour(p), "day": day},
    }
    if p.backups_stored:
        obj["backupsStored"] = p.backups_stored
    obj["lastBackupTime"] = NEVER if last is None else fmt_dt(last)
    obj["dump"] = dump
    return obj


def backup_obj(p: SimPortal, base_url: str, dump: bool, now: float) -> dict[str, Any] | None:
    t = p.sc.task
    if t is None:
        return None  # nothing queued, or the finished task left the queue after 24 h
    if p.task_finished_at is not None and now >= p.task_finished_at + DAY:
        return None
    task = guid(p.name, t.task_id)
    link = ""
    if t.link and p.storage_type in (4, 5):
        records = _history_records(p, dump)
        if records:
            newest = max(records, key=lambda r: r[2])
            prefix = "workspace" if dump else p.name
            link = (
                f"{base_url}/{p.name}/storage/backup/root/"
                f"{prefix}_{fmt_file_stamp(newest[1])}.tar.gz?hash={task[:8]}"
            )
    obj: dict[str, Any] = {"isCompleted": t.done, "progress": t.progress, "error": t.error}
    if t.warning is not None:  # only when non-empty (section 6)
        obj["warning"] = t.warning
    obj.update({
        "link": link,
        "tenantId": 1,
        "backupProgressEnum": 0,
        "status": t.status,
        "taskId": task,
    })
    return obj


def _restore_obj(p: SimPortal) -> dict[str, Any] | None:
    r = p.sc.restore
    if r is None:
        return None
    return {
        "isCompleted": r.done,
        "progress": r.progress,
        "error": r.error,
        "tenantId": 1,
        "backupProgressEnum": 1,
        "status": r.status,
        "taskId": guid(p.name, "restore"),
    }


def _history_list(p: SimPortal, dump: bool) -> list[dict[str, Any]]:
    prefix = "workspace" if dump else p.name
    storage = p.storage_type
    out = []
    for gid, started, created in _history_records(p, dump):
        out.append(
            {
                "id": gid,
                "fileName": f"{prefix}_{fmt_file_stamp(started)}.tar.gz",
                "storageType": storage,
                "createdOn": fmt_dt(created),
                "expiresOn": fmt_dt(created + DAY) if storage == 4 else NEVER,
            }
        )
    return out


def _endpoint_obj(p: SimPortal, endpoint: str, dump: bool, base_url: str, now: float) -> Any:
    obj: Any
    if endpoint == "schedule":
        obj = _schedule_obj(p, dump)
    elif endpoint == "backup_progress":
        obj = backup_obj(p, base_url, dump, now)
    elif endpoint == "tariff":
        obj = tariff_obj(p)
    elif endpoint == "restore_progress":
        obj = _restore_obj(p)
    else:
        obj = _history_list(p, dump)
    mangle = p.sc.mangle
    return obj if mangle is None else mangle(p, endpoint, obj)


def fragment(p: SimPortal, endpoint: str, dump: bool, base_url: str,
             now: float = 0.0) -> tuple[str | None, int]:
    """The `response` JSON text (None when absent) and `count`, cached per portal state."""
    if p.task_finished_at is not None and endpoint == "backup_progress":
        # Whether the task is still in the queue depends on the clock: not cached.
        task = _endpoint_obj(p, endpoint, dump, base_url, now)
        return (None, 0) if task is None else (compact(task), 1)
    key = (
        endpoint,
        dump,
        base_url,
        p.scenario,
        p.period,
        p.hour,
        p.day,
        p.backups_stored,
        p.storage_type,
        p.last_backup_time,
        p.added_at,
        p.timezone,
        p.version,
        p.tariff_state,
        p.tariff_due,
    )
    hit = p._cache.get(key)
    if hit is not None:
        return hit
    obj = _endpoint_obj(p, endpoint, dump, base_url, now)
    if obj is None:
        result: tuple[str | None, int] = (None, 0)
    else:
        result = (compact(obj), len(obj) if isinstance(obj, list) else 1)
    if len(p._cache) > 64:
        p._cache.clear()
    p._cache[key] = result
    return result
