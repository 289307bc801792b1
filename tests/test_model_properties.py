"""Property-based tests (hypothesis): whatever JSON a portal sends, the parsers
give a valid result or ParseError, metrics.portal_families renders it, and the collector never
raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.client import FetchError, _retry_after
from exporter.collector import DocSpaceCollector, Scraper
from exporter.config import ApiKeyAuth, PortalConfig, Secret
from exporter.endpoints import BY_NAME
from exporter.model import (
    TASK_STATES,
    History,
    ParseError,
    PortalSettings,
    Schedule,
    Tariff,
    Task,
    decode_envelope,
    parse_datetime,
    parse_history,
    parse_login,
    parse_schedule,
    parse_task,
)
from exporter.results import PortalData

# Sized to keep this module near 20 s on a small CI machine; raise max_examples locally to
# search harder (hypothesis keeps failing examples in .hypothesis/ for the next run).
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(SETTINGS, max_examples=40)

# --- strategies --------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    # Strings that look like what the parsers special-case: digits, dates, enum names.
    | st.from_regex(r"-?\d{1,25}", fullmatch=True)
    | st.from_regex(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?",
                    fullmatch=True)
    | st.sampled_from(["0001-01-01T00:00:00", "EveryDay", "everyweek", "Failted", "Running",
                       "DataStore", "ThridpartyDocuments", "", " ", "NaN", "1e309", "٣"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)

SCHEDULE_KEYS = ["storageType", "storageParams", "cronParams", "backupsStored",
                 "lastBackupTime", "dump"]
CRON_KEYS = ["period", "hour", "day"]
TASK_KEYS = ["isCompleted", "progress", "error", "warning", "link", "tenantId",
             "backupProgressEnum", "status", "taskId"]
HISTORY_KEYS = ["id", "fileName", "storageType", "createdOn", "expiresOn"]
LOGIN_KEYS = ["token", "expires", "sms", "tfa"]


def shaped(keys: list[str], nested: dict[str, st.SearchStrategy[Any]] | None = None
           ) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the real field names (any subset) holding arbitrary JSON, so the
    parsers get past their first isinstance checks."""
    fields = {k: (nested or {}).get(k, json_values) for k in keys}
    return st.fixed_dictionaries({}, optional=fields)


cron = shaped(CRON_KEYS)
schedules = shaped(SCHEDULE_KEYS, {"cronParams": cron | json_values})
tasks = shaped(TASK_KEYS)
history_lists = st.lists(shaped(HISTORY_KEYS) | json_values, max_size=6)
logins = shaped(LOGIN_KEYS)


def envelope_bytes() -> st.SearchStrategy[bytes]:
    docs = st.fixed_dictionaries(
        {}, optional={"response": json_values | schedules | tasks | history_lists,
                      "count": json_values, "status": json_values,
                      "statusCode": json_values, "links": json_values})
    return (st.binary(max_size=200)
            | json_values.map(lambda v: json.dumps(v).encode())
            | docs.map(lambda v: json.dumps(v).encode()))


def only_parse_error(fn: Callable[[], Any]) -> Any:
    """Run a parser: a result, or ParseError; any other exception fails the property."""
    try:
        return fn()
    except ParseError:
        return None


# --- parsers -----------------------------------------------------------------------------------


@SETTINGS
@given(envelope_bytes())
@example(b"[" * 100_000)  # deeper than json recurses: RecursionError is not a ParseError
@example(b"\xff\xfe{")
@example(b'{"response":1,"status":true}')
def test_decode_envelope(body: bytes) -> None:
    result = only_parse_error(lambda: decode_envelope(body))
    if result is not None:
        present, response = result
        assert isinstance(present, bool)
        assert present or response is None


@SETTINGS
@given(st.booleans(), schedules | json_values)
@example(True, {"cronParams": {"period": "9" * 5000}})  # int() refuses > 4300 digits
@example(True, {"cronParams": {"period": 0, "hour": "9" * 5000}})
def test_parse_schedule(present: bool, response: Any) -> None:
    s = only_parse_error(lambda: parse_schedule(present, response))
    if s is None:
        return
    assert isinstance(s, Schedule)
    assert isinstance(s.period, str) and s.period
    assert isinstance(s.storage_type, str) and s.storage_type
    assert isinstance(s.hour, int) and isinstance(s.day, int)
    assert isinstance(s.backups_stored, int)
    assert isinstance(s.dump, bool)
    assert s.last_backup_time is None or math.isfinite(s.last_backup_time)
    assert s.expected_interval in (None, 86400.0, 604800.0, 2678400.0)


