"""Fault scenarios only the tests need, added to the simulator's table on import.

A real DocSpace does not do these on purpose, so they are not in docspace_simulator (which the
demo ships): a hung connection, a body dripped a byte a second, a 60 MB body, a cut-off body,
wrong JSON types, an HTML page with 200, and a redirect to the simulator's /_sim/leak counter.
tests/conftest.py imports this module, so every test can name these scenarios.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from docspace_simulator import (
    CT_JSON,
    Request,
    Resp,
    Scenario,
    SimPortal,
    register_scenario,
)
from docspace_simulator.wire import guid

HUGE_SIZE = 60 * 1024 * 1024
HTML_PAGE = (
    b'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    b'<title>ONLYOFFICE DocSpace</title></head><body><div id="root">Loading...</div>'
    b'<script src="/static/scripts/browserDetector.js"></script></body></html>\n'
)


def _hang(req: Request) -> bool:
    """Wait slow_seconds, then close without a byte of answer."""
    req.sleep(req.portal.slow_seconds)
    req.close()
    return True


def _html(req: Request) -> bool:
    req.send(Resp(200, HTML_PAGE, "text/html; charset=utf-8"))
    return True


def _redirect(req: Request) -> bool:
    where = f"http://localhost:{req.sim.port}/_sim/leak"
    req.send(Resp(302, headers=(("Location", where),)))
    return True


def huge_chunks(stop: threading.Event) -> Iterator[bytes]:
    """A valid JSON envelope of exactly HUGE_SIZE bytes, produced in 256 KiB pieces."""
    head = b'{"response":{"storageType":0,"storageParams":{"folderId":"'
    tail = (
        b'"},"cronParams":{"period":1,"hour":2,"day":1},"backupsStored":5,'
        b'"lastBackupTime":"2025-01-12T02:07:32","dump":false},"count":1,"links":[],'
        b'"status":0,"statusCode":200}'
    )
    filler = HUGE_SIZE - len(head) - len(tail)
    chunk = b"a" * (256 * 1024)
    yield head
    while filler > 0 and not stop.is_set():
        piece = chunk if filler >= len(chunk) else chunk[:filler]
        filler -= len(piece)
        yield piece
    yield tail


def _huge(req: Request) -> bool:
    req.close()
    req.write(req.head(Resp(200, ctype=CT_JSON), HUGE_SIZE))
    for piece in huge_chunks(req.stopping):
        req.write(piece)
    return True


def _truncated(req: Request, resp: Resp) -> None:
    req.send(resp._replace(body=resp.body[: len(resp.body) // 2]) if resp.body else resp)


def _drip(req: Request, resp: Resp) -> None:
    """The head at once, then the body one byte a second."""
    if not resp.body:
        req.send(resp)
        return
    req.close()
    req.write(req.head(resp) + resp.body[:1])
    for i in range(1, len(resp.body)):
        if not req.sleep(1.0):
            return
        req.write(resp.body[i : i + 1])


def _wrong_types(p: SimPortal, endpoint: str, obj: Any) -> Any:
    """Valid JSON of the right shape with values of the wrong types."""
    if endpoint == "schedule" and obj is not None:
        obj["cronParams"]["period"] = "x"
        obj["lastBackupTime"] = "not a date"
    elif endpoint == "backup_progress" and obj is not None:
        obj["isCompleted"] = "yes"
        obj["progress"] = "abc"
    elif endpoint == "restore_progress":
        return {"isCompleted": "yes", "progress": "abc", "error": "", "tenantId": 1,
                "backupProgressEnum": 1, "status": "x",
                "taskId": guid(p.name, "restore")}
    elif endpoint == "history":
        for rec in obj:
            rec["storageType"] = "zero"
            rec["createdOn"] = "not a date"
    return obj


FAULTS: tuple[Scenario, ...] = tuple(register_scenario(s) for s in (
    Scenario("hang", "no answer at all: the connection is closed after slow_seconds",
             front=_hang),
    Scenario("drip", "the answer one byte a second", writer=_drip),
    Scenario("huge", "a 60 MB JSON body", front=_huge),
    Scenario("truncated", "the body cut in half", writer=_truncated),
    Scenario("wrong_types", "values of the wrong JSON types", mangle=_wrong_types),
    Scenario("html", "200 with an HTML page", front=_html),
    Scenario("redirect", "302 to /_sim/leak, which counts who follows", front=_redirect),
))
