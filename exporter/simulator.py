"""A standard-library fake of the DocSpace server's backup API (wire format of docspace-api.md)."""

# This module deliberately imports nothing from the exporter package (nor requests/yaml): it is
# built from the wire-format notes, so a mistake in the exporter's parsers cannot hide in here.

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
import zoneinfo
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

__all__ = [
    "DEMO_PASSWORD",
    "DEMO_PORTALS",
    "DEMO_ZONES",
    "DEMO_USERNAME",
    "ENDPOINTS",
    "SCENARIOS",
    "SimPortal",
    "Simulator",
    "add_demo_portals",
    "main",
    "render_config",
]

SCENARIOS: tuple[str, ...] = (
    "healthy",
    "stale",
    "never_ran",
    "no_schedule",
    "backup_running",
    "backup_failed",
    "restore_running",
    "restore_failed",
    "auth_failure",
    "slow",
    "down",
    "unpaid",
    "forbidden",
    "rate_limited",
    # Fault scenarios for hardening tests.
    "hang",
    "drip",
    "huge",
    "truncated",
    "wrong_types",
    "html",
    "redirect",
    # TenantStatusFilter: a deleted or suspended portal answers 404 to everything.
    "not_found",
    # docspace-api.md sections 14-16.
    "overdue",  # daily schedule whose due time passed ~2 h ago without a run
    "tariff_delay",  # tariff Delay: the scheduler skips scheduled backups silently
    "backup_warning",  # completed with "Some files were not included" (E6)
    "backup_canceled",  # status 3 Canceled, warning "Backup cancelled"
    "backup_created",  # status 0 Created, queued, not started
    "backup_failed_expired",  # failed > 24 h ago: the task is gone, no new copy was made
    "schedule_deleted",  # the server deleted the schedule itself; old copies remain
    "ip_restricted",  # IpSecurityFilter: 403 with a plain-text body on every path
    "restore_scope",  # API key whose scopes do not cover getrestoreprogress: 403 there
    "rate_limited_bare",  # concurrency limiter: 429 with no headers at all
)

DEMO_PORTALS: tuple[tuple[str, str], ...] = (
    ("healthy", "healthy"),
    ("healthy-login", "healthy"),
    ("stale", "stale"),
    ("never-ran", "never_ran"),
    ("no-schedule", "no_schedule"),
    ("backup-running", "backup_running"),
    ("backup-failed", "backup_failed"),
    ("restore-running", "restore_running"),
    ("restore-failed", "restore_failed"),
    ("auth-failure", "auth_failure"),
    ("down", "down"),
    ("overdue", "overdue"),
    ("tariff-delay", "tariff_delay"),
)
# Time zones of the demo portals (the scheduler runs each in its own zone).
DEMO_ZONES = {
    "healthy": "Europe/Berlin",
    "healthy-login": "America/New_York",
    "stale": "Australia/Sydney",
    "overdue": "Asia/Kolkata",
    "tariff-delay": "America/New_York",
}
# Login credentials of the demo portal "healthy-login" (the only demo portal that logs in).
DEMO_USERNAME = "admin@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a fixed credential of the fake server

# Counter names of request_count(); the same words as the exporter's `endpoint` label.
ENDPOINTS: tuple[str, ...] = (
    "schedule", "backup_progress", "restore_progress", "history", "login", "settings", "tariff",
)
_ROUTES = {
    "getbackupschedule": "schedule",
    "getbackupprogress": "backup_progress",
    "getrestoreprogress": "restore_progress",
    "getbackuphistory": "history",
}

_DAY = 86400.0
_INTERVALS = {0: 86400.0, 1: 604800.0, 2: 2678400.0}
_NEVER = "0001-01-01T00:00:00"
_HUGE_SIZE = 60 * 1024 * 1024
_MAX_REQUEST_BODY = 1 << 20
_AUTH_LOG_LIMIT = 10000  # per portal; the oldest values are dropped beyond this

# --- fixed bodies (docspace-api.md §2.2, §2.3, §3, §12) -------------------------------------------

_CT_JSON = "application/json; charset=utf-8"
_CT_PROBLEM = "application/problem+json; charset=utf-8"
_CT_HTML = "text/html"


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _error_envelope(
    code: int, message: str, typ: str | None, stack: str | None, hresult: int
) -> bytes:
    err = {"message": message, "type": typ, "stack": stack, "hresult": hresult}
    return _compact({"error": err, "status": 1, "statusCode": code}).encode()