@SETTINGS
@given(st.booleans(), tasks | json_values)
@example(True, {"isCompleted": True, "progress": 1, "status": "9" * 5000})
def test_parse_task(present: bool, response: Any) -> None:
    t = only_parse_error(lambda: parse_task(present, response))
    if t is None:
        return
    assert isinstance(t, Task)
    assert 0 <= t.progress <= 100 and math.isfinite(t.progress)
    assert t.state in TASK_STATES
    assert isinstance(t.failed, bool)
    assert len(t.error_text) <= 200


@SETTINGS
@given(st.booleans(), history_lists | json_values)
def test_parse_history(present: bool, response: Any) -> None:
    h = only_parse_error(lambda: parse_history(present, response))
    if h is None:
        return
    assert isinstance(h, History)
    if not present:  # no `response`: no copies, whatever else was sent
        assert (h.backups, h.last_created) == (0, None)
        return
    # Every record is one copy; the newest parsable createdOn wins (the list has no order).
    assert h.backups == len(response)
    created = [t for t in (parse_datetime(rec.get("createdOn")) for rec in response)
               if t is not None]
    assert h.last_created == (max(created) if created else None)
    assert h.last_created is None or math.isfinite(h.last_created)


@SETTINGS
@given(st.booleans(), logins | json_values)
def test_parse_login(present: bool, response: Any) -> None:
    result = only_parse_error(lambda: parse_login(present, response))
    if result is None:
        return
    token, expires = result
    assert isinstance(token, str) and token
    assert expires is None or math.isfinite(expires)


@SETTINGS
@given(json_values)
@example("9999-12-31T23:59:59-23:59")
@example("0000-01-01T00:00:00")
@example("2025-02-30T00:00:00")
@example("2025-01-01T00:00:00+99:99")
def test_parse_datetime(value: Any) -> None:
    ts = only_parse_error(lambda: parse_datetime(value))
    assert ts is None or math.isfinite(ts)


@SETTINGS
@given(st.one_of(st.none(), st.text(max_size=40),
                 st.text(alphabet="0123456789²³¹٣ -", max_size=12)))
@example("\xb2")  # '²'.isdigit() is True, but float('²') fails
@example("9" * 5000)
def test_retry_after_header(value: str | None) -> None:
    """Retry-After comes from the portal: any latin-1 text gives None or seconds >= 0."""
    got = _retry_after(value, 1_700_000_000.0)
    assert got is None or got >= 0


# --- rendering ---------------------------------------------------------------------------------


def parsed(parser: Callable[[bool, Any], Any], present: bool, value: Any) -> Any:
    try:
        return parser(present, value)
    except ParseError:
        return None


REASONS = st.sampled_from(["timeout", "connection", "tls", "unauthorized", "forbidden",
                           "payment_required", "not_found", "rate_limited", "http_error",
                           "invalid_response"])


@st.composite
def portal_data(draw: st.DrawFn) -> PortalData:
    name = draw(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True))
    data = PortalData(name=name, url=draw(st.text(max_size=40)),
                      duration=draw(st.floats(min_value=0, max_value=1e6)))
    producers = {
        "schedule": (parse_schedule, schedules),
        "backup_progress": (parse_task, tasks),
        "restore_progress": (parse_task, tasks),
        "history": (parse_history, history_lists),
    }
    for endpoint, (parser, strategy) in producers.items():
        outcome = draw(st.sampled_from(["ok", "failed", "absent"]))
        if outcome == "ok":
            data.answer(endpoint, parsed(parser, draw(st.booleans()), draw(strategy)))
        elif outcome == "failed":
            data.fail(endpoint, draw(REASONS))
    return data


@HEAVY
@given(st.lists(portal_data(), max_size=3, unique_by=lambda p: p.name),
       st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=4e9))
