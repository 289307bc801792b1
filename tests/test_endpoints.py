"""The endpoint table: the client asks its paths, metrics writes its families, PortalData
holds one typed outcome per endpoint."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.core import Metric

from exporter import metrics
from exporter.client import DocSpaceClient, FetchError
from exporter.config import ApiKeyAuth, PortalConfig, Secret
from exporter.endpoints import API, BY_NAME, TABLE
from exporter.model import History, Task
from exporter.results import Answered, Empty, Failed, PortalData

SEEN: list[tuple[str, dict[str, list[str]]]] = []


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with an envelope without `response` (DocSpace's "nothing")."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        SEEN.append((parts.path, parse_qs(parts.query)))
        body = b'{"count":0,"status":0,"statusCode":200}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    SEEN.clear()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("dump", [False, True])
def test_client_asks_each_table_path_with_dump_where_the_table_says(
        recorder: str, dump: bool) -> None:
    portal = PortalConfig(name="p", url=recorder, auth=ApiKeyAuth(Secret("sk-test")),
                          dump=dump, history=True)
    client = DocSpaceClient(portal)
    try:
        for e in TABLE:
            SEEN.clear()
            try:
                client.fetch(e.name, time.monotonic() + 5)
            except FetchError as exc:  # settings and tariff need a response object
                assert exc.reason == "invalid_response", e.name
            assert SEEN == [(API + e.path, {"Dump": ["true"]} if dump and e.dump else {})]
    finally:
        client.close()


def test_named_client_methods_read_their_table_row(recorder: str) -> None:
    portal = PortalConfig(name="p", url=recorder, auth=ApiKeyAuth(Secret("sk-test")))
    client = DocSpaceClient(portal)
    try:
        deadline = time.monotonic() + 5
        assert client.schedule(deadline) is None
        assert client.backup_progress(deadline) is None
        assert client.restore_progress(deadline) is None
        assert client.history(deadline) == History(backups=0, last_created=None)
        for fn in (client.settings, client.tariff):
            with pytest.raises(FetchError):
                fn(deadline)
    finally:
        client.close()
    assert [path for path, _ in SEEN] == [API + e.path for e in TABLE]


def _names(families: list[Metric]) -> set[str]:
    return {f.name for f in families}


def test_each_endpoint_function_writes_exactly_the_table_families() -> None:
    made = {
        "schedule": _names(metrics.schedule_families([], 0.0)),
        "tasks": _names(metrics.task_families([])),
        "history": _names(metrics.history_families([])),
        "settings": _names(metrics.settings_families([])),
        "tariff": _names(metrics.tariff_families([])),
    }
    table = {e.name: set(e.families) for e in TABLE}
    assert made["schedule"] == table["schedule"]
    assert made["tasks"] == table["backup_progress"] | table["restore_progress"]
    for name in ("history", "settings", "tariff"):
        assert made[name] == table[name]
    up = _names(metrics.up_families([]))
    assert sorted(metrics.ORDER) == sorted(up | set().union(*table.values()))
    assert [f.name for f in metrics.portal_families([], 0.0)] == list(metrics.ORDER)


def test_portal_data_outcomes_are_typed() -> None:
    task = Task(is_completed=True, progress=100.0, has_error=False, status="completed")
    p = PortalData(name="p", url="u", duration=0.0)
    p.answer("schedule", None)
    p.answer("backup_progress", task)
    p.fail("tariff", "forbidden")
    assert p.schedule == Empty()
    assert p.backup_progress == Answered(task)
    assert p.tariff == Failed("forbidden")
    assert p.restore_progress is None and p.outcome("history") is None
    assert p.answered == ["schedule", "backup_progress"]
    assert p.up  # a side endpoint's failure is not the backup API's
    p.fail("history", "timeout")
    p.fail("restore_progress", "connection")
    assert p.failed == {"restore_progress": "connection", "history": "timeout",
                        "tariff": "forbidden"}
    assert not p.up
    with pytest.raises(KeyError):
        p.answer("name", "x")  # only endpoints of the table, never another field


def test_table_flags() -> None:
    assert [e.name for e in TABLE if e.side] == ["settings", "tariff"]
    assert [e.name for e in TABLE if e.needs_history] == ["history"]
    assert all(e.dump != e.side for e in TABLE)
    assert BY_NAME["settings"].path == "/settings"


SAMPLE = re.compile(r"docspace_\w+\{.*\} \S+")


def test_sample_output_in_docstrings_is_real_exposition() -> None:
    """Each endpoint function's sample lines are lines of the golden exposition."""
    golden = (Path(__file__).parent / "golden" / "metrics.prom").read_text().splitlines()
    functions = [metrics.up_families, metrics.schedule_families, metrics.task_families,
                 metrics.history_families, metrics.settings_families, metrics.tariff_families,
                 metrics.error_family]
    for fn in functions:
        samples = [line.strip() for line in (fn.__doc__ or "").splitlines()
                   if SAMPLE.fullmatch(line.strip())]
        assert samples, fn.__name__
        missing = [s for s in samples if s not in golden]
        assert not missing, (fn.__name__, missing)
