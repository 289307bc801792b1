"""The DocSpace simulator against docspace-api.md, over real HTTP on loopback (no exporter code)."""

from __future__ import annotations

import ast
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from docspace_simulator import (
    DEMO_PASSWORD,
    DEMO_PORTALS,
    DEMO_USERNAME,
    SCENARIOS,
    Scenario,
    Simulator,
    add_demo_portals,
    register_scenario,
    render_config,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = 1736647652.0  # 2025-01-12T02:07:32Z, the fixed clock of the shared simulator
DAY = 86400
ENVELOPE_KEYS = ["response", "count", "links", "status", "statusCode"]
PROGRESS_KEYS = "isCompleted progress error link tenantId backupProgressEnum status taskId".split()
HISTORY_KEYS = ["id", "fileName", "storageType", "createdOn", "expiresOn"]
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
EXPIRES_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?Z$")
LOGIN_FAILED = {
    "error": {"message": "User authentication failed", "type": None, "stack": None, "hresult": 0},
    "status": 1,
    "statusCode": 401,
}

Reply = tuple[int, Message, bytes]


def fmt(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts)))


def parse_ts(text: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))


def call(
    sim: Simulator,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def bearer(sim: Simulator, portal: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.portal(portal).api_key}"}


def api(
    sim: Simulator,
    portal: str,
    endpoint: str,
    query: str = "",
    *,
    auth: bool = True,
    headers: dict[str, str] | None = None,
) -> Reply:
    h = bearer(sim, portal) if auth else {}
    h.update(headers or {})
    return call(sim, "GET", f"/{portal}/api/2.0/backup/{endpoint}{query}", h)


def ok_json(reply: Reply) -> dict[str, Any]:
    status, headers, body = reply
    assert status == 200, (status, body[:200])
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


def login(sim: Simulator, portal: str, user: str, password: str) -> Reply:
    body = json.dumps({"userName": user, "password": password}).encode()
    return call(
        sim,
        "POST",
        f"/{portal}/api/2.0/authentication",
        {"Content-Type": "application/json"},
        body,
    )


@pytest.fixture(scope="module")
def sim() -> Any:
    s = Simulator(clock=lambda: T0)
    for scenario in SCENARIOS:
        if scenario != "hang":
            s.add_portal(scenario, scenario, slow_seconds=0.2)
    s.add_portal("login", username="Admin@Example.com", password="s3cret", token_lifetime=600)
    s.add_portal("static", token="static-token-123")
    s.add_portal("nodump", dump_allowed=False)
    s.add_portal("datastore", storage_type=4)
    with s:
        yield s


# --- constants and construction ---


def _answers(sim: Simulator, portal: str) -> list[tuple[int, bytes]]:
    """Status and body (portal name and trace ids masked) of every endpoint of a portal."""
    out = []
    for endpoint in ("getbackupschedule", "getbackupprogress", "getrestoreprogress",
                     "getbackuphistory"):
        status, _, body = api(sim, portal, endpoint)
        out.append((status, body))
    for path in ("settings", "portal/tariff"):
        status, _, body = call(sim, "GET", f"/{portal}/api/2.0/{path}", bearer(sim, portal))
        out.append((status, body))
    status, _, body = login(sim, portal, "nobody@example.com", "wrong")
    out.append((status, body))
    return [(st, re.sub(rb'"traceId":"[^"]*"', b"", b.replace(portal.encode(), b"P")))
            for st, b in out]


# Faults whose answers take seconds (dripped, 60 MB, never): tests/test_client_hostile_portals.py.
_SLOW_FAULTS = {"hang", "drip", "huge"}


def test_every_scenario_answers_differently_from_healthy(sim: Simulator) -> None:
    """Each row of the table (package and test faults alike) changes some answer: a row whose
    fields fail to reach the wire would look exactly like "healthy"."""
    assert {"healthy", "hang", "drip", "huge", "redirect"} <= set(SCENARIOS)  # faults loaded
    healthy = _answers(sim, "healthy")
    same = [name for name in SCENARIOS if name not in _SLOW_FAULTS | {"healthy", "slow"}
            and _answers(sim, name) == healthy]
    assert same == []


def test_scenario_table_rows() -> None:
    for name, row in SCENARIOS.items():
        assert isinstance(row, Scenario) and row.name == name and row.doc
    with pytest.raises(ValueError, match="already registered"):
        register_scenario(Scenario("healthy", "another healthy"))
    assert dict(DEMO_PORTALS)["never-ran"] == "never_ran"
    assert all(scenario in SCENARIOS for _, scenario in DEMO_PORTALS)


def test_package_table_is_the_documented_one() -> None:
    """docspace_simulator's own rows (without tests/faults.py) are the ones `--help` lists, each
    with its description; the test-only faults are not in the package."""
    code = ("import docspace_simulator as d, json; "
            "print(json.dumps({n: s.doc for n, s in d.SCENARIOS.items()}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT / "docs")
    assert r.returncode == 0, r.stderr
    own = json.loads(r.stdout)
    assert set(own) & _FAULTS == set()
    assert set(own) == set(SCENARIOS) - _FAULTS
    helped = subprocess.run([sys.executable, "-m", "docspace_simulator", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT / "docs")
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert [n for n, doc in own.items() if f"{n} {' '.join(doc.split())}" not in text] == []
    assert [n for n in _FAULTS if f" {n} " in text] == []


_FAULTS = {"hang", "drip", "huge", "truncated", "wrong_types", "html", "redirect"}


def test_add_portal_validates_and_derives_api_key() -> None:
    s = Simulator()
    with pytest.raises(ValueError):
        s.add_portal("x", "no_such_scenario")
    p = s.add_portal("alpha")
    assert re.fullmatch(r"sk-[0-9a-f]{64}", p.api_key)
    assert Simulator().add_portal("alpha").api_key == p.api_key  # deterministic
    assert s.add_portal("beta").api_key != p.api_key
    with pytest.raises(ValueError):
        s.add_portal("alpha")
    with pytest.raises(ValueError):
        s.set_scenario("alpha", "bogus")
    s.set_scenario("alpha", "stale")
    assert s.portal("alpha").scenario == "stale"
    with pytest.raises(KeyError):
        s.portal("nope")
    assert p.api_key not in repr(p)


def test_simulator_imports_only_the_standard_library() -> None:
    modules: set[str] = set()
    for path in sorted((ROOT / "docspace_simulator").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, "no relative imports"
                modules.add((node.module or "").split(".")[0])
    assert modules, "parsed no imports"
    # Only the standard library and the package itself.
    assert not modules - set(sys.stdlib_module_names) - {"__future__", "docspace_simulator"}


# --- success bodies (§2.1, §12) ---


def test_healthy_schedule_is_byte_exact(sim: Simulator) -> None:
    status, headers, body = api(sim, "healthy", "getbackupschedule")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    href = f"http://127.0.0.1:{sim.port}/healthy/api/2.0/backup/getbackupschedule"
    assert body.decode() == (
        '{"response":{"storageType":0,"storageParams":{"folderId":"7"},'
        '"cronParams":{"period":1,"hour":2,"day":1},"backupsStored":5,'
        '"lastBackupTime":"2025-01-11T02:07:32","dump":false},"count":1,'
        f'"links":[{{"href":"{href}","action":"GET"}}],"status":0,"statusCode":200}}'
    )


def test_links_href_is_the_full_request_url(sim: Simulator) -> None:
    doc = ok_json(api(sim, "healthy", "getbackupprogress", "?dump=false&x=1"))
    url = (
        f"http://127.0.0.1:{sim.port}/healthy/api/2.0/backup/getbackupprogress?dump=false\\u0026x=1"
    )
    raw = api(sim, "healthy", "getbackupprogress", "?dump=false&x=1")[2].decode()
    assert url in raw  # System.Text.Json escapes '&'
    assert doc["links"] == [{"href": url.replace("\\u0026", "&"), "action": "GET"}]


def test_healthy_backup_progress_restore_and_history(sim: Simulator) -> None:
    prog = ok_json(api(sim, "healthy", "getbackupprogress"))
    assert list(prog) == ENVELOPE_KEYS
    assert list(prog["response"]) == PROGRESS_KEYS  # no "warning" when empty
    r = prog["response"]
    assert (r["isCompleted"], r["progress"], r["error"], r["status"]) == (True, 100, "", 2)
    assert r["backupProgressEnum"] == 0 and r["link"] == ""
    assert (prog["count"], prog["status"], prog["statusCode"]) == (1, 0, 200)

    restore = ok_json(api(sim, "healthy", "getrestoreprogress"))
    assert list(restore) == ["count", "links", "status", "statusCode"]
    assert restore["count"] == 0

    hist = ok_json(api(sim, "healthy", "getbackuphistory"))
    assert list(hist) == ENVELOPE_KEYS
    records = hist["response"]
    assert hist["count"] == len(records) == 3
    for rec in records:
        assert list(rec) == HISTORY_KEYS
        assert DATE_RE.match(rec["createdOn"]) and rec["expiresOn"] == "0001-01-01T00:00:00"
        assert re.fullmatch(r"healthy_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.tar\.gz", rec["fileName"])
    created = [rec["createdOn"] for rec in records]
    assert created != sorted(created, reverse=True)  # unordered, like the server
    newest = max(records, key=lambda rec: rec["createdOn"])
    age = T0 - parse_ts(newest["createdOn"])
    assert DAY - 3600 < age < DAY  # about a day ago, a few minutes after lastBackupTime
    assert newest["id"] == r["taskId"]


def test_stale(sim: Simulator) -> None:
    sched = ok_json(api(sim, "stale", "getbackupschedule"))["response"]
    assert sched["cronParams"] == {"period": 0, "hour": 2, "day": 0}
    assert sched["lastBackupTime"] == fmt(T0 - 3 * DAY)
    prog = ok_json(api(sim, "stale", "getbackupprogress"))["response"]
    assert prog["isCompleted"] is True and prog["error"] == ""
    hist = ok_json(api(sim, "stale", "getbackuphistory"))["response"]
    newest = max(parse_ts(rec["createdOn"]) for rec in hist)
    assert 3 * DAY - 3600 < T0 - newest < 3 * DAY


def test_never_ran(sim: Simulator) -> None:
    sched = ok_json(api(sim, "never_ran", "getbackupschedule"))["response"]
    assert sched["storageType"] == 4
    assert sched["storageParams"] == {"folderId": None}
    assert sched["cronParams"]["period"] == 0 and sched["cronParams"]["day"] == 0
    assert sched["lastBackupTime"] == "0001-01-01T00:00:00"
    assert "response" not in ok_json(api(sim, "never_ran", "getbackupprogress"))
    hist = ok_json(api(sim, "never_ran", "getbackuphistory"))
    assert hist["response"] == [] and hist["count"] == 0  # key present, list empty


def test_no_schedule(sim: Simulator) -> None:
    doc = ok_json(api(sim, "no_schedule", "getbackupschedule"))
    assert "response" not in doc and doc["count"] == 0 and doc["statusCode"] == 200
    assert "response" not in ok_json(api(sim, "no_schedule", "getbackupprogress"))


def test_backup_running(sim: Simulator) -> None:
    r = ok_json(api(sim, "backup_running", "getbackupprogress"))["response"]
    assert (r["isCompleted"], r["progress"], r["status"], r["error"]) == (False, 36, 1, "")
    assert (
        ok_json(api(sim, "backup_running", "getbackupschedule"))["response"]["cronParams"]["period"]
        == 1
    )


def test_backup_failed(sim: Simulator) -> None:
    r = ok_json(api(sim, "backup_failed", "getbackupprogress"))["response"]
    assert list(r) == PROGRESS_KEYS
    assert (r["isCompleted"], r["progress"], r["status"]) == (True, 27, 2)
    assert r["error"] == "No space left on device"
    sched = ok_json(api(sim, "backup_failed", "getbackupschedule"))["response"]
    assert sched["lastBackupTime"] == fmt(T0 - 3600)


def test_restore_running(sim: Simulator) -> None:
    for ep in ("getbackupschedule", "getbackupprogress", "getbackuphistory"):
        status, headers, body = api(sim, "restore_running", ep)
        assert status == 403
        assert headers["Content-Type"].startswith("application/problem+json")
        doc = json.loads(body)
        assert doc["status"] == 403 and doc["title"] == "Forbidden"
        assert doc["traceId"].startswith("00-")
    # anonymous and with bad credentials alike
    for auth in (False, True):
        doc = ok_json(api(sim, "restore_running", "getrestoreprogress", auth=auth))
        r = doc["response"]
        assert "link" not in r
        assert (r["isCompleted"], r["progress"], r["status"], r["backupProgressEnum"]) == (
            False,
            42,
            1,
            1,
        )
    bad = api(
        sim, "restore_running", "getrestoreprogress", auth=False, headers={"Authorization": "x"}
    )
    assert ok_json(bad)["response"]["progress"] == 42


def test_restore_failed(sim: Simulator) -> None:
    r = ok_json(api(sim, "restore_failed", "getrestoreprogress"))["response"]
    assert r["isCompleted"] is True and r["error"] and r["status"] == 2
    assert "link" not in r and r["backupProgressEnum"] == 1
    assert ok_json(api(sim, "restore_failed", "getbackupprogress"))["response"]["error"] == ""


def test_datastore_backup_has_link_and_expiring_history(sim: Simulator) -> None:
    r = ok_json(api(sim, "datastore", "getbackupprogress"))["response"]
    assert r["link"].startswith(f"http://127.0.0.1:{sim.port}/datastore/")
    assert ".tar.gz?" in r["link"]
    for rec in ok_json(api(sim, "datastore", "getbackuphistory"))["response"]:
        assert parse_ts(rec["expiresOn"]) - parse_ts(rec["createdOn"]) == DAY


def test_portal_fields_change_the_answers_at_run_time() -> None:
    with Simulator(clock=lambda: T0) as s:
        p = s.add_portal("p")
        assert ok_json(api(s, "p", "getbackupschedule"))["response"]["backupsStored"] == 5
        p.backups_stored = 0
        p.period, p.day, p.hour = 2, 15, 23
        p.last_backup_time = T0 - 7200
        sched = ok_json(api(s, "p", "getbackupschedule"))["response"]
        assert "backupsStored" not in sched  # omitted when 0
        assert sched["cronParams"] == {"period": 2, "hour": 23, "day": 15}
        assert sched["lastBackupTime"] == fmt(T0 - 7200)
        s.set_scenario("p", "no_schedule")
        assert "response" not in ok_json(api(s, "p", "getbackupschedule"))
        s.set_scenario("p", "backup_running")
        assert ok_json(api(s, "p", "getbackupprogress"))["response"]["isCompleted"] is False


# --- failures (§2.2, §2.3) ---


def test_auth_failure_scenario(sim: Simulator) -> None:
    for ep in ("getbackupschedule", "getbackupprogress", "getbackuphistory"):
        status, _, body = api(sim, "auth_failure", ep)
        assert (status, body) == (401, b"")
    assert ok_json(api(sim, "auth_failure", "getrestoreprogress", auth=False))["count"] == 0
    sim.portal("auth_failure").username = "u"
    sim.portal("auth_failure").password = "p"
    try:
        status, headers, body = login(sim, "auth_failure", "u", "p")
    finally:
        sim.portal("auth_failure").username = sim.portal("auth_failure").password = None
    assert status == 401 and json.loads(body) == LOGIN_FAILED


def test_down_is_nginx_html(sim: Simulator) -> None:
    for reply in (api(sim, "down", "getbackupschedule"), login(sim, "down", "a", "b")):
        status, headers, body = reply
        assert status == 502
        assert headers["Content-Type"].startswith("text/html")
        assert b"502 Bad Gateway" in body and b"nginx" in body


def test_unpaid(sim: Simulator) -> None:
    for ep in ("getbackupschedule", "getbackuphistory"):
        status, headers, body = api(sim, "unpaid", ep)
        assert status == 402
        assert headers["Content-Type"].startswith("application/problem+json")
        doc = json.loads(body)
        assert list(doc) == ["status", "traceId"] and doc["status"] == 402
    assert ok_json(api(sim, "unpaid", "getbackupprogress"))["response"]["isCompleted"] is True
    assert ok_json(api(sim, "unpaid", "getrestoreprogress"))["count"] == 0


def test_forbidden_is_e10_envelope(sim: Simulator) -> None:
    for ep in ("getbackupschedule", "getbackupprogress", "getbackuphistory"):
        status, headers, body = api(sim, "forbidden", ep)
        assert status == 403
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        doc = json.loads(body)
        assert list(doc) == ["error", "status", "statusCode"]
        assert list(doc["error"]) == ["message", "type", "stack", "hresult"]
        assert doc["error"]["message"] == "Access denied"
        assert doc["error"]["type"] == "ASC.Common.Security.Authorizing.AuthorizingException"
        assert (doc["status"], doc["statusCode"]) == (1, 403)
    assert ok_json(api(sim, "forbidden", "getrestoreprogress"))["count"] == 0


def test_rate_limited(sim: Simulator) -> None:
    sim.portal("rate_limited").retry_after = 7
    status, headers, body = api(sim, "rate_limited", "getbackupschedule")
    assert (status, body) == (429, b"")
    assert headers["Retry-After"] == "7"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Limit"]) > 0
    assert "X-RateLimit-Reset" not in headers  # sliding-window rejections carry none


def test_wrong_types(sim: Simulator) -> None:
    sched = ok_json(api(sim, "wrong_types", "getbackupschedule"))["response"]
    assert sched["cronParams"]["period"] == "x"
    assert sched["lastBackupTime"] == "not a date"
    prog = ok_json(api(sim, "wrong_types", "getbackupprogress"))["response"]
    assert prog["progress"] == "abc" and prog["isCompleted"] == "yes"


def test_html_truncated_and_slow(sim: Simulator) -> None:
    status, headers, body = api(sim, "html", "getbackupschedule")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body.lstrip().startswith(b"<")

    status, headers, body = api(sim, "truncated", "getbackupschedule")
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    assert body.startswith(b'{"response":')
    with pytest.raises(ValueError):
        json.loads(body)

    start = time.monotonic()
    doc = ok_json(api(sim, "slow", "getbackupschedule"))  # slow_seconds=0.2, then healthy
    assert time.monotonic() - start >= 0.15
    assert doc["response"]["cronParams"]["period"] == 1


def test_redirect_points_to_leak_on_another_hostname(sim: Simulator) -> None:
    status, headers, body = api(sim, "redirect", "getbackupschedule")
    assert status == 302
    assert headers["Location"] == f"http://localhost:{sim.port}/_sim/leak"
    before, before_auth = sim.leaked_requests, sim.leaked_requests_with_auth
    call(sim, "GET", "/_sim/leak")
    call(sim, "GET", "/_sim/leak", {"Authorization": "Bearer sk-leaked"})
    assert sim.leaked_requests == before + 2
    assert sim.leaked_requests_with_auth == before_auth + 1


def test_huge_body_is_streamed(sim: Simulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=15)
    try:
        conn.request("GET", "/huge/api/2.0/backup/getbackupschedule", headers=bearer(sim, "huge"))
        resp = conn.getresponse()
        assert resp.status == 200
        length = int(resp.headers["Content-Length"])
        assert length == 60 * 1024 * 1024
        first = resp.read(64 * 1024)
        total, last = len(first), b""
        while chunk := resp.read(1024 * 1024):
            total += len(chunk)
            last = chunk
        assert first.startswith(b'{"response":') and last.endswith(b"}")
        assert total == length
    finally:
        conn.close()


def test_drip_sends_one_byte_per_second(sim: Simulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=15)
    try:
        start = time.monotonic()
        conn.request("GET", "/drip/api/2.0/backup/getbackupprogress", headers=bearer(sim, "drip"))
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) > 100
        assert resp.read(2) == b'{"'
        assert time.monotonic() - start >= 0.9  # the second byte comes a second later
    finally:
        conn.close()


# --- authentication (§3) ---


def test_api_key_only_as_bearer(sim: Simulator) -> None:
    key = sim.portal("healthy").api_key
    ep = "getbackupschedule"
    assert api(sim, "healthy", ep, auth=False)[:3:2] == (401, b"")
    assert api(sim, "healthy", ep, auth=False, headers={"Authorization": key})[:3:2] == (401, b"")
    wrong = {"Authorization": "Bearer sk-" + "0" * 64}
    assert api(sim, "healthy", ep, auth=False, headers=wrong)[:3:2] == (401, b"")
    other = bearer(sim, "stale")  # a key of another portal
    assert api(sim, "healthy", ep, auth=False, headers=other)[0] == 401
    basic = {"Authorization": "Basic YTpi"}
    assert api(sim, "healthy", ep, auth=False, headers=basic)[0] == 401
    assert api(sim, "healthy", ep)[0] == 200
    # "Bearer " is case-sensitive on the server (docspace-api.md section 16).
    assert api(sim, "healthy", ep, auth=False, headers={"Authorization": f"bearer {key}"})[0] == 401
    assert api(sim, "healthy", ep, auth=False, headers={"Authorization": f"Bearer {key}"})[0] == 200


def test_static_token_header_bearer_and_cookie(sim: Simulator) -> None:
    ep = "getbackupprogress"
    good = "static-token-123"
    for headers in (
        {"Authorization": good},
        {"Authorization": f"Bearer {good}"},
        {"Cookie": f"lang=en; asc_auth_key={good}"},
    ):
        assert api(sim, "static", ep, auth=False, headers=headers)[0] == 200, headers
    # the cookie wins over the header
    both = {"Cookie": "asc_auth_key=wrong", "Authorization": good}
    assert api(sim, "static", ep, auth=False, headers=both)[0] == 401
    assert api(sim, "static", ep, auth=False, headers={"Authorization": "wrong"})[0] == 401


def test_login_then_token_works(sim: Simulator) -> None:
    status, headers, body = login(sim, "login", "admin@example.com", "s3cret")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    doc = json.loads(body)
    assert list(doc) == ENVELOPE_KEYS and doc["count"] == 1
    assert list(doc["response"]) == ["token", "expires", "sms", "tfa"]
    assert doc["links"] == [
        {"href": f"http://127.0.0.1:{sim.port}/login/api/2.0/authentication", "action": "POST"}
    ]
    token = doc["response"]["token"]
    assert EXPIRES_RE.match(doc["response"]["expires"])
    assert doc["response"]["expires"].startswith(fmt(T0 + 600))
    assert f"asc_auth_key={token}" in headers["Set-Cookie"]
    for h in (
        {"Authorization": token},
        {"Authorization": f"Bearer {token}"},
        {"Cookie": f"asc_auth_key={token}"},
    ):
        assert api(sim, "login", "getbackupschedule", auth=False, headers=h)[0] == 200
    # the token belongs to its portal only
    assert (
        api(sim, "healthy", "getbackupschedule", auth=False, headers={"Authorization": token})[0]
        == 401
    )
    second = json.loads(login(sim, "login", "admin@example.com", "s3cret")[2])
    assert second["response"]["token"] != token


def test_login_failures(sim: Simulator) -> None:
    status, headers, body = login(sim, "login", "admin@example.com", "wrong")
    assert status == 401
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == LOGIN_FAILED
    assert list(json.loads(body)["error"]) == ["message", "type", "stack", "hresult"]
    # a portal without configured credentials rejects every login
    assert login(sim, "healthy", "admin@example.com", "s3cret")[0] == 401
    bad = call(sim, "POST", "/login/api/2.0/authentication", {}, b"{not json")
    assert bad[0] == 400 and json.loads(bad[2])["statusCode"] == 400
    assert call(sim, "GET", "/login/api/2.0/authentication")[0] == 405


def test_token_expiry_and_revoke_with_injected_clock() -> None:
    now = [1_700_000_000.0]
    with Simulator(clock=lambda: now[0]) as s:
        s.add_portal("p", username="u", password="pw", token_lifetime=100)
        s.add_portal("q", username="u", password="pw")
        doc = json.loads(login(s, "p", "u", "pw")[2])
        token = doc["response"]["token"]
        assert doc["response"]["expires"] == "2023-11-14T22:15:00Z"  # 1_700_000_100
        auth = {"Authorization": token}
        assert api(s, "p", "getbackupschedule", auth=False, headers=auth)[0] == 200
        now[0] += 99
        assert api(s, "p", "getbackupschedule", auth=False, headers=auth)[0] == 200
        now[0] += 2
        assert api(s, "p", "getbackupschedule", auth=False, headers=auth)[:3:2] == (401, b"")

        token = json.loads(login(s, "p", "u", "pw")[2])["response"]["token"]
        other = json.loads(login(s, "q", "u", "pw")[2])["response"]["token"]
        assert (
            api(s, "p", "getbackupschedule", auth=False, headers={"Authorization": token})[0] == 200
        )
        s.revoke_tokens("p")
        assert (
            api(s, "p", "getbackupschedule", auth=False, headers={"Authorization": token})[0] == 401
        )
        assert (
            api(s, "q", "getbackupschedule", auth=False, headers={"Authorization": other})[0] == 200
        )
        # the API key is not a login token and is unaffected
        assert api(s, "p", "getbackupschedule")[0] == 200


def test_fractional_expires_format() -> None:
    with Simulator(clock=lambda: 1_700_000_000.25) as s:
        s.add_portal("p", username="u", password="pw", token_lifetime=0)
        doc = json.loads(login(s, "p", "u", "pw")[2])
        assert doc["response"]["expires"] == "2023-11-14T22:13:20.25Z"  # trailing zeros trimmed


# --- Dump, routing ---


def test_dump_query(sim: Simulator) -> None:
    for query in ("?dump=true", "?Dump=True", "?DUMP=TRUE"):
        sched = ok_json(api(sim, "healthy", "getbackupschedule", query))["response"]
        assert sched["dump"] is True
    hist = ok_json(api(sim, "healthy", "getbackuphistory", "?Dump=true"))["response"]
    assert all(rec["fileName"].startswith("workspace_") for rec in hist)
    assert (
        ok_json(api(sim, "healthy", "getbackupschedule", "?dump=false"))["response"]["dump"]
        is False
    )

    status, headers, body = api(sim, "nodump", "getbackupschedule", "?Dump=true")
    assert status == 403 and headers["Content-Type"] == "application/json; charset=utf-8"
    doc = json.loads(body)
    assert doc["error"]["message"] == "Access denied" and doc["statusCode"] == 403
    assert api(sim, "nodump", "getbackupprogress", "?dump=true")[0] == 403
    assert api(sim, "nodump", "getbackupschedule", "?dump=false")[0] == 200
    assert api(sim, "nodump", "getrestoreprogress", "?dump=true")[0] == 200

    status, _, body = api(sim, "healthy", "getbackupschedule", "?dump=maybe")
    doc = json.loads(body)
    assert status == 400 and (doc["status"], doc["statusCode"]) == (1, 400)


def test_routing(sim: Simulator) -> None:
    h = bearer(sim, "healthy")
    assert call(sim, "GET", "/healthy/API/2.0/Backup/GetBackupSchedule", h)[0] == 200
    legacy = call(sim, "GET", "/healthy/api/2.0/portal/getbackupschedule", h)
    assert legacy[0] == 200 and json.loads(legacy[2])["response"]["cronParams"]["period"] == 1
    for path in (
        "/nobody/api/2.0/backup/getbackupschedule",
        "/healthy/api/2.0/backup/getbackupschedule.json",
        "/healthy/api/2.0/backup/nothing",
        "/healthy/api/3.0/backup/getbackupschedule",
        "/healthy",
        "/",
    ):
        status, _, body = call(sim, "GET", path, h)
        assert (status, body) == (404, b""), path
    assert call(sim, "POST", "/healthy/api/2.0/backup/getbackupschedule", h, b"{}")[0] == 405


# --- counters, keep-alive, concurrency ---


def test_counters_keepalive_and_stats() -> None:
    with Simulator() as s:
        s.add_portal("a")
        s.add_portal("b", token="tok")
        s.reset_counters()
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        try:
            for ep in (
                "getbackupschedule",
                "getbackupprogress",
                "getrestoreprogress",
                "getbackuphistory",
                "getbackupschedule",
            ):
                conn.request("GET", f"/a/api/2.0/backup/{ep}", headers=bearer(s, "a"))
                resp = conn.getresponse()
                assert resp.status == 200
                resp.read()
            conn.request(
                "GET", "/b/api/2.0/backup/getbackupschedule", headers={"Authorization": "tok"}
            )
            conn.getresponse().read()
            conn.request("GET", "/b/api/2.0/backup/getrestoreprogress")  # anonymous
            conn.getresponse().read()
        finally:
            conn.close()
        assert s.connections_opened == 1  # one kept-alive connection for all seven
        assert s.request_count() == 7
        assert s.request_count("a") == 5
        assert s.request_count("a", "schedule") == 2
        assert s.request_count(endpoint="restore_progress") == 2
        assert s.request_count("b", "login") == 0
        assert s.auth_headers("a") == [f"Bearer {s.portal('a').api_key}"] * 5
        assert s.auth_headers("b") == ["tok"]
        assert s.max_concurrency("a") == 1

        stats = json.loads(call(s, "GET", "/_sim/stats")[2])
        assert stats["portals"]["a"]["requests"]["schedule"] == 2
        assert stats["connections_opened"] == 2
        assert s.portal("a").api_key not in json.dumps(stats)

        s.reset_counters()
        assert s.request_count() == 0 and s.connections_opened == 0
        assert s.auth_headers("a") == [] and s.leaked_requests == 0


def test_latency_and_max_concurrency() -> None:
    with Simulator(latency=0.05) as s:
        s.add_portal("p", latency=0.3)
        n = 4
        barrier = threading.Barrier(n)
        codes: list[int] = []

        def worker() -> None:
            barrier.wait()
            codes.append(api(s, "p", "getbackupprogress")[0])

        start = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert codes == [200] * n
        assert time.monotonic() - start >= 0.35
        assert 2 <= s.max_concurrency("p") <= n
        assert s.connections_opened == n


# --- lifecycle ---


def test_stop_returns_while_a_hang_request_is_in_flight() -> None:
    s = Simulator().start()
    s.add_portal("h", "hang", slow_seconds=600)
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=15)
    try:
        key = s.portal("h").api_key
        sock.sendall(
            b"GET /h/api/2.0/backup/getbackupschedule HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n\r\n"
        )
        deadline = time.monotonic() + 10
        while s.request_count("h") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.request_count("h") == 1
        stopper = threading.Thread(target=s.stop)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() did not return"
        assert sock.recv(100) == b""  # the hung request got no answer, only a close
    finally:
        sock.close()
        s.stop()


def test_slow_request_is_interrupted_by_stop() -> None:
    s = Simulator().start()
    s.add_portal("s", "slow", slow_seconds=600)
    errors: queue.Queue[BaseException | None] = queue.Queue()

    def client() -> None:
        try:
            api(s, "s", "getbackupschedule")
            errors.put(None)
        except (OSError, http.client.HTTPException) as exc:
            errors.put(exc)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 10
    while s.request_count("s") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    t.join(10)
    assert not t.is_alive()
    assert errors.get_nowait() is not None  # no answer: the connection was closed


# --- demo and CLI ---


def test_demo_portals_and_config_text() -> None:
    with Simulator() as s:
        portals = add_demo_portals(s)
        assert [p.name for p in portals] == [name for name, _ in DEMO_PORTALS]
        text = render_config(s)
        assert text.startswith("#") and "\nportals:\n" in text
        assert f'  - name: "healthy-login"\n    url: "{s.portal_url("healthy-login")}"\n' in text
        assert f'    username: "{DEMO_USERNAME}"\n    password: "{DEMO_PASSWORD}"\n' in text
        assert f'    api_key: "{s.portal("healthy").api_key}"\n' in text
        assert text.count("    history: true\n") == len(DEMO_PORTALS)
        status, _, _ = login(s, "healthy-login", DEMO_USERNAME, DEMO_PASSWORD)
        assert status == 200


def _first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


@pytest.mark.parametrize("extra", [["--portals", "3", "--scenario", "stale"], ["--demo"]])
def test_cli_writes_config_and_serves(tmp_path: Path, extra: list[str]) -> None:
    cfg = tmp_path / "config.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "docspace_simulator",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            "0",
            "--write-config",
            str(cfg),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert m, line
        port = int(m.group(1))
        text = cfg.read_text()
        assert text.count("  - name: ") == (3 if extra[0] == "--portals" else len(DEMO_PORTALS))
        first = "p0001" if extra[0] == "--portals" else "healthy"
        assert f'  - name: "{first}"\n    url: "http://127.0.0.1:{port}/{first}"\n' in text
        key = re.search(r'api_key: "(sk-[0-9a-f]{64})"', text)
        assert key
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET",
            f"/{first}/api/2.0/backup/getbackupschedule",
            headers={"Authorization": f"Bearer {key.group(1)}"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["response"]["cronParams"]["period"] in (0, 1)
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            stderr = proc.stderr.read()
            proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert stderr == ""  # quiet: no request logging