# E10: a caller who is not a portal admin.
_E10_BODY = _error_envelope(
    403,
    "Access denied",
    "ASC.Common.Security.Authorizing.AuthorizingException",
    "   at ASC.Common.Security.Authorizing.PermissionResolver.DemandAsync(...)",
    -2146233088,
)
# Dump=true where the access-space check fails (TenantExtra.DemandAccessSpacePermissionAsync).
_DUMP_DENIED_BODY = _error_envelope(
    403,
    "Access denied",
    "System.Security.SecurityException",
    "   at ASC.Web.Core.Utility.TenantExtra.DemandAccessSpacePermissionAsync()",
    -2146233078,
)
_LOGIN_FAILED_BODY = _error_envelope(401, "User authentication failed", None, None, 0)
# IpSecurityFilter writes this text itself (docspace-api.md section 16).
_IP_RESTRICTED_BODY = b"The access to the portal is restricted"
_CT_TEXT = "text/plain; charset=utf-8"

_NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_HTML_PAGE = (
    b'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    b'<title>ONLYOFFICE DocSpace</title></head><body><div id="root">Loading...</div>'
    b'<script src="/static/scripts/browserDetector.js"></script></body></html>\n'
)

_REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    502: "Bad Gateway",
}

# System.Text.Json's default encoder also escapes these ASCII characters.
_JS_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&'+`"})


def _json_str(value: str) -> str:
    return json.dumps(value).translate(_JS_ESCAPES)


def _fmt_dt(ts: float) -> str:
    """A DateTime as the server writes it from MySQL: UTC, no offset, no fraction."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts // 1)))


def _fmt_expires(ts: float) -> str:
    """A UTC DateTime with up to 7 fraction digits, trailing zeros trimmed, and a Z."""
    secs, ticks = divmod(round(ts * 10_000_000), 10_000_000)
    frac = f"{ticks:07d}".rstrip("0")
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + (f".{frac}" if frac else "") + "Z"
    )


def _fmt_file_stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(int(ts // 1)))


def _trace_id() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def _problem(code: int) -> bytes:
    """RFC 7807 body that ASP.NET's ClientErrorResultFilter gives a bare status (§2.3)."""
    if code == 403:
        doc: dict[str, Any] = {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.4",
            "title": "Forbidden",
            "status": 403,
            "traceId": _trace_id(),
        }
    elif code == 404:
        doc = {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.5",
            "title": "Not Found",
            "status": 404,
            "traceId": _trace_id(),
        }
    else:
        doc = {"status": code, "traceId": _trace_id()}
    return _compact(doc).encode()


def _default_api_key(name: str) -> str:
    return "sk-" + hashlib.sha256(f"docspace-simulator:{name}".encode()).hexdigest()


def _guid(name: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"docspace-simulator/{name}/{what}"))


# --- portals ---


