"""Pure parsers against the wire JSON of docspace-api.md §12 and its edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.model import (
    ParseError,
    decode_envelope,
    parse_datetime,
    parse_history,
    parse_login,
    parse_schedule,
    parse_task,
)

WIRE = Path(__file__).parent / "fixtures" / "wire"


def wire(name: str) -> tuple[bool, object]:
    return decode_envelope((WIRE / name).read_bytes())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-12T02:07:32", 1736647652.0),  # MySQL: no offset, UTC
        ("2025-01-12T02:07:32Z", 1736647652.0),  # PostgreSQL: Z
        ("2025-01-12T05:07:32+03:00", 1736647652.0),
        ("2025-01-12T02:07:32.5", 1736647652.5),
        ("2027-02-03T09:15:27.1234567Z", 1801646127.123456),  # 7 fraction digits
        ("0001-01-01T00:00:00", None),  # default(DateTime): never
        ("0001-01-01T00:00:00Z", None),
    ],
)
def test_parse_datetime(text: str, expected: float | None) -> None:
    assert parse_datetime(text) == expected


@pytest.mark.parametrize("bad", ["", "yesterday", "2025-13-01T00:00:00", "2025-01-12", 17, None])
def test_parse_datetime_rejects(bad: object) -> None:
    with pytest.raises(ParseError):
        parse_datetime(bad)


def test_schedule_weekly_e1() -> None:
    s = parse_schedule(*wire("E01_schedule_weekly.json"))
    assert s is not None
    assert (s.period, s.hour, s.day) == ("weekly", 2, 1)
    assert s.storage_type == "documents"
    assert s.backups_stored == 5
    assert s.last_backup_time == 1736647652.0
    assert s.expected_interval == 604800
    assert s.dump is False


def test_schedule_never_ran_e2() -> None:
    s = parse_schedule(*wire("E02_schedule_never_ran.json"))
    assert s is not None
    assert s.period == "daily" and s.storage_type == "data_store"
    assert s.last_backup_time is None
    assert s.expected_interval == 86400


def test_no_response_key_means_nothing_exists_e3() -> None:
    present, response = wire("E03_nothing.json")
    assert present is False
    assert parse_schedule(present, response) is None
    assert parse_task(present, response) is None
    assert parse_history(present, response).backups == 0


def test_backup_running_e4() -> None:
    t = parse_task(*wire("E04_backup_running.json"))
    assert t is not None
    assert t.progress == 36 and not t.is_completed
    assert t.state == "running" and not t.failed


def test_backup_completed_e5_and_warning_e6() -> None:
    t = parse_task(*wire("E05_backup_completed.json"))
    assert t is not None and t.state == "completed" and not t.failed and not t.has_warning
    w = parse_task(*wire("E06_backup_completed_warning.json"))
    assert w is not None and w.state == "completed" and w.has_warning and not w.failed


def test_failed_backup_is_status_completed_with_error_e7() -> None:
    t = parse_task(*wire("E07_backup_failed.json"))
    assert t is not None
    assert t.status == "completed"  # what the wire says ...
    assert t.failed and t.state == "failed"  # ... and what it means


def test_restore_running_e8() -> None:
    t = parse_task(*wire("E08_restore_running.json"))
    assert t is not None and t.state == "running" and t.progress == 42


def test_history_e9_unordered_newest_wins() -> None:
    h = parse_history(*wire("E09_history.json"))
    assert h.backups == 2
    assert h.last_created == parse_datetime("2025-01-13T10:44:10")


def test_empty_history_is_a_present_empty_list() -> None:
    body = b'{"response":[],"count":0,"links":[],"status":0,"statusCode":200}'
    h = parse_history(*decode_envelope(body))
    assert (h.backups, h.last_created) == (0, None)


def test_login_e13() -> None:
    token, expires = parse_login(*wire("E13_login.json"))
    assert token.startswith("Wk5hV0xy")
    assert expires == parse_datetime("2026-01-15T09:12:44.5176311Z")


def test_login_with_two_factor_has_no_token() -> None:
    body = {"response": {"sms": False, "tfa": True, "confirmUrl": "x"}, "count": 1,
            "status": 0, "statusCode": 200}
    with pytest.raises(ParseError, match="two-factor"):
        parse_login(*decode_envelope(json.dumps(body).encode()))


def _task(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"isCompleted": True, "progress": 100, "error": "",
                               "status": 2}
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("fields", "state", "failed"),
    [
        ({}, "completed", False),
        ({"status": 4, "error": ""}, "failed", True),  # Failted (sic), exception escaped DoJob
        ({"status": 3}, "canceled", False),
        ({"status": 0, "isCompleted": False, "progress": 0}, "created", False),
        # Between DoJob's catch and OnCompleted: Running but isCompleted.
        ({"status": 1}, "completed", False),
        ({"status": 1, "error": "disk full"}, "failed", True),
        # Servers before v3.7 have no status: derive from isCompleted.
        ({"status": None, "isCompleted": False, "progress": 10}, "running", False),
        ({"status": None}, "completed", False),
        # Names are tolerated, though the wire carries ints.
        ({"status": "Failted", "error": ""}, "failed", True),
        ({"status": "2", "error": "  "}, "completed", False),
    ],
)
def test_task_state_table(fields: dict[str, object], state: str, failed: bool) -> None:
    raw = _task(**fields)
    if raw.get("status") is None:
        raw.pop("status")
    t = parse_task(True, raw)
    assert t is not None
    assert (t.state, t.failed) == (state, failed)


@pytest.mark.parametrize(
    "raw",
    [
        _task(progress="abc"),
        _task(isCompleted="yes"),
        _task(progress=140),
        _task(error=5),
        "not an object",
        [],
    ],
)
def test_task_wrong_types_are_parse_errors(raw: object) -> None:
    with pytest.raises(ParseError):
        parse_task(True, raw)


def test_schedule_enum_names_are_accepted() -> None:
    raw = {"storageType": "DataStore", "cronParams": {"period": "EveryMonth", "hour": 4,
                                                      "day": 15},
           "lastBackupTime": "2025-01-01T04:00:00Z", "dump": True}
    s = parse_schedule(True, raw)
    assert s is not None
    assert (s.period, s.storage_type, s.dump, s.backups_stored) == ("monthly", "data_store",
                                                                    True, 0)


def test_schedule_unknown_numbers_become_unknown_n() -> None:
    raw = {"storageType": 9, "cronParams": {"period": 7, "hour": 1, "day": 0},
           "lastBackupTime": "0001-01-01T00:00:00"}
    s = parse_schedule(True, raw)
    assert s is not None
    assert (s.period, s.storage_type, s.expected_interval) == ("unknown_7", "unknown_9", None)


@pytest.mark.parametrize(
    "raw",
    [
        {"storageType": 0, "lastBackupTime": "2025-01-01T00:00:00"},  # no cronParams
        {"cronParams": {"period": "x"}},
        {"cronParams": {"period": 0}, "lastBackupTime": "not a date"},
        {"cronParams": {"period": 0}, "dump": "no"},
    ],
)
def test_schedule_wrong_shapes_are_parse_errors(raw: object) -> None:
    with pytest.raises(ParseError):
        parse_schedule(True, raw)


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>502 Bad Gateway</html>", b'{"response":', b"[]", b'{"foo":1}',
     b'{"response":{},"status":1,"statusCode":400}'],
)
def test_envelope_rejects_non_docspace_bodies(body: bytes) -> None:
    with pytest.raises(ParseError):
        decode_envelope(body)
