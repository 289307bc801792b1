"""When DocSpace's backup scheduler next starts a scheduled backup: pure, no I/O, no clock.

Mirrors the server (docspace-api.md section 14, read from DocSpace-server v3.7.2
`BackupSchedulerService.cs`, `Schedule.cs`, `CronExpression.cs`, `BackupService.cs`):

- The cron text is `0 0 H ? * *` (daily), `0 0 H ? * D` (weekly), `0 0 H D * ?` (monthly),
  H = cronParams.hour, D = cronParams.day.
- `last` = lastBackupTime (UTC) converted to the portal's zone; `next = cron.GetTimeAfter(last)`
  is evaluated as plain wall-clock arithmetic (the cron object's own zone is UTC, so no zone
  rules apply inside it); the scheduler starts the backup on the first pass where
  `next <= now` with `now` also converted to the portal's zone.
- Weekly `day` is Quartz numbering, 1 = Sunday ... 7 = Saturday.
- A monthly `day` that a month lacks skips that month (Quartz never clamps).
- Never ran (lastBackupTime 0001-01-01): the reference is `UtcNow.Date` minus one second, i.e.
  23:59:59 of the previous UTC date, used as a wall-clock time WITHOUT conversion.

What this module adds is the mapping of that wall-clock `next` back to a real instant, the
"due time": the first instant at which the portal's local clock reads `next` or later, which is
the first instant `next <= now` holds. Consequences, all derived from that comparison (inferred:
no running server was observed doing this):

- A wall time that daylight saving skips (spring forward) is due at the transition itself,
  when the local clock jumps past it (NOT at the instant the pre-transition offset would give).
- A wall time that occurs twice (fall back) is due at its first occurrence (fold=0).
- Quartz's GetTimeAfter adds one second and drops milliseconds, so `next` is the first cron
  time strictly after `last` (inferred from Quartz, whose port DocSpace ships).

The scheduler's passes are 15 minutes apart and not aligned to the clock, so a backup really
starts between the due time and about 15 minutes (plus the pass's own duration) after it.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAILY",
    "MONTHLY",
    "WEEKLY",
    "due_instant",
    "expected_interval_seconds",
    "local_wall",
    "never_ran_reference",
    "next_cron_wall",
    "next_due",
    "zone",
]

DAILY, WEEKLY, MONTHLY = "daily", "weekly", "monthly"
_DAY = 86400

# The longest gap between two consecutive due times of a schedule, in wall-clock days (a DST
# change makes one real gap an hour shorter or longer; the contract keeps whole days).
# Monthly day 1-28 exists in every month: 31 days at most (Jan 5 -> Feb 5). Day 29 skips
# February of common years: Jan 29 -> Mar 29 = 59 days. Day 30 skips every February:
# Jan 30 -> Mar 30 = 60 days in a leap year. Day 31 skips the 30-day months: Aug 31 -> Oct 31
# = 61 days.
_MONTHLY_INTERVAL_DAYS = {29: 59, 30: 60, 31: 61}


def expected_interval_seconds(period: str, day: int) -> float | None:
    """The longest gap between two due times: 86400 daily, 604800 weekly, monthly 2678400
    (day 1-28), 5097600 (29), 5184000 (30), 5270400 (31). None for an unknown period/day."""
    if period == DAILY:
        return float(_DAY)
    if period == WEEKLY:
        return float(7 * _DAY)
    if period == MONTHLY and 1 <= day <= 31:
        return float(_MONTHLY_INTERVAL_DAYS.get(day, 31) * _DAY)
    return None


def zone(name: str) -> ZoneInfo | None:
    """An IANA zone by name, or None when the name is not one (or no tz database exists)."""
    if not name or name != name.strip() or "\x00" in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: a name like "../x" that is not a key; OSError: unreadable file.
        return None


def local_wall(instant: float, tz: ZoneInfo) -> datetime:
    """A Unix time as the portal's wall clock reads it (naive), like .NET's ConvertTimeFromUtc."""
    return datetime.fromtimestamp(instant, tz).replace(tzinfo=None)


def never_ran_reference(now: float) -> datetime:
    """`DateTime.UtcNow.Date.AddSeconds(-1)`: 23:59:59 of the previous UTC date, naive.

    The server does not convert it to the portal's zone; it is compared as wall-clock time
    (docspace-api.md section 14)."""
    today = datetime.fromtimestamp(now, timezone.utc).date()
    return datetime(today.year, today.month, today.day) - timedelta(seconds=1)


def _quartz_dow(d: date) -> int:
    """Quartz day of week: 1 = Sunday ... 7 = Saturday (Python: Monday = 0)."""
    return (d.weekday() + 1) % 7 + 1


def next_cron_wall(period: str, hour: int, day: int, after: datetime) -> datetime | None:
    """The first cron time strictly after `after` (naive wall clock), as Quartz computes it.

    None when the schedule is not one the server could hold (hour outside 0-23, weekly day
    outside 1-7, monthly day outside 1-31, unknown period) or the answer is past year 9999.
    """
    if not 0 <= hour <= 23:
        return None
    # GetTimeAfter: add one second, drop the fraction, then the first match at or after it.
    start = after.replace(microsecond=0) + timedelta(seconds=1)
    try:
        if period == DAILY:
            cand = datetime(start.year, start.month, start.day, hour)
            return cand if cand >= start else cand + timedelta(days=1)
        if period == WEEKLY:
            if not 1 <= day <= 7:
                return None
            d0 = start.date()
            for k in range(8):
                d = d0 + timedelta(days=k)
                if _quartz_dow(d) == day:
                    cand = datetime(d.year, d.month, d.day, hour)
                    if cand >= start:
                        return cand
            return None  # unreachable: two matching days lie within 8
        if period == MONTHLY:
            if not 1 <= day <= 31:
                return None
            y, m = start.year, start.month
            for _ in range(14):  # day 31 skips at most one month in a row; 14 is ample
                if day <= calendar.monthrange(y, m)[1]:
                    cand = datetime(y, m, day, hour)
                    if cand >= start:
                        return cand
                y, m = (y + 1, 1) if m == 12 else (y, m + 1)
            return None
    except (OverflowError, ValueError):  # beyond year 9999
        return None
    return None


def _exists(wall: datetime, tz: ZoneInfo, fold: int) -> bool:
    aware = wall.replace(tzinfo=tz, fold=fold)
    return local_wall(aware.timestamp(), tz) == wall


def due_instant(wall: datetime, tz: ZoneInfo) -> float:
    """The first Unix time at which the portal's clock reads `wall` or later.

    That is when `next <= now` (both wall clock) first holds. For a time that occurs twice,
    the first occurrence (fold=0); for a time that the clocks skip, the transition instant,
    when the local clock jumps past it.
    """
    first = wall.replace(tzinfo=tz, fold=0).timestamp()
    if _exists(wall, tz, 0):
        return first
    # In a gap: fold=0 maps with the offset before the transition (an instant after it),
    # fold=1 with the offset after (an instant before it); the jump lies between the two.
    other = wall.replace(tzinfo=tz, fold=1).timestamp()
    lo, hi = int(min(first, other)), int(max(first, other)) + 1
    # Invariant: local_wall(lo) < wall <= local_wall(hi). Offsets change at whole seconds.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if local_wall(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return float(hi)


def next_due(period: str, hour: int, day: int, last_backup: float | None, tz: ZoneInfo,
             now: float) -> float | None:
    """Unix time at which DocSpace's scheduler considers the schedule due.

    `last_backup` is lastBackupTime as Unix time (None: never ran); `now` is only used for the
    never-ran reference, whose date follows the UTC date of "now". In the past means the
    scheduler should have started the backup by now.
    """
    after = never_ran_reference(now) if last_backup is None else local_wall(last_backup, tz)
    wall = next_cron_wall(period, hour, day, after)
    if wall is None:
        return None
    try:
        return due_instant(wall, tz)
    except (OverflowError, ValueError, OSError):
        return None