def test_portal_families_never_raise_and_render(portals: list[PortalData], now: float) -> None:
    families = metrics.portal_families(portals, now)

    class Fixed:
        def collect(self) -> Any:
            return families

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fixed())
    text = generate_latest(reg).decode()
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    ups = {s.labels["portal"]: s.value for s in samples if s.name == "docspace_up"}
    assert ups == {p.name: (1.0 if p.up else 0.0) for p in portals}


# --- the collector -----------------------------------------------------------------------------


class FakeClient:
    """Stands in for DocSpaceClient: each endpoint runs the real parser on drawn JSON, or
    raises what was drawn (a FetchError, or a bug-like exception)."""

    plan: dict[str, Any] = {}

    def __init__(self, portal: PortalConfig, **kw: Any) -> None:
        self.portal = portal

    def close(self) -> None:
        pass

    def _answer(self, endpoint: str, parser: Callable[[bool, Any], Any]) -> Any:
        what = self.plan[self.portal.name][endpoint]
        if isinstance(what, BaseException):
            raise what
        present, value = what
        try:
            return parser(present, value)
        except ParseError as exc:  # as DocSpaceClient._parsed does
            raise FetchError("invalid_response", str(exc)) from None

    def schedule(self, deadline: float) -> Any:
        return self._answer("schedule", parse_schedule)

    def backup_progress(self, deadline: float) -> Any:
        return self._answer("backup_progress", parse_task)

    def restore_progress(self, deadline: float) -> Any:
        return self._answer("restore_progress", parse_task)

    def history(self, deadline: float) -> Any:
        return self._answer("history", parse_history)

    # The collector reads every endpoint of the table (settings and tariff hourly): without
    # these every fetch failed to start and every portal was down whatever its plan said.
    def settings(self, deadline: float) -> Any:
        return PortalSettings(timezone="UTC", version="3.7", tenant_status=0)

    def tariff(self, deadline: float) -> Any:
        return Tariff(state="paid", due=None)


def _answers_usably(what: Any, parser: Callable[[bool, Any], Any]) -> bool:
    if isinstance(what, BaseException):
        return False
    try:
        parser(*what)
    except ParseError:
        return False
    return True


ERRORS = st.one_of(
    REASONS.map(lambda r: FetchError(r, "drawn")),
    REASONS.map(lambda r: FetchError(r, "drawn", endpoint="login")),
    st.sampled_from([ValueError("bug"), KeyError("bug"), RuntimeError("bug"),
                     RecursionError("bug"), TypeError("bug")]),
)
ANSWERS = st.tuples(st.booleans(), json_values | schedules | tasks | history_lists) | ERRORS

@pytest.fixture(scope="module")
def scraper() -> Iterator[Scraper]:
    # One worker pool for all examples (a pool per example would cost threads, not coverage).
    # FakeClient answers like DocSpaceClient without being one (duck-typed stand-in).
    s = Scraper(max_workers=8, client_factory=FakeClient)  # type: ignore[arg-type]
    yield s
    s.close()


@HEAVY
@given(st.lists(st.fixed_dictionaries({e: ANSWERS for e in metrics.ENDPOINTS}),
                min_size=1, max_size=3))
def test_collector_never_raises(scraper: Scraper, plans: list[dict[str, Any]]) -> None:
    portals = [PortalConfig(name=f"p{i}", url=f"http://127.0.0.1:9/p{i}",
                            auth=ApiKeyAuth(Secret("sk-x")), history=True, timeout=5.0)
               for i in range(len(plans))]
    FakeClient.plan = {p.name: plan for p, plan in zip(portals, plans, strict=True)}
    collector = DocSpaceCollector(scraper, portals, scrape_timeout=5.0)
    families = list(collector.collect())
    ups = {s.labels["portal"]: s.value for f in families for s in f.samples
           if s.name == "docspace_up"}
    assert set(ups) == {p.name for p in portals}
    for p, plan in zip(portals, plans, strict=True):
        usable = all(_answers_usably(what, BY_NAME[e].parse) for e, what in plan.items())
        assert ups[p.name] == (1.0 if usable else 0.0), plan
    reg = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self) -> Any:
            return families

    reg.register(Fixed())
    list(text_string_to_metric_families(generate_latest(reg).decode()))
