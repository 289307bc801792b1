"""exporter.schedule against a brute-force walk of the portal's local clock (and by example).

The reference shares no code with the module: it walks the wall clock hour by hour to find the
next cron time (cron times are whole hours, so no wall-clock minute between two whole hours can
match), then walks real time minute by minute until the portal's local clock reads that time or
later, which is when the server's `next <= now` (both local) first holds. Since 1972 every
zone's offset is a whole number of minutes, so that first minute is the exact due instant.
"""

from __future__ import annotations

import calendar
import functools
import time
import zoneinfo
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import schedule
from exporter.model import Schedule

UTC = timezone.utc
DST_ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney")
ODD_ZONES = (
    "UTC",
    "Asia/Kolkata",  # +05:30, no DST
    "Asia/Kathmandu",  # +05:45
    "America/St_Johns",  # -03:30 with DST
    "Australia/Lord_Howe",  # DST shift of 30 minutes
    "Pacific/Chatham",  # +12:45 / +13:45
    "Pacific/Apia",  # skipped 2011-12-30 entirely, DST until 2021
    "America/Santiago",  # DST transitions at midnight
    "Asia/Tehran",
    "Pacific/Kiritimati",  # +14
    "Pacific/Pago_Pago",  # -11
)
ALL_ZONES = sorted(
    z for z in zoneinfo.available_timezones() if not z.startswith(("posix", "right", "SystemV"))
)
PERIOD_DAYS = {"daily": (0, 0), "weekly": (1, 7), "monthly": (1, 31)}


# --- the reference ----------------------------------------------------------------------------


def ref_matches(period: str, day: int, d: date) -> bool:
    if period == "daily":
        return True
    if period == "weekly":
        return d.isoweekday() % 7 + 1 == day  # isoweekday: Monday 1 .. Sunday 7
    return d.day == day


def ref_next_wall(period: str, hour: int, day: int, after: datetime) -> datetime:
    """First whole wall-clock hour strictly after `after` that the cron matches."""
    t = after.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    for _ in range(24 * 70):
        if t.hour == hour and ref_matches(period, day, t.date()):
            return t
        t += timedelta(hours=1)
    raise AssertionError("no cron time within 70 days")


