"""Scenarios as data: what a portal's backup state looks like, one `Scenario` per name.

A portal's answers are computed from its `SimPortal` fields and its scenario's row in
`SCENARIOS`; nothing else in the package switches on a scenario's name. Faults that only tests
need (hung connections, 60 MB bodies, ...) are registered from tests/faults.py with
`register_scenario`, so this table stays what docs/docspace-api.md describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docspace_simulator.wire import (
    CT_HTML,
    CT_PROBLEM,
    CT_TEXT,
    DAY,
    IP_RESTRICTED_BODY,
    NGINX_502,
    Resp,
    default_api_key,
    problem,
)

if TYPE_CHECKING:
    from docspace_simulator.transport import Request

__all__ = ["SCENARIOS", "Restore", "Scenario", "SimPortal", "Task", "register_scenario"]


@dataclass(frozen=True)
class Task:
    """The backup task getbackupprogress shows (docspace-api.md section 6)."""

    done: bool = True
    progress: int = 100
    status: int = 2  # 0 Created, 1 Started, 2 Done (or Failed with error), 3 Canceled
    error: str = ""
    warning: str | None = None
    task_id: str = "backup-1"  # the guid's seed
    link: bool = True  # a download link for the newest copy (storage 4 and 5 only)


@dataclass(frozen=True)
class Restore:
    """The restore task getrestoreprogress shows."""

    done: bool
    progress: int
    status: int
    error: str = ""


# A hook in front of the application: answers (and returns True) or lets the request through.
Front = Callable[["Request"], bool]
# Writes the application's answer some other way than whole (truncated, dripped, ...).
Writer = Callable[["Request", Resp], None]
# Changes the parsed object of an endpoint (None when the endpoint has nothing) before encoding.
Mangle = Callable[["SimPortal", str, Any], Any]


@dataclass(frozen=True)
class Scenario:
    """One row of the table. The defaults are a healthy portal with a weekly schedule."""

    name: str
    doc: str
    daily: bool = False  # cronParams.period 0 instead of 1 (unless SimPortal.period is set)
    overdue: bool = False  # the daily slot passed ~2 h ago without a run
    last_backup_ago: float | None = DAY  # None: never ran
    schedule: bool = True  # False: getbackupschedule answers no object
    storage_type: int | None = None  # overrides SimPortal.storage_type in the schedule
    history: bool = True  # False: the history list is empty
    history_skip_newest: bool = False  # the last run failed: it left no copy
    history_shift: float = 0.0  # seconds the copies are older than lastBackupTime
    task: Task | None = Task()  # None: no task in the queue
    restore: Restore | None = None
    tariff_state: int = 1  # 1 Paid, 2 Delay, 3 NotPaid (unless SimPortal.tariff_state)
    tenant_status: int = 0  # 4 Restoring
    auth_fails: bool = False  # every credential is refused
    restoring: bool = False  # TenantStatusFilter: 403 on login and all but restore_progress
    unpaid: bool = False  # PaymentFilter: 402 on schedule and history
    not_admin: bool = False  # E10 on the backup endpoints
    restore_scope_denied: bool = False  # API key scopes do not cover getrestoreprogress
    edge: Front | None = None  # in front of the rate limiter (proxy, filters that answer all)
    front: Front | None = None  # after the rate limiter, before the application
    writer: Writer | None = None
    mangle: Mangle | None = None


SCENARIOS: dict[str, Scenario] = {}


def register_scenario(scenario: Scenario) -> Scenario:
    """Add a row to SCENARIOS (the tests add their faults this way); names are unique."""
    if scenario.name in SCENARIOS and SCENARIOS[scenario.name] != scenario:
        raise ValueError(f"scenario {scenario.name!r} already registered")
    SCENARIOS[scenario.name] = scenario
    return scenario


# --- front hooks of the scenarios docspace-api.md describes ---


def _answer(resp: Resp) -> Front:
    def hook(req: Request) -> bool:
        req.send(resp)
        return True

    return hook


def _down(req: Request) -> bool:
    req.send(Resp(502, NGINX_502, CT_HTML))
    return True


def _not_found(req: Request) -> bool:
    req.send(Resp(404, problem(404), CT_PROBLEM))  # a fresh traceId each time
    return True


def _rate_limited(req: Request) -> bool:
    req.send_rate_limited()
    return True


def _slow(req: Request) -> bool:
    if not req.sleep(req.portal.slow_seconds):
        req.close()
        return True
    return False


for _row in (
    Scenario("healthy", "weekly schedule, last backup a day ago; nothing running"),
    Scenario("stale", "daily schedule, last backup 3 days ago", daily=True,
             last_backup_ago=3 * DAY),
    Scenario("never_ran", "daily schedule to the temporary storage, never ran", daily=True,
             last_backup_ago=None, storage_type=4, history=False, task=None),
    Scenario("no_schedule", "no backup schedule", schedule=False, history=False, task=None),
    Scenario("backup_running", "a backup is running",
             task=Task(done=False, progress=36, status=1, task_id="backup-running", link=False)),
    Scenario("backup_failed", "the last backup failed an hour ago", last_backup_ago=3600.0,
             history_skip_newest=True,
             task=Task(progress=27, error="No space left on device", task_id="backup-failed",
                       link=False)),
    Scenario("restore_running", "a restore is running: the portal is Restoring",
             restore=Restore(False, 42, 1), tenant_status=4, restoring=True),
    Scenario("restore_failed", "the last restore failed",
             restore=Restore(True, 75, 2, "Unable to restore: the backup file is damaged")),
    Scenario("auth_failure", "every credential is refused", auth_fails=True),
    Scenario("slow", "every answer takes SimPortal.slow_seconds", front=_slow),
    Scenario("down", "nginx answers 502", edge=_down),
    Scenario("unpaid", "tariff NotPaid: 402 on schedule and history", tariff_state=3,
             unpaid=True),
    Scenario("forbidden", "the caller is no portal admin (E10)", not_admin=True),
    Scenario("rate_limited", "429 with Retry-After on every request", edge=_rate_limited),
    Scenario("not_found", "deleted or suspended: 404 to everything", edge=_not_found),
    Scenario("overdue", "daily slot ~2 h ago passed without a run", daily=True, overdue=True),
    Scenario("tariff_delay", "tariff Delay: scheduled backups are skipped silently",
             daily=True, overdue=True, tariff_state=2),
    Scenario("backup_warning", "completed with 'Some files were not included' (E6)",
             task=Task(warning="Some files were not included in the backup. For more details, "
                       "please check storage/missing_info", link=False)),
    Scenario("backup_canceled", "task Canceled (status 3)",
             task=Task(progress=45, status=3, warning="Backup cancelled",
                       task_id="backup-canceled", link=False)),
    Scenario("backup_created", "task Created (status 0), queued, not started",
             task=Task(done=False, progress=0, status=0, task_id="backup-created", link=False)),
    Scenario("backup_failed_expired", "failed > 24 h ago: the task left the queue",
             last_backup_ago=2 * DAY, history_shift=DAY, task=None),
    Scenario("schedule_deleted", "the server deleted the schedule; old copies remain",
             schedule=False),
    Scenario("ip_restricted", "IpSecurityFilter: 403 plain text on every path",
             edge=_answer(Resp(403, IP_RESTRICTED_BODY, CT_TEXT))),
    Scenario("restore_scope", "API key scopes do not cover getrestoreprogress",
             restore_scope_denied=True),
    Scenario("rate_limited_bare", "concurrency limiter: 429 with no headers",
             edge=_answer(Resp(429))),
):
    register_scenario(_row)


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
    tariff_state: int | None = None  # None: the scenario's
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
            self.api_key = default_api_key(self.name)

    def __repr__(self) -> str:  # never show secrets
        return f"SimPortal(name={self.name!r}, scenario={self.scenario!r})"

    @property
    def sc(self) -> Scenario:
        return SCENARIOS[self.scenario]