@dataclass
class SimPortal:
    """One simulated portal; fields may be changed while the simulator runs."""

    name: str
    scenario: str = "healthy"
    api_key: str = ""  # empty: "sk-" + 64 hex derived from the name
    token: str | None = None
    username: str | None = None
    password: str | None = None
    token_lifetime: float = 3600.0
    period: int | None = None
    hour: int = 2
    day: int | None = None
    backups_stored: int = 5
    storage_type: int = 0
    last_backup_time: float | None = None
    latency: float = 0.0
    slow_seconds: float = 30.0
    dump_allowed: bool = True
    retry_after: int = 1
    # Whatever the scenario, answer this many more API requests with 429 + Retry-After first
    # (counts down); for "the exporter waits Retry-After once, then succeeds" tests.
    rate_limit_first: int = 0
    # clock() when the portal was added; scenario-default times are relative to it.
    added_at: float = 0.0
    # GET /api/2.0/settings and /api/2.0/portal/tariff (docspace-api.md section 15).
    timezone: str = "UTC"
    version: str = "3.7.2.1877"
    tariff_state: int | None = None  # None: 2 (Delay) for tariff_delay, 3 for unpaid, else 1
    tariff_due: float | None = None  # None: 30 days after added_at (Delay: 5 days before)
    # When set, the last backup task finished at this clock() time and, like the server's
    # queue (time-to-live 86400 s), getbackupprogress stops showing it a day later.
    task_finished_at: float | None = None
    # When set, /settings or /portal/tariff answer this HTTP status with an empty body.
    settings_status: int | None = None
    tariff_status: int | None = None
    _cache: dict[tuple[Any, ...], tuple[str | None, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.api_key:
            self.api_key = _default_api_key(self.name)

    def __repr__(self) -> str:  # never show secrets
        return f"SimPortal(name={self.name!r}, scenario={self.scenario!r})"


def _period(p: SimPortal) -> int:
    if p.period is not None:
        return p.period
    return 0 if p.scenario in ("stale", "never_ran", "overdue", "tariff_delay") else 1


def _zone(p: SimPortal) -> Any:
    try:
        return zoneinfo.ZoneInfo(p.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")  # the server falls back to UTC for an unknown id


def _overdue_times(p: SimPortal) -> tuple[int, float]:
    """(hour, lastBackupTime) of a daily schedule whose slot was ~2-3 h before added_at and
    did not run: the previous day's run happened 5 minutes after that day's slot."""
    tz = _zone(p)
    slot = datetime.fromtimestamp(p.added_at - 2 * 3600, tz).replace(
        minute=0, second=0, microsecond=0, tzinfo=None)
    previous = (slot - timedelta(days=1)).replace(tzinfo=tz)
    return slot.hour, previous.timestamp() + 300


def _hour(p: SimPortal) -> int:
    if p.scenario in ("overdue", "tariff_delay") and p.last_backup_time is None:
        return _overdue_times(p)[0]
    return p.hour


def _last_backup(p: SimPortal) -> float | None:
    if p.last_backup_time is not None:
        return p.last_backup_time
    if p.scenario in ("overdue", "tariff_delay"):
        # Delay: lastBackupTime stops moving, so the slot passes like a missed one.
        return _overdue_times(p)[1]
    ago = {"never_ran": None, "stale": 3 * _DAY, "backup_failed": 3600.0,
           "backup_failed_expired": 2 * _DAY}.get(p.scenario, _DAY)
    return None if ago is None else p.added_at - ago


def _tariff_state(p: SimPortal) -> int:
    if p.tariff_state is not None:
        return p.tariff_state
    return {"tariff_delay": 2, "unpaid": 3}.get(p.scenario, 1)


def _tariff_obj(p: SimPortal) -> dict[str, Any]:
    state = _tariff_state(p)
    due = p.tariff_due
    if due is None:
        due = p.added_at + (30 * _DAY if state < 2 else -5 * _DAY)
    return {
        "id": -1,
        "state": state,
        "dueDate": _fmt_dt(due),
        "delayDueDate": _fmt_dt(due + 14 * _DAY),
        "licenseDate": _NEVER,
        "customerId": "",
        "quotas": [{"id": -3, "quantity": 1, "wallet": False}],
        "enterprise": False,
        "openSource": False,
    }


def _settings_obj(p: SimPortal, authenticated: bool, now: float) -> dict[str, Any]:
    """GetPortalSettings: `timezone` only for an authenticated caller (section 15)."""
    tz = _zone(p)
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
        "tenantStatus": 4 if p.scenario == "restore_running" else 0,
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
    if p.scenario in ("never_ran", "no_schedule"):
        return []
    base = _last_backup(p)
    if p.scenario == "backup_failed_expired" and base is not None:
        base -= _DAY  # the failed run left no copy: the newest is from the day before
    if base is None:
        return []
    interval = _INTERVALS.get(_period(p), 604800.0)
    # A failed last run left no copy: the newest one is from the run before it.
    ks = (2, 3, 4) if p.scenario == "backup_failed" else (1, 2, 3)
    out = []
    for k in (ks[1], ks[0], ks[2]):  # deliberately not sorted, like the server
        started = base - (k - 1) * interval + 1
        out.append((_guid(p.name, f"backup-{k}{'-dump' if dump else ''}"), started, started + 433))
    return out


def _schedule_obj(p: SimPortal, dump: bool) -> dict[str, Any] | None:
    sc = p.scenario
    if sc in ("no_schedule", "schedule_deleted"):
        return None
    period = _period(p)
    storage = 4 if sc == "never_ran" else p.storage_type
    last = _last_backup(p)
    day = 0 if period == 0 else (p.day if p.day is not None else 1)
    obj: dict[str, Any] = {
        "storageType": storage,
        "storageParams": _storage_params(storage),
        "cronParams": {"period": period, "hour": _hour(p), "day": day},
    }
    if p.backups_stored:
        obj["backupsStored"] = p.backups_stored
    obj["lastBackupTime"] = _NEVER if last is None else _fmt_dt(last)
    obj["dump"] = dump
    if sc == "wrong_types":
        obj["cronParams"]["period"] = "x"
        obj["lastBackupTime"] = "not a date"
    return obj


def _backup_obj(p: SimPortal, base_url: str, dump: bool, now: float) -> dict[str, Any] | None:
    sc = p.scenario
    if sc in ("never_ran", "no_schedule", "backup_failed_expired"):
        return None  # nothing queued, or the finished task left the queue after 24 h
    if p.task_finished_at is not None and now >= p.task_finished_at + _DAY:
        return None
    done, progress, error, status = True, 100, "", 2
    task = _guid(p.name, "backup-1")
    link = ""
    warning: str | None = None
    if sc == "backup_warning":
        warning = ("Some files were not included in the backup. For more details, please "
                   "check storage/missing_info")
    elif sc == "backup_canceled":
        done, progress, status, warning = True, 45, 3, "Backup cancelled"
        task = _guid(p.name, "backup-canceled")
    elif sc == "backup_created":
        done, progress, status = False, 0, 0
        task = _guid(p.name, "backup-created")
    elif sc == "backup_running":
        done, progress, status = False, 36, 1
        task = _guid(p.name, "backup-running")
    elif sc == "backup_failed":
        progress, error = 27, "No space left on device"
        task = _guid(p.name, "backup-failed")
    elif p.storage_type in (4, 5):
        records = _history_records(p, dump)
        if records:
            newest = max(records, key=lambda r: r[2])
            prefix = "workspace" if dump else p.name
            link = (
                f"{base_url}/{p.name}/storage/backup/root/"
                f"{prefix}_{_fmt_file_stamp(newest[1])}.tar.gz?hash={task[:8]}"
            )
    obj: dict[str, Any] = {"isCompleted": done, "progress": progress, "error": error}
    if warning is not None:  # only when non-empty (section 6)
        obj["warning"] = warning
    obj.update({
        "link": link,
        "tenantId": 1,
        "backupProgressEnum": 0,
        "status": status,
        "taskId": task,
    })
    if sc == "wrong_types":
        obj["isCompleted"] = "yes"
        obj["progress"] = "abc"
    return obj


def _restore_obj(p: SimPortal) -> dict[str, Any] | None:
    sc = p.scenario
    if sc == "restore_running":
        done, progress, error, status = False, 42, "", 1
    elif sc == "restore_failed":
        done, progress, error, status = True, 75, "Unable to restore: the backup file is damaged", 2
    elif sc == "wrong_types":
        return {
            "isCompleted": "yes",
            "progress": "abc",
            "error": "",
            "tenantId": 1,
            "backupProgressEnum": 1,
            "status": "x",
            "taskId": _guid(p.name, "restore"),
        }
    else:
        return None
    return {
        "isCompleted": done,
        "progress": progress,
        "error": error,
        "tenantId": 1,
        "backupProgressEnum": 1,
        "status": status,
        "taskId": _guid(p.name, "restore"),
    }


def _history_list(p: SimPortal, dump: bool) -> list[dict[str, Any]]:
    prefix = "workspace" if dump else p.name
    storage = p.storage_type
    out = []
    for gid, started, created in _history_records(p, dump):
        out.append(
            {
                "id": gid,
                "fileName": f"{prefix}_{_fmt_file_stamp(started)}.tar.gz",
                "storageType": storage,
                "createdOn": _fmt_dt(created),
                "expiresOn": _fmt_dt(created + _DAY) if storage == 4 else _NEVER,
            }
        )
    if p.scenario == "wrong_types":
        for rec in out:
            rec["storageType"] = "zero"
            rec["createdOn"] = "not a date"
    return out


def _fragment(p: SimPortal, endpoint: str, dump: bool, base_url: str,
              now: float = 0.0) -> tuple[str | None, int]:
    """The `response` JSON text (None when absent) and `count`, cached per portal state."""
    if p.task_finished_at is not None and endpoint == "backup_progress":
        # Whether the task is still in the queue depends on the clock: not cached.
        task = _backup_obj(p, base_url, dump, now)
        return (None, 0) if task is None else (_compact(task), 1)
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
    obj: Any
    if endpoint == "schedule":
        obj = _schedule_obj(p, dump)
    elif endpoint == "backup_progress":
        obj = _backup_obj(p, base_url, dump, now)
    elif endpoint == "tariff":
        obj = _tariff_obj(p)
    elif endpoint == "restore_progress":
        obj = _restore_obj(p)
    else:
        obj = _history_list(p, dump)
    if obj is None:
        result: tuple[str | None, int] = (None, 0)
    else:
        result = (_compact(obj), len(obj) if isinstance(obj, list) else 1)
    if len(p._cache) > 64:
        p._cache.clear()
    p._cache[key] = result
    return result


def _envelope(
    fragment: str | None, count: int, href: str, method: str, status: int = 0, code: int = 200
) -> bytes:
    head = '{"count":0,' if fragment is None else f'{{"response":{fragment},"count":{count},'
    return (
        f'{head}"links":[{{"href":{_json_str(href)},"action":"{method}"}}],'
        f'"status":{status},"statusCode":{code}}}'
    ).encode()


class _Resp(NamedTuple):
    code: int
    body: bytes = b""
    ctype: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


_EMPTY_401 = _Resp(401)
_EMPTY_404 = _Resp(404)
_EMPTY_405 = _Resp(405)


# --- HTTP plumbing ---


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sim: Simulator, family: int) -> None:
        self.address_family = family
        self.sim = sim
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed on loopback.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.sim._on_connect(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.sim._on_disconnect(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)) or self.sim._stopping.is_set():
            return  # a client went away or we are stopping: nothing worth printing
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections and stuck writes end eventually
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return "nginx"

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def do_HEAD(self) -> None:
        self.server.sim._handle(self, "HEAD")

    def do_PATCH(self) -> None:
        self.server.sim._handle(self, "PATCH")

    # One write per response: headers and body together, so no Nagle/delayed-ACK stall.
    def head_bytes(self, resp: _Resp, length: int | None = None) -> bytes:
        n = len(resp.body) if length is None else length
        lines = [
            f"HTTP/1.1 {resp.code} {_REASONS.get(resp.code, 'Unknown')}\r\n"
            f"Server: nginx\r\nDate: {_http_date()}\r\n"
        ]
        if resp.ctype:
            lines.append(f"Content-Type: {resp.ctype}\r\n")
        lines.append(f"Content-Length: {n}\r\n")
        for k, v in resp.headers:
            lines.append(f"{k}: {v}\r\n")
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def send(self, resp: _Resp) -> None:
        body = b"" if self.command == "HEAD" else resp.body
        self.wfile.write(self.head_bytes(resp, len(resp.body)) + body)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
    return _date_cache[1]


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip().strip('"')
    return None


def _huge_chunks(stop: threading.Event) -> Iterator[bytes]:
    """A valid JSON envelope of exactly _HUGE_SIZE bytes, produced in 256 KiB pieces."""
    head = b'{"response":{"storageType":0,"storageParams":{"folderId":"'
    tail = (
        b'"},"cronParams":{"period":1,"hour":2,"day":1},"backupsStored":5,'
        b'"lastBackupTime":"2025-01-12T02:07:32","dump":false},"count":1,"links":[],'
        b'"status":0,"statusCode":200}'
    )
    filler = _HUGE_SIZE - len(head) - len(tail)
    chunk = b"a" * (256 * 1024)
    yield head
    while filler > 0 and not stop.is_set():
        piece = chunk if filler >= len(chunk) else chunk[:filler]
        filler -= len(piece)
        yield piece
    yield tail


# --- the simulator ---


class Simulator:
    """A DocSpace backup API on loopback serving many portals under /{portal}/api/2.0/..."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.latency = latency  # extra seconds before every answer, for all portals
        self._portals: dict[str, SimPortal] = {}
        self._tokens: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url = ""
        self._sockets: set[socket.socket] = set()
        # counters
        self._requests: Counter[tuple[str, str]] = Counter()
        self._connections = 0
        self._inflight: Counter[str] = Counter()
        self._max_inflight: Counter[str] = Counter()
        self._auth: dict[str, deque[str]] = {}
        self._leaked = 0
        self._leaked_with_auth = 0

    # -- portals --

    def add_portal(self, name: str, scenario: str = "healthy", **kw: Any) -> SimPortal:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        if not name or name.startswith("_") or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"bad portal name {name!r}")
        kw.setdefault("added_at", self.clock())
        portal = SimPortal(name=name, scenario=scenario, **kw)
        with self._lock:
            if name in self._portals:
                raise ValueError(f"portal {name!r} already exists")
            self._portals[name] = portal
            self._tokens[name] = {}
            self._auth[name] = deque(maxlen=_AUTH_LOG_LIMIT)
        return portal

    def set_scenario(self, name: str, scenario: str) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        self.portal(name).scenario = scenario

    def portal(self, name: str) -> SimPortal:
        return self._portals[name]

    @property
    def portals(self) -> tuple[SimPortal, ...]:
        return tuple(self._portals.values())

    def revoke_tokens(self, name: str) -> None:
        with self._lock:
            self._tokens[name].clear()

    # -- lifecycle --

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self.port), self, family)
        self.port = self._server.server_port
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in shown:
            shown = f"[{shown}]"
        self._base_url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"docspace-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None or self._stopping.is_set():
            return
        self._stopping.set()  # wakes every stalled request
        server.shutdown()
        server.server_close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("simulator not started")
        return self._base_url

    def portal_url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    # -- counters --

    def request_count(self, name: str | None = None, endpoint: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (p, e), n in self._requests.items()
                if (name is None or p == name) and (endpoint is None or e == endpoint)
            )

    @property
    def connections_opened(self) -> int:
        return self._connections

    def max_concurrency(self, name: str) -> int:
        with self._lock:
            return self._max_inflight[name]

    def auth_headers(self, name: str) -> list[str]:
        with self._lock:
            return list(self._auth.get(name, ()))

    @property
    def leaked_requests(self) -> int:
        return self._leaked

    @property
    def leaked_requests_with_auth(self) -> int:
        """How many of the leaked requests carried an Authorization header."""
        return self._leaked_with_auth

    def reset_counters(self) -> None:
        with self._lock:
            self._requests.clear()
            self._connections = 0
            self._max_inflight = Counter(self._inflight)
            for log in self._auth.values():
                log.clear()
            self._leaked = 0
            self._leaked_with_auth = 0

    def stats(self) -> dict[str, Any]:
        """The counters as JSON-ready data (also served at GET /_sim/stats); no secrets."""
        with self._lock:
            portals: dict[str, Any] = {}
            for name in self._portals:
                portals[name] = {
                    "requests": {e: self._requests[(name, e)] for e in ENDPOINTS},
                    "max_concurrency": self._max_inflight[name],
                    "in_flight": self._inflight[name],
                }
            return {
                "requests": sum(self._requests.values()),
                "connections_opened": self._connections,
                "leaked_requests": self._leaked,
                "leaked_requests_with_auth": self._leaked_with_auth,
                "portals": portals,
            }

    # -- server callbacks --

    def _on_connect(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._sockets.add(sock)

    def _on_disconnect(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _sleep(self, seconds: float) -> bool:
        """Wait; False if the simulator is stopping (the request must then be dropped)."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)

    def _handle(self, h: _Handler, method: str) -> None:
        # Drain any request body first, so a keep-alive connection stays in sync.
        body = b""
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            h.close_connection = True
            h.send(_Resp(411))
            return
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_REQUEST_BODY:
            h.close_connection = True
            h.send(_Resp(413 if length > 0 else 400))
            return
        if length:
            body = h.rfile.read(length)

        raw = h.path
        path, _, query = raw.partition("?")
        if path.startswith("/_sim/"):
            h.send(self._sim_path(h, path))
            return
        segs = path.split("/")
        if len(segs) > 2 and segs[-1] == "":
            segs.pop()  # one trailing slash is fine for ASP.NET routing
        portal = self._portals.get(segs[1]) if len(segs) > 1 else None
        endpoint: str | None = None
        if portal is not None and len(segs) >= 5 and segs[2].lower() == "api" and segs[3] == "2.0":
            if len(segs) == 6 and segs[4].lower() in ("backup", "portal"):
                endpoint = _ROUTES.get(segs[5].lower())
                if segs[4].lower() == "portal" and segs[5].lower() == "tariff":
                    endpoint = "tariff"
            elif len(segs) == 5 and segs[4].lower() == "authentication":
                endpoint = "login"
            elif len(segs) == 5 and segs[4].lower() == "settings":
                endpoint = "settings"
        if portal is None or endpoint is None:
            if self.latency > 0 and not self._sleep(self.latency):
                h.close_connection = True
                return
            h.send(_EMPTY_404)
            return
        allowed = "POST" if endpoint == "login" else "GET"
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            h.send(_EMPTY_405)
            return

        name = portal.name
        auth = h.headers.get("Authorization")
        with self._lock:
            self._requests[(name, endpoint)] += 1
            if auth is not None:
                self._auth[name].append(auth)
            self._inflight[name] += 1
            if self._inflight[name] > self._max_inflight[name]:
                self._max_inflight[name] = self._inflight[name]
        try:
            if not self._sleep(self.latency + portal.latency):
                h.close_connection = True
                return
            self._serve(h, portal, endpoint, method, query, body, raw)
        finally:
            with self._lock:
                self._inflight[name] -= 1

    def _take_rate_limit(self, p: SimPortal) -> bool:
        with self._lock:
            if p.rate_limit_first <= 0:
                return False
            p.rate_limit_first -= 1
            return True

    def _sim_path(self, h: _Handler, path: str) -> _Resp:
        if path == "/_sim/stats":
            return _Resp(200, _compact(self.stats()).encode(), _CT_JSON)
        if path == "/_sim/leak" or path.startswith("/_sim/leak/"):
            with self._lock:
                self._leaked += 1
                if h.headers.get("Authorization") is not None:
                    self._leaked_with_auth += 1
            return _Resp(200, b'{"leaked":true}', _CT_JSON)
        return _EMPTY_404

    def _serve(
        self,
        h: _Handler,
        p: SimPortal,
        endpoint: str,
        method: str,
        query: str,
        body: bytes,
        raw: str,
    ) -> None:
        sc = p.scenario
        # Faults that happen in front of the application (proxy, limiter, broken server).
        if sc == "down":
            h.send(_Resp(502, _NGINX_502, _CT_HTML))
            return
        if sc == "not_found":
            h.send(_Resp(404, _problem(404), _CT_PROBLEM))
            return
        if sc == "ip_restricted":
            # IpSecurityFilter answers every path, login included, with a plain text.
            h.send(_Resp(403, _IP_RESTRICTED_BODY, _CT_TEXT))
            return
        if sc == "rate_limited_bare":
            # A concurrency rejection (more than 50 GETs at once): no headers at all.
            h.send(_Resp(429))
            return
        if sc == "rate_limited" or self._take_rate_limit(p):
            # A sliding-window rejection: Retry-After in whole seconds (may be 0) and no
            # X-RateLimit-Reset (docspace-api.md section 16).
            h.send(
                _Resp(
                    429,
                    headers=(
                        ("Retry-After", str(p.retry_after)),
                        ("X-RateLimit-Limit", "1500"),
                        ("X-RateLimit-Remaining", "0"),
                    ),
                )
            )
            return
        if sc in ("slow", "hang"):
            if not self._sleep(p.slow_seconds) or sc == "hang":
                h.close_connection = True  # hang: give up without a byte of answer
                return
        if sc == "html":
            h.send(_Resp(200, _HTML_PAGE, "text/html; charset=utf-8"))
            return
        if sc == "redirect":
            where = f"http://localhost:{self.port}/_sim/leak"
            h.send(_Resp(302, headers=(("Location", where),)))
            return
        if sc == "huge":
            h.close_connection = True
            h.wfile.write(h.head_bytes(_Resp(200, ctype=_CT_JSON), _HUGE_SIZE))
            for piece in _huge_chunks(self._stopping):
                h.wfile.write(piece)
            return

        host = h.headers.get("Host") or f"{self.host}:{self.port}"
        href = f"http://{host}{raw}"
        resp = self._answer(h, p, endpoint, method, query, body, href)

        if sc == "truncated" and resp.body:
            h.send(resp._replace(body=resp.body[: len(resp.body) // 2]))
        elif sc == "drip" and resp.body:
            h.close_connection = True
            h.wfile.write(h.head_bytes(resp) + resp.body[:1])
            for i in range(1, len(resp.body)):
                if not self._sleep(1.0):
                    return
                h.wfile.write(resp.body[i : i + 1])
        else:
            h.send(resp)

    def _answer(
        self,
        h: _Handler,
        p: SimPortal,
        endpoint: str,
        method: str,
        query: str,
        body: bytes,
        href: str,
    ) -> _Resp:
        """The application's answer (authentication, filters, action), as DocSpace gives it."""
        sc = p.scenario
        if endpoint == "login":
            if sc == "restore_running":
                # TenantStatusFilter does not let `authentication` through while Restoring.
                return _Resp(403, _problem(403), _CT_PROBLEM)
            return self._login(p, body, href)
        if endpoint == "settings" and p.settings_status is not None:
            return _Resp(p.settings_status)
        if endpoint == "tariff" and p.tariff_status is not None:
            return _Resp(p.tariff_status)
        if endpoint == "settings":
            # [AllowAnonymous, AllowSuspended, AllowNotPayment]; readable during a restore.
            # The time zone is only filled for an authenticated caller.
            authed = sc != "auth_failure" and self._authorized(p, h)
            settings = _compact(_settings_obj(p, authed, self.clock()))
            return _Resp(200, _envelope(settings, 1, href, method), _CT_JSON)

        if endpoint != "restore_progress" and (sc == "auth_failure" or not self._authorized(p, h)):
            return _EMPTY_401
        if endpoint == "restore_progress" and sc == "restore_scope":
            # ApiKeyScopesFilter (v3.6.1+): a key whose scopes do not cover it; empty body.
            return _Resp(403)
        # Resource filters (TenantStatusFilter, PaymentFilter): bare status -> ProblemDetails.
        if sc == "restore_running" and endpoint != "restore_progress":
            return _Resp(403, _problem(403), _CT_PROBLEM)
        if sc == "unpaid" and endpoint in ("schedule", "history"):
            return _Resp(402, _problem(402), _CT_PROBLEM)
        if endpoint == "tariff":
            # [AllowNotPayment]; blocked like the rest while Restoring (its path is not in
            # TenantStatusFilter's pass-through list; inferred).
            return _Resp(200, _envelope(_compact(_tariff_obj(p)), 1, href, method), _CT_JSON)
        # Model binding of the Dump query flag (case-insensitive name and value).
        dump = False
        for k, v in parse_qsl(query, keep_blank_values=True):
            if k.lower() == "dump":
                if v.lower() not in ("true", "false"):
                    return self._bad_request(href, method, k, v)
                dump = v.lower() == "true"
                break
        if endpoint != "restore_progress":
            if dump and not p.dump_allowed:
                return _Resp(403, _DUMP_DENIED_BODY, _CT_JSON)
            if sc == "forbidden":
                return _Resp(403, _E10_BODY, _CT_JSON)
        fragment, count = _fragment(p, endpoint, dump, self._base_url, self.clock())
        return _Resp(200, _envelope(fragment, count, href, method), _CT_JSON)

    def _authorized(self, p: SimPortal, h: _Handler) -> bool:
        """§3: API key as Bearer sk-...; a token as header (bare or Bearer) or cookie."""
        auth = h.headers.get("Authorization")
        cookie = _cookie(h.headers.get("Cookie"), "asc_auth_key")
        token: str | None
        if auth is None:
            token = cookie
        else:
            value = auth.strip()
            # "Bearer " is matched case-sensitively by the policy selector and the API-key
            # handler (section 16): "bearer sk-..." falls through to the cookie handler.
            if value.startswith("Bearer "):
                value = value[7:].strip()
                if value.startswith("sk-"):
                    return hmac.compare_digest(value.encode(), p.api_key.encode())
                if value.startswith("eyJ") and value.count(".") == 2:
                    return False  # an OAuth JWT: not simulated
            elif value[:6].lower() == "basic ":
                return False  # Basic auth is not simulated
            token = cookie or value
        if not token:
            return False
        if p.token is not None and hmac.compare_digest(token.encode(), p.token.encode()):
            return True
        with self._lock:
            expires = self._tokens[p.name].get(token)
            if expires is None:
                return False
            if self.clock() > expires:
                del self._tokens[p.name][token]
                return False
        return True

    def _login(self, p: SimPortal, body: bytes, href: str) -> _Resp:
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return self._bad_request(href, "POST", "inDto", "")
        fields = {str(k).lower(): v for k, v in doc.items()}
        user, password = fields.get("username"), fields.get("password")
        ok = (
            p.scenario != "auth_failure"
            and p.username is not None
            and p.password is not None
            and isinstance(user, str)
            and isinstance(password, str)
            and user.lower() == p.username.lower()
            and hmac.compare_digest(password.encode(), p.password.encode())
        )
        if not ok:
            return _Resp(401, _LOGIN_FAILED_BODY, _CT_JSON)
        token = base64.b64encode(secrets.token_bytes(48)).decode()
        expires = self.clock() + p.token_lifetime
        with self._lock:
            self._tokens[p.name][token] = expires
        fragment = _compact(
            {"token": token, "expires": _fmt_expires(expires), "sms": False, "tfa": False}
        )
        cookie = (
            f"asc_auth_key={token}; expires="
            f"{time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(int(expires)))}; "
            f"path=/{p.name}; samesite=none; httponly"
        )
        return _Resp(200, _envelope(fragment, 1, href, "POST"), _CT_JSON, (("Set-Cookie", cookie),))

    @staticmethod
    def _bad_request(href: str, method: str, key: str, value: str) -> _Resp:
        problem = {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "One or more validation errors occurred.",
            "status": 400,
            "errors": {key: [f"The value '{value}' is not valid."]},
            "traceId": _trace_id(),
        }
        return _Resp(
            400, _envelope(_compact(problem), 1, href, method, status=1, code=400), _CT_JSON
        )


# --- demo, config, CLI ---


def add_demo_portals(sim: Simulator) -> list[SimPortal]:
    """Add DEMO_PORTALS; "healthy-login" gets DEMO_USERNAME/DEMO_PASSWORD for password login."""
    out = []
    for name, scenario in DEMO_PORTALS:
        kw: dict[str, Any] = {"timezone": DEMO_ZONES.get(name, "UTC")}
        if name == "healthy-login":
            kw.update(username=DEMO_USERNAME, password=DEMO_PASSWORD)
        out.append(sim.add_portal(name, scenario, **kw))
    return out


def render_config(
    sim: Simulator, portals: list[SimPortal] | None = None, *, history: bool = True
) -> str:
    """An exporter config (YAML text, hand-formatted) for the simulator's portals."""
    lines = ["# Generated by exporter.simulator; points at a simulated DocSpace.", "portals:"]
    for p in portals if portals is not None else sim.portals:
        lines.append(f"  - name: {_json_str(p.name)}")
        lines.append(f"    url: {_json_str(sim.portal_url(p.name))}")
        if p.username is not None and p.password is not None:
            lines.append(f"    username: {_json_str(p.username)}")
            lines.append(f"    password: {_json_str(p.password)}")
        elif p.token is not None:
            lines.append(f"    token: {_json_str(p.token)}")
        else:
            lines.append(f"    api_key: {_json_str(p.api_key)}")
        lines.append(f"    history: {'true' if history else 'false'}")
    return "\n".join(lines) + "\n"


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {value!r}") from None
    host = host.strip("[]") or "127.0.0.1"
    return host, number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="Serve a simulated ONLYOFFICE DocSpace backup API.",
    )
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 0),
        help="HOST:PORT to listen on (default 127.0.0.1:0, a free port)",
    )
    parser.add_argument("--portals", type=int, default=1, help="number of portals p0001.. to add")
    parser.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added before every answer"
    )
    parser.add_argument("--demo", action="store_true", help="serve the demo portals instead")
    parser.add_argument(
        "--write-config", metavar="PATH", help="write an exporter config for the portals to PATH"
    )
    parser.add_argument(
        "--no-history", action="store_true", help="write history: false into the config"
    )
    args = parser.parse_args(argv)

    host, port = args.listen
    sim = Simulator(host, port, latency=args.latency)
    if args.demo:
        add_demo_portals(sim)
    else:
        for i in range(1, args.portals + 1):
            sim.add_portal(f"p{i:04d}", args.scenario)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sim.start()
    try:
        if args.write_config:
            tmp = f"{args.write_config}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(render_config(sim, history=not args.no_history))
            os.replace(tmp, args.write_config)
        # The config is complete before this line, so a reader may use it at once.
        print(f"listening on {sim.base_url}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
