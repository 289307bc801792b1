"""What DocSpace answers, as dataclasses, and the tolerant pure parsers that build them."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from exporter.schedule import expected_interval_seconds

PERIODS = {0: "daily", 1: "weekly", 2: "monthly"}
PERIOD_NAMES = {"everyday": 0, "everyweek": 1, "everymonth": 2}

STORAGE_TYPES = {
    0: "documents",
    1: "thirdparty_documents",
    2: "custom_cloud",
    3: "local",
    4: "data_store",
    5: "thirdparty_consumer",
}
# Names as the server's C# enum spells them (input DTOs accept names; be tolerant).
STORAGE_NAMES = {
    "documents": 0,
    "thridpartydocuments": 1,
    "thirdpartydocuments": 1,
    "customcloud": 2,
    "local": 3,
    "datastore": 4,
    "thirdpartyconsumer": 5,
}

TASK_STATES = ("created", "running", "completed", "canceled", "failed")
# DistributedTaskStatus: 0 Created, 1 Running, 2 Completed, 3 Canceled, 4 Failted (sic).
TASK_STATUS = {0: "created", 1: "running", 2: "completed", 3: "canceled", 4: "failed"}
TASK_STATUS_NAMES = {
    "created": 0,
    "running": 1,
    "completed": 2,
    "canceled": 3,
    "cancelled": 3,
    "failted": 4,
    "failed": 4,
}

# .NET default(DateTime): what lastBackupTime holds until the schedule first runs.
NEVER_YEAR = 1
_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$"
)


class ParseError(ValueError):
    """The answer is not the JSON DocSpace sends; the message is safe to log."""


@dataclass(frozen=True)
class Schedule:
    period: str  # daily / weekly / monthly / unknown_N
    hour: int
    day: int
    storage_type: str  # documents ... / unknown_N
    backups_stored: int  # 0 when the server omitted it (it omits 0)
    last_backup_time: float | None  # Unix seconds; None = never ran
    dump: bool

    @property
    def expected_interval(self) -> float | None:
        # Exact per schedule: monthly day 29-31 skips months without that day.
        return expected_interval_seconds(self.period, self.day)


@dataclass(frozen=True)
class Task:
    """A backup or restore task as getbackupprogress / getrestoreprogress report it."""

    is_completed: bool
    progress: float  # 0..100 as the API reports it
    has_error: bool
    status: str | None  # DistributedTaskStatus name; None on servers older than v3.7
    has_warning: bool = False
    error_text: str = ""  # for debug logging only (truncated); never a label

    @property
    def failed(self) -> bool:
        # DocSpace reports a failed backup as status 2 (Completed) with a non-empty
        # error (BackupProgressItem.DoJob catches the exception itself); status 4
        # appears only when an exception escapes DoJob.
        return (self.is_completed and self.has_error) or self.status == "failed"

    @property
    def state(self) -> str:
        if self.failed:
            return "failed"
        if self.status in TASK_STATES:
            # A poll between DoJob's catch and OnCompleted can see Running with
            # isCompleted true; trust isCompleted for that short window.
            if self.status in ("created", "running") and self.is_completed:
                return "completed"
            return self.status
        return "completed" if self.is_completed else "running"


@dataclass(frozen=True)
class History:
    backups: int
    last_created: float | None  # newest createdOn, Unix seconds


def parse_datetime(value: Any) -> float | None:
    """ISO-8601 as System.Text.Json writes it -> Unix seconds; None for 0001-01-01 (never).

    A value without offset is UTC: DocSpace stores DateTime.UtcNow and MySQL hands it
    back with Kind=Unspecified, so the wire has no `Z` (docspace-api.md §8).
    """
    if not isinstance(value, str):
        raise ParseError("date is not a string")
    m = _DATE_RE.match(value.strip())
    if not m:
        raise ParseError("date is not ISO-8601")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year == NEVER_YEAR:
        return None
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    tz = m.group(8)
    try:
        if tz in (None, "Z"):
            tzinfo = timezone.utc
        else:
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")

            tzinfo = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        dt = datetime(year, month, day, hour, minute, second, micro, tzinfo=tzinfo)
    except ValueError:
        raise ParseError("date out of range") from None
    return dt.timestamp()


def decode_envelope(body: bytes) -> tuple[bool, Any]:
    """Body of a 200 answer -> (present, response). present is False when the key is absent.

    DocSpace leaves `response` out when the action returned null (WhenWritingNull), which
    is how it says "no schedule", "no backup task", "no restore task".
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ParseError("body is not JSON") from None
    except RecursionError:
        # A few hundred kilobytes of `[[[[` fit under the size cap and nest deeper than
        # the json module recurses.
        raise ParseError("body nests too deeply") from None
    if not isinstance(doc, dict):
        raise ParseError("body is not a JSON object")
    status = doc.get("status", 0)
    if status not in (0, None) and not isinstance(status, bool):
        raise ParseError("envelope status is not 0")
    if "response" not in doc or doc["response"] is None:
        if "count" not in doc and "statusCode" not in doc:
            # Not the DocSpace envelope at all (a proxy's JSON, another app).
            raise ParseError("body is not a DocSpace envelope")
        return False, None
    return True, doc["response"]