def ref_local(ts: int, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def ref_due(wall: datetime, tz: zoneinfo.ZoneInfo) -> int:
    """Walk real time minute by minute until the local clock reads `wall` or later."""
    # Offsets lie within -12h..+14h and a skipped stretch is at most a day (Apia 2011), so
    # the answer lies within [wall-as-UTC - 15h, wall-as-UTC + 37h].
    start = int(wall.replace(tzinfo=UTC).timestamp()) - 15 * 3600
    assert ref_local(start, tz) < wall
    t = start
    while t < start + 52 * 3600:
        if ref_local(t, tz) >= wall:
            return t
        t += 60
    raise AssertionError("the local clock never reached the wall time")


def ref_scheduler_due(period: str, hour: int, day: int, last: float | None,
                      tz: zoneinfo.ZoneInfo, now: float) -> int:
    if last is None:
        g = time.gmtime(now)
        after = datetime(g.tm_year, g.tm_mon, g.tm_mday) - timedelta(seconds=1)
    else:
        after = datetime.fromtimestamp(last, tz).replace(tzinfo=None)
    return ref_due(ref_next_wall(period, hour, day, after), tz)


# --- strategies -------------------------------------------------------------------------------


@functools.cache
def transitions(zone_name: str, year: int) -> tuple[int, ...]:
    """Unix times (to the hour) at which the zone's offset changes during `year`."""
    tz = zoneinfo.ZoneInfo(zone_name)
    out = []
    t = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    prev = datetime.fromtimestamp(t, tz).utcoffset()
    while t < end:
        t += 3600
        off = datetime.fromtimestamp(t, tz).utcoffset()
        if off != prev:
            out.append(t)
            prev = off
    return tuple(out)


@st.composite
def cron(draw: st.DrawFn) -> tuple[str, int, int]:
    period = draw(st.sampled_from(sorted(PERIOD_DAYS)))
    lo, hi = PERIOD_DAYS[period]
    day = draw(st.integers(lo, hi))
    if period == "monthly" and draw(st.booleans()):
        day = draw(st.integers(28, 31))  # the month-end days deserve more examples
    return period, draw(st.integers(0, 23)), day


# 2000-01-01 .. 2040-01-01
ANY_INSTANT = st.integers(946684800, 2208988800)


@st.composite
def near_dst(draw: st.DrawFn) -> tuple[str, int]:
    """A zone with DST and an instant within 8 days of one of its transitions."""
    zone_name = draw(st.sampled_from(DST_ZONES + ("Australia/Lord_Howe", "America/St_Johns",
                                                  "Pacific/Chatham", "America/Santiago")))
    year = draw(st.integers(2005, 2038))
    ts = transitions(zone_name, year)
    if not ts:
        return zone_name, draw(ANY_INSTANT)
    base = draw(st.sampled_from(ts))
    return zone_name, base + draw(st.integers(-8 * 86400, 8 * 86400))


@st.composite
def near_leap_day(draw: st.DrawFn) -> tuple[str, int]:
    zone_name = draw(st.sampled_from(DST_ZONES + ODD_ZONES))
    year = draw(st.sampled_from([2008, 2012, 2016, 2020, 2024, 2028, 2032, 2036]))
    base = int(datetime(year, 2, 29, 12, tzinfo=UTC).timestamp())
    return zone_name, base + draw(st.integers(-35 * 86400, 3 * 86400))


FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(zone_name: str, c: tuple[str, int, int], last: float | None, now: float) -> None:
    tz = zoneinfo.ZoneInfo(zone_name)
    period, hour, day = c
    got = schedule.next_due(period, hour, day, last, tz, now)
    want = ref_scheduler_due(period, hour, day, last, tz, now)
    assert got == want, (zone_name, c, last, now, got and datetime.fromtimestamp(got, UTC),
                         datetime.fromtimestamp(want, UTC))
    # The defining property: at the due instant the server's comparison holds, a second
    # before it does not.
    wall = schedule.next_cron_wall(period, hour, day, (
        schedule.never_ran_reference(now) if last is None else schedule.local_wall(last, tz)))
    assert wall is not None
    assert schedule.local_wall(got, tz) >= wall
    assert schedule.local_wall(got - 1, tz) < wall


@FAST
@given(near=near_dst(), c=cron(), frac=st.integers(0, 999999))
def test_due_matches_local_clock_walk_across_dst(near: tuple[str, int], c: tuple[str, int, int],
                                                 frac: int) -> None:
    zone_name, last = near
    check(zone_name, c, last + frac / 1e6, last + 3600)


@FAST
@given(near=near_leap_day(), c=cron())
def test_due_matches_local_clock_walk_around_29_february(near: tuple[str, int],
                                                         c: tuple[str, int, int]) -> None:
    zone_name, last = near
    check(zone_name, c, last, last + 60)


@settings(max_examples=60, deadline=None)
@given(c=cron(), offset=st.integers(-4 * 86400, 86400))
def test_due_matches_local_clock_walk_across_a_skipped_day(c: tuple[str, int, int],
                                                           offset: int) -> None:
    # Pacific/Apia skipped 2011-12-30 entirely: every hour of that day is inside the gap, so
    # the jump (not the pre-transition offset) is the only right due instant.
    check("Pacific/Apia", c, utc(2011, 12, 30, 10) + offset, utc(2011, 12, 30, 10) + offset)


@FAST
@given(zone_name=st.sampled_from(ALL_ZONES), c=cron(), last=ANY_INSTANT)
def test_due_matches_local_clock_walk_any_zone(zone_name: str, c: tuple[str, int, int],
                                               last: int) -> None:
    check(zone_name, c, last, last + 1)


@FAST
@given(zone_name=st.sampled_from(DST_ZONES + ODD_ZONES), c=cron(),
       now=st.one_of(ANY_INSTANT, near_dst().map(lambda n: n[1])))
def test_never_ran_matches_local_clock_walk(zone_name: str, c: tuple[str, int, int],
                                            now: int) -> None:
    check(zone_name, c, None, now)


# --- by example -------------------------------------------------------------------------------


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
SYDNEY = zoneinfo.ZoneInfo("Australia/Sydney")


@pytest.mark.parametrize(
    ("tz", "cron_", "last", "due"),
    [
        # hour is the portal's wall clock: daily 02:00 Berlin in winter is 01:00 UTC.
        (BERLIN, ("daily", 2, 0), utc(2026, 1, 10, 1, 7, 32), utc(2026, 1, 11, 1)),
        # Spring forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:00 does not exist; it is due
        # when the clock jumps, 01:00 UTC (fold=0 would have said the same by coincidence).
        (BERLIN, ("daily", 2, 0), utc(2026, 3, 28, 1, 5), utc(2026, 3, 29, 1)),
        # Fall back 2026-10-25 03:00 CEST -> 02:00 CET: 02:00 happens twice, first at 00:00 UTC.
        (BERLIN, ("daily", 2, 0), utc(2026, 10, 24, 0, 5), utc(2026, 10, 25, 0)),
        # New York spring forward 2026-03-08 02:00 EST -> 03:00 EDT, i.e. 07:00 UTC.
        (NEW_YORK, ("daily", 2, 0), utc(2026, 3, 7, 7, 3), utc(2026, 3, 8, 7)),
        # Sydney DST starts 2026-10-04 02:00 AEST -> 03:00 AEDT (16:00 UTC on Oct 3).
        (SYDNEY, ("weekly", 2, 1), utc(2026, 9, 26, 16, 10), utc(2026, 10, 3, 16)),
        # Sydney DST ends 2026-04-05 03:00 AEDT -> 02:00 AEST; 02:00 first occurs 15:00 UTC.
        (SYDNEY, ("weekly", 2, 1), utc(2026, 3, 28, 15, 10), utc(2026, 4, 4, 15)),
        # Weekly day 1 is Sunday (Quartz), not Monday: 2026-12-06 is a Sunday.
        (zoneinfo.ZoneInfo("UTC"), ("weekly", 3, 1), utc(2026, 12, 1), utc(2026, 12, 6, 3)),
        (zoneinfo.ZoneInfo("UTC"), ("weekly", 3, 7), utc(2026, 12, 1), utc(2026, 12, 5, 3)),
        # Monthly day 31 skips September: Aug 31 -> Oct 31.
        (BERLIN, ("monthly", 1, 31), utc(2026, 8, 30, 23, 5), utc(2026, 10, 31, 0)),
        # Day 29: February of a common year is skipped, of a leap year not.
        (BERLIN, ("monthly", 4, 29), utc(2027, 1, 29, 3, 5), utc(2027, 3, 29, 2)),
        (BERLIN, ("monthly", 4, 29), utc(2028, 1, 29, 3, 5), utc(2028, 2, 29, 3)),
        # Pacific/Apia skipped 2011-12-30 (Dec 29 24:00 -10:00 -> Dec 31 00:00 +14:00, i.e.
        # 10:00 UTC): a daily 10:00 that ran on Dec 29 is due when the clock jumps.
        (zoneinfo.ZoneInfo("Pacific/Apia"), ("daily", 10, 0), utc(2011, 12, 29, 20, 5),
         utc(2011, 12, 30, 10)),
    ],
)
def test_due_by_example(tz: zoneinfo.ZoneInfo, cron_: tuple[str, int, int], last: float,
                        due: float) -> None:
    got = schedule.next_due(*cron_, last, tz, last + 60)
    assert got is not None
    assert datetime.fromtimestamp(got, UTC) == datetime.fromtimestamp(due, UTC)


def test_gap_is_due_at_the_jump_not_at_the_pre_transition_offset() -> None:
    # Lord Howe springs forward 02:00 -> 02:30; a 02:00 schedule is due at the jump. Berlin's
    # gap is an hour, so a wall time inside it (the scheduler only has whole hours, but
    # due_instant takes any) shows the difference from fold=0.
    wall = datetime(2026, 3, 29, 2, 30)
    assert schedule.due_instant(wall, BERLIN) == utc(2026, 3, 29, 1)
    assert wall.replace(tzinfo=BERLIN, fold=0).timestamp() == utc(2026, 3, 29, 1, 30)
    lord_howe = zoneinfo.ZoneInfo("Australia/Lord_Howe")
    jump = utc(2026, 10, 3, 15, 30)  # 2026-10-04 02:00 +10:30 -> 02:30 +11:00
    assert schedule.local_wall(jump, lord_howe) == datetime(2026, 10, 4, 2, 30)
    assert schedule.next_due("daily", 2, 0, jump - 86400, lord_howe, jump) == jump


def test_never_ran_reference_is_not_converted_to_the_zone() -> None:
    # 2026-12-02 05:00 UTC is 16:00 in Sydney. The reference is 2026-12-01 23:59:59 read as
    # Sydney wall time, so a 02:00 schedule is due at 2026-12-02 02:00 Sydney = Dec 1 15:00
    # UTC: already past, the next pass starts it.
    now = utc(2026, 12, 2, 5)
    assert schedule.next_due("daily", 2, 0, None, SYDNEY, now) == utc(2026, 12, 1, 15)
    # Converted, the reference would have been Dec 2 10:59:59 Sydney and the due Dec 3.


def test_never_ran_west_of_utc_with_a_late_hour_never_becomes_due() -> None:
    # Inferred consequence of the unconverted reference: in New York (UTC-5), 22:00 local is
    # 03:00 UTC of the next UTC date, and the reference moves to that date before the local
    # clock gets there. The scheduler never starts it; the due time stays in the future.
    start = utc(2026, 12, 1)
    for k in range(0, 3 * 86400, 600):
        now = start + k
        due = schedule.next_due("daily", 22, 0, None, NEW_YORK, now)
        assert due is not None and due > now


@pytest.mark.parametrize(
    ("period", "day", "seconds"),
    [("daily", 0, 86400), ("weekly", 1, 604800), ("monthly", 1, 2678400),
     ("monthly", 28, 2678400), ("monthly", 29, 5097600), ("monthly", 30, 5184000),
     ("monthly", 31, 5270400), ("monthly", 0, None), ("monthly", 32, None),
     ("unknown_7", 1, None)],
)
def test_expected_interval(period: str, day: int, seconds: float | None) -> None:
    assert schedule.expected_interval_seconds(period, day) == seconds
    s = Schedule(period=period, hour=2, day=day, storage_type="documents", backups_stored=1,
                 last_backup_time=None, dump=False)
    assert s.expected_interval == seconds


@pytest.mark.parametrize("day", range(1, 32))
def test_expected_interval_is_the_longest_gap_over_eight_years(day: int) -> None:
    walls = []
    w = datetime(2024, 1, 1)
    while w.year < 2032:
        w = ref_next_wall("monthly", 0, day, w)
        walls.append(w)
    longest = max((b - a).total_seconds() for a, b in zip(walls, walls[1:], strict=False))
    assert schedule.expected_interval_seconds("monthly", day) == longest


@pytest.mark.parametrize(
    ("period", "hour", "day"),
    [("daily", 24, 0), ("daily", -1, 0), ("weekly", 2, 0), ("weekly", 2, 8),
     ("monthly", 2, 0), ("monthly", 2, 32), ("unknown_3", 2, 1)],
)
def test_impossible_schedules_have_no_due_time(period: str, hour: int, day: int) -> None:
    assert schedule.next_due(period, hour, day, utc(2026, 1, 1), BERLIN, utc(2026, 1, 2)) is None


def test_year_9999_has_no_due_time() -> None:
    last = datetime(9999, 12, 31, 5, tzinfo=UTC).timestamp()
    assert schedule.next_due("daily", 2, 0, last, zoneinfo.ZoneInfo("UTC"), last) is None


@pytest.mark.parametrize("name", ["", "Mars/Olympus", "../etc/passwd", " Europe/Berlin",
                                  "Europe/Berlin\x00"])
def test_zone_rejects_what_is_not_an_iana_zone(name: str) -> None:
    assert schedule.zone(name) is None


def test_zone_data_is_available() -> None:
    # The image and a fresh machine need a tz database (Debian's tzdata is Priority: required,
    # so even a minbase system has /usr/share/zoneinfo); without one every zone is unknown.
    for name in DST_ZONES:
        assert schedule.zone(name) is not None
    assert calendar.isleap(2028)