def _int(obj: dict[str, Any], key: str, *, required: bool = True, default: int = 0) -> int:
    if key not in obj or obj[key] is None:
        if required:
            raise ParseError(f"{key} is missing")
        return default
    v = obj[key]
    if isinstance(v, bool):
        raise ParseError(f"{key} is not a number")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
        # ASP.NET's Web JSON profile reads numbers from strings; tolerate it on output too.
        return _digits(v, key)
    raise ParseError(f"{key} is not a number")


def _digits(text: str, key: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        raise ParseError(f"{key} is not a number") from None


def _number(obj: dict[str, Any], key: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or v is None:
        raise ParseError(f"{key} is not a number")
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            raise ParseError(f"{key} is not a number") from None
    else:
        raise ParseError(f"{key} is not a number")
    if not math.isfinite(f):
        raise ParseError(f"{key} is not finite")
    return f


def _bool(obj: dict[str, Any], key: str, *, required: bool = True) -> bool:
    v = obj.get(key)
    if isinstance(v, bool):
        return v
    if v is None and not required:
        return False
    raise ParseError(f"{key} is not true/false")


def _enum(value: Any, names: dict[str, int], key: str) -> int:
    """Enums are ints on the wire; accept their names too, defensively."""
    if isinstance(value, bool) or value is None:
        raise ParseError(f"{key} is not an enum value")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"-?\d+", s):
            return _digits(s, key)
        n = names.get(s.lower())
        if n is not None:
            return n
    raise ParseError(f"{key} is not an enum value")


def _label_of(table: dict[int, str], n: int) -> str:
    return table.get(n, f"unknown_{n}")


def parse_schedule(present: bool, response: Any) -> Schedule | None:
    """getbackupschedule's response -> Schedule, or None when no schedule exists."""
    if not present:
        return None
    if not isinstance(response, dict):
        raise ParseError("schedule is not an object")
    cron = response.get("cronParams")
    if not isinstance(cron, dict):
        raise ParseError("cronParams is not an object")
    period = _enum(cron.get("period"), PERIOD_NAMES, "cronParams.period")
    hour = _int(cron, "hour", required=False)
    day = _int(cron, "day", required=False)
    storage = _enum(response.get("storageType", 0), STORAGE_NAMES, "storageType")
    stored = _int(response, "backupsStored", required=False)  # omitted when 0
    last = parse_datetime(response.get("lastBackupTime", "0001-01-01T00:00:00"))
    dump = response.get("dump", False)
    if not isinstance(dump, bool):
        raise ParseError("dump is not true/false")
    return Schedule(
        period=_label_of(PERIODS, period),
        hour=hour,
        day=day,
        storage_type=_label_of(STORAGE_TYPES, storage),
        backups_stored=stored,
        last_backup_time=last,
        dump=dump,
    )


def parse_task(present: bool, response: Any) -> Task | None:
    """getbackupprogress / getrestoreprogress response -> Task, or None when no task."""
    if not present:
        return None
    if not isinstance(response, dict):
        raise ParseError("progress is not an object")
    completed = _bool(response, "isCompleted")
    progress = _number(response, "progress")
    if not 0 <= progress <= 100:
        raise ParseError("progress is outside 0..100")
    error = response.get("error", "")
    if error is None:
        error = ""
    if not isinstance(error, str):
        raise ParseError("error is not a string")
    warning = response.get("warning", "")
    status: str | None = None
    if response.get("status") is not None:
        # Absent before v3.7; tolerate numbers we do not know as "unknown".
        n = _enum(response["status"], TASK_STATUS_NAMES, "status")
        status = TASK_STATUS.get(n, "unknown")
    return Task(
        is_completed=completed,
        progress=progress,
        has_error=bool(error.strip()),
        status=status,
        has_warning=isinstance(warning, str) and bool(warning.strip()),
        error_text=error[:200],
    )


def parse_history(present: bool, response: Any) -> History:
    """getbackuphistory's list -> count and newest createdOn (the list has no ORDER BY)."""
    if not present:
        return History(backups=0, last_created=None)
    if not isinstance(response, list):
        raise ParseError("history is not a list")
    newest: float | None = None
    for i, rec in enumerate(response):
        if not isinstance(rec, dict):
            raise ParseError(f"history[{i}] is not an object")
        created = parse_datetime(rec.get("createdOn"))
        if created is not None and (newest is None or created > newest):
            newest = created
    return History(backups=len(response), last_created=newest)


def parse_login(present: bool, response: Any) -> tuple[str, float | None]:
    """POST /api/2.0/authentication -> (token, expires as Unix seconds or None = no expiry)."""
    if not present or not isinstance(response, dict):
        raise ParseError("login answer has no response object")
    token = response.get("token")
    if not isinstance(token, str) or not token:
        if response.get("tfa") or response.get("sms"):
            raise ParseError("login needs two-factor authentication; use an API key")
        raise ParseError("login answer has no token")
    expires_raw = response.get("expires")
    expires = parse_datetime(expires_raw) if expires_raw is not None else None
    return token, expires


# TariffState (web/ASC.Web.Api PortalController.GetPortalTariff): 0 Trial, 1 Paid, 2 Delay,
# 3 NotPaid. At Delay and above the scheduler skips scheduled backups silently.
TARIFF_STATES = ("trial", "paid", "delay", "not_paid")
TARIFF_STATE_NAMES = {"trial": 0, "paid": 1, "delay": 2, "notpaid": 3, "not_paid": 3}
# Longest timezone / version text kept for a label; anything longer is cut (a label value
# from the API must stay small whatever the portal sends).
MAX_LABEL_TEXT = 100


@dataclass(frozen=True)
class PortalSettings:
    """GET /api/2.0/settings: the zone DocSpace's scheduler uses, and the version."""

    timezone: str  # IANA id as the portal reports it; "" when it sent none
    version: str
    tenant_status: int | None  # 0 Active ... 4 Restoring ...; None when absent


@dataclass(frozen=True)
class Tariff:
    """GET /api/2.0/portal/tariff: the billing state and its due date."""

    state: str | None  # one of TARIFF_STATES; None for a number this exporter does not know
    due: float | None  # dueDate as Unix time; None when absent (non-admin caller) or 0001-01-01


def _label_text(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError(f"{key} is not a string")
    text = "".join(c for c in value.strip() if c.isprintable())
    return text[:MAX_LABEL_TEXT]


def parse_settings(present: bool, response: Any) -> PortalSettings:
    """/api/2.0/settings -> PortalSettings. `timezone` is only filled for an authenticated
    caller; its absence is kept as "" (the zone is then unknown to the exporter)."""
    if not present or not isinstance(response, dict):
        raise ParseError("settings answer has no response object")
    status = None
    if response.get("tenantStatus") is not None:
        status = _int(response, "tenantStatus")
    return PortalSettings(
        timezone=_label_text(response.get("timezone"), "timezone"),
        version=_label_text(response.get("version"), "version"),
        tenant_status=status,
    )


def parse_tariff(present: bool, response: Any) -> Tariff:
    """/api/2.0/portal/tariff -> Tariff. dueDate is only sent to a DocSpace admin."""
    if not present or not isinstance(response, dict):
        raise ParseError("tariff answer has no response object")
    n = _enum(response.get("state"), TARIFF_STATE_NAMES, "state")
    due = None
    if response.get("dueDate") is not None:
        due = parse_datetime(response["dueDate"])
    return Tariff(state=TARIFF_STATES[n] if 0 <= n < len(TARIFF_STATES) else None, due=due)
