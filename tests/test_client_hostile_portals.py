"""Hostile and broken portals: each one beside a healthy portal, through the
real exporter server and real sockets on 127.0.0.1.

For every case the scrape is answered before Prometheus' scrape timeout (the contract's
deadline: `X-Prometheus-Scrape-Timeout-Seconds: 3`), the broken portal is `docspace_up 0` with
the contract's `reason`, none of its failed endpoints' series are served, the healthy portal is
`docspace_up 1`, and the exporter keeps serving.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from docspace_simulator import Simulator
from exporter.config import ApiKeyAuth, Config, PortalConfig, Secret
from tests.harness import (
    ENDPOINTS,
    SCRAPE_TIMEOUT,
    Answer,
    RawServer,
    RunningExporter,
    Samples,
    assert_complete,
    assert_no_data,
    closed_port,
    errors,
    make_certs,
    read_request_head,
    rss_bytes,
    value,
)

ALL = dict.fromkeys(ENDPOINTS)
# The contract lets every data endpoint fail on a broken portal; getrestoreprogress is
# anonymous in DocSpace, so auth and permission failures leave it working.
BUT_RESTORE = ("schedule", "backup_progress", "history")
KEY = "sk-" + "5" * 64  # api key of portals that are not simulator portals


@dataclass
class Case:
    id: str
    reasons: dict[str, str]  # failed endpoint -> reason; the other endpoints must succeed
    scenario: str | None = None  # simulator scenario of the broken portal
    sim_kw: dict[str, Any] = field(default_factory=dict)
    healthy_first: bool = True  # scrape once while healthy, so stale data would show


def _all(reason: str, endpoints: tuple[str, ...] = ENDPOINTS) -> dict[str, str]:
    return dict.fromkeys(endpoints, reason)


SIM_CASES = [
    Case("hang", _all("timeout"), "hang", {"slow_seconds": 60}),
    Case("drip_1_byte_per_second", _all("timeout"), "drip"),
    Case("huge_60MB_body", _all("invalid_response"), "huge"),
    Case("truncated_json", _all("invalid_response"), "truncated"),
    Case("wrong_types", _all("invalid_response"), "wrong_types"),
    Case("html_200", _all("invalid_response"), "html"),
    Case("html_502", _all("http_error"), "down"),
    Case("401_empty_body", _all("unauthorized", BUT_RESTORE), "auth_failure"),
    Case("402_problem_details", _all("payment_required", ("schedule", "history")), "unpaid"),
    Case("403_error_envelope", _all("forbidden", BUT_RESTORE), "forbidden"),
    Case("403_problem_details", _all("forbidden", BUT_RESTORE), "restore_running"),
    Case("404_problem_details", _all("not_found"), "not_found"),
    Case("429_retry_after", _all("rate_limited"), "rate_limited", {"retry_after": 1}),
    Case("redirect", _all("http_error"), "redirect"),
]


def _config(sim: Simulator, broken: PortalConfig | None = None) -> Config:
    portals = [PortalConfig(name="good", url=sim.portal_url("good"),
                            auth=ApiKeyAuth(Secret(sim.portal("good").api_key)),
                            timeout=10.0, history=True)]
    if broken is not None:
        portals.append(broken)
    return Config(portals=tuple(portals))


def _sim_portal(sim: Simulator, name: str, **kw: Any) -> PortalConfig:
    return PortalConfig(name=name, url=sim.portal_url(name),
                        auth=ApiKeyAuth(Secret(sim.portal(name).api_key)), timeout=10.0,
                        history=True, **kw)


def _url_portal(url: str, **kw: Any) -> PortalConfig:
    kw.setdefault("timeout", 10.0)
    return PortalConfig(name="broken", url=url, auth=ApiKeyAuth(Secret(KEY)), history=True,
                        **kw)


def check_scrape(ex: RunningExporter, reasons: dict[str, str], *, broken: str = "broken",
                 path: str = "/metrics", before: Samples | None = None) -> Answer:
    """One scrape with the 3 s header; every assertion the issue asks of a broken portal."""
    answer = ex.scrape(path)
    # The contract's deadline: the answer is complete before Prometheus gives up.
    assert answer.elapsed < SCRAPE_TIMEOUT, f"answered after {answer.elapsed:.2f}s"
    samples = assert_complete(answer)
    if path == "/metrics":
        assert value(samples, "docspace_up", portal="good") == 1.0
    assert value(samples, "docspace_up", portal=broken) == 0.0
    for endpoint in ENDPOINTS:
        ep_up = value(samples, "docspace_endpoint_up", portal=broken, endpoint=endpoint)
        if endpoint in reasons:
            assert ep_up == 0.0, endpoint
            assert_no_data(samples, broken, endpoint)
        else:
            assert ep_up == 1.0, endpoint
    # Each failed call counted once, with the contract's reason, and nothing else.
    got = errors(samples, broken)
    old = errors(before, broken) if before is not None else {}
    new = {k: v - old.get(k, 0.0) for k, v in got.items() if v - old.get(k, 0.0)}
    # Settings and tariff are read at most once an hour (and not part of docspace_up): when
    # this scrape read them, each failure is counted once as well.
    side = {k: v for k, v in new.items() if k[0] in ("settings", "tariff")}
    assert all(v == 1.0 for v in side.values()), side
    new = {k: v for k, v in new.items() if k not in side}
    assert new == {(e, r): 1.0 for e, r in reasons.items()}
    # Still serving.
    assert ex.get("/-/healthy").status == 200
    # Shown with `pytest -s`: the time each case took to answer (not asserted beyond the
    # contract's deadline above).
    print(f"{path} {sorted(set(reasons.values()))} answered in {answer.elapsed:.2f}s")
    return answer


@pytest.fixture
def sim_with_good(simulator: Simulator) -> Simulator:
    simulator.add_portal("good", "healthy")
    return simulator


@pytest.mark.parametrize("case", SIM_CASES, ids=[c.id for c in SIM_CASES])
def test_broken_simulator_portal(case: Case, sim_with_good: Simulator,
                                 exporters: Callable[..., RunningExporter]) -> None:
    sim = sim_with_good
    assert case.scenario is not None
    sim.add_portal("broken", "healthy", **case.sim_kw)
    ex = exporters(_config(sim, _sim_portal(sim, "broken")))
    before = None
    if case.healthy_first:
        before = assert_complete(ex.scrape())
        assert value(before, "docspace_up", portal="broken") == 1.0
    sim.set_scenario("broken", case.scenario)
    sim.reset_counters()
    rss0 = rss_bytes()
    check_scrape(ex, case.reasons, before=before)
    grown = rss_bytes() - rss0
    if case.scenario == "huge":
        # 60 MB offered; the answer is refused long before memory could follow.
        assert grown < 16 * 1024 * 1024, f"RSS grew by {grown} bytes"
    if case.scenario == "rate_limited":
        # Retry-After: 1 fits the deadline: waited once, asked once more, then gave up.
        for endpoint in ENDPOINTS:
            assert sim.request_count("broken", endpoint) == 2
    if case.scenario == "redirect":
        assert sim.leaked_requests == 0
        assert sim.leaked_requests_with_auth == 0


def test_broken_portal_via_probe(sim_with_good: Simulator,
                                 exporters: Callable[..., RunningExporter]) -> None:
    sim = sim_with_good
    sim.add_portal("broken", "hang", slow_seconds=60)
    ex = exporters(_config(sim, _sim_portal(sim, "broken")))
    answer = check_scrape(ex, _all("timeout"), path="/probe?target=broken")
    samples = assert_complete(answer)
    # A probe shows only its target.
    assert not [k for k in samples if ("portal", "good") in k[1]]
    good = assert_complete(ex.scrape("/probe?target=good"))
    assert value(good, "docspace_up", portal="good") == 1.0


# --- portals that are not the simulator --------------------------------------------------------


def test_connection_refused(sim_with_good: Simulator,
                            exporters: Callable[..., RunningExporter]) -> None:
    ex = exporters(_config(sim_with_good, _url_portal(f"http://127.0.0.1:{closed_port()}/x")))
    check_scrape(ex, _all("connection"))


def test_dns_failure(sim_with_good: Simulator, exporters: Callable[..., RunningExporter],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    # `.invalid` never resolves (RFC 6761). The resolver is answered here, in process, so
    # not even a DNS query leaves the machine; everything else resolves as usual.
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.rstrip(".").endswith(".invalid"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    ex = exporters(_config(sim_with_good, _url_portal("https://docspace.example.invalid")))
    check_scrape(ex, _all("connection"))
    assert asked  # the exporter did try to resolve it


def _tls_respond(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")


@pytest.mark.parametrize("variant", ["self_signed", "wrong_ca"])
def test_tls_failure(variant: str, sim_with_good: Simulator, tmp_path: Path,
                     exporters: Callable[..., RunningExporter]) -> None:
    certs = make_certs(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if variant == "self_signed":
        # A self-signed certificate and no ca_file: the system CAs do not vouch for it.
        ctx.load_cert_chain(certs.rogue_cert, certs.rogue_key)
        kw: dict[str, Any] = {}
    else:
        # A proper chain, but ca_file names a CA that did not sign it.
        ctx.load_cert_chain(certs.server_cert, certs.server_key)
        kw = {"ca_file": str(certs.rogue_cert)}
    with RawServer(_tls_respond, context=ctx) as srv:
        ex = exporters(_config(sim_with_good, _url_portal(srv.url("https"), **kw)))
        check_scrape(ex, _all("tls"))
        assert srv.requests == []  # not one request (nor credential) crossed


def test_tls_with_ca_file_works(sim_with_good: Simulator, tmp_path: Path,
                                exporters: Callable[..., RunningExporter]) -> None:
    """The control for the TLS failures: the same server with the right ca_file is reached."""
    certs = make_certs(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)

    def respond(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
        body = _healthy_body(head)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    with RawServer(respond, context=ctx) as srv:
        ex = exporters(_config(sim_with_good, _url_portal(srv.url("https"),
                                                          ca_file=str(certs.ca))))
        samples = assert_complete(ex.scrape())
        assert value(samples, "docspace_up", portal="broken") == 1.0
        assert all(b"Authorization: Bearer " + KEY.encode() in r for r in srv.requests)


# --- raw misbehaviour the simulator has no scenario for ----------------------------------------


def _healthy_body(head: bytes) -> bytes:
    """A valid empty answer to the request `head`: history is a list, the rest no data."""
    if b"getbackuphistory" in head:
        return b'{"response":[],"count":0,"links":[],"status":0,"statusCode":200}'
    return b'{"count":0,"links":[],"status":0,"statusCode":200}'


def _header_drip(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
    """A status line, then one header byte a second, forever: each read returns in time."""
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.5):
        sock.sendall(b"X")


def _gzip_bomb() -> bytes:
    # ~64 MB of zeros inside a JSON string compresses to ~64 KB.
    inner = (b'{"response":{"x":"' + b"0" * (64 << 20) + b'"},"count":1,"status":0,'
             b'"statusCode":200}')
    return gzip.compress(inner, compresslevel=9)


def _responder(body: bytes, headers: bytes = b"", status: bytes = b"200 OK"
               ) -> Callable[[socket.socket, bytes, threading.Event], None]:
    def respond(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
        sock.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                     + headers + b"Content-Length: " + str(len(body)).encode()
                     + b"\r\nConnection: close\r\n\r\n" + body)
    return respond


def _chunked_flood(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
    """No Content-Length: a chunked body that never ends, as fast as it can be read."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"[" * 0x10000 + b"\r\n"
    while not stop.is_set():
        sock.sendall(chunk)


def _cut_short(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
    """Content-Length promises more than the body that comes before the connection closes."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n" + _healthy_body(head)[:20])


RAW_CASES: list[tuple[str, Callable[[socket.socket, bytes, threading.Event], None], str]] = [
    ("header_drip", _header_drip, "timeout"),
    ("body_cut_short", _cut_short, "connection"),
    ("gzip_bomb", _responder(_gzip_bomb(), b"Content-Encoding: gzip\r\n"), "invalid_response"),
    ("endless_chunked_body", _chunked_flood, "invalid_response"),
    # 200k nested arrays: under the size cap, but deeper than any JSON parser recurses.
    ("deeply_nested_json", _responder(b"[" * 200_000 + b"]" * 200_000), "invalid_response"),
    ("json_not_an_envelope", _responder(b'{"error":"gateway"}'), "invalid_response"),
    ("json_scalar", _responder(b"null"), "invalid_response"),
    ("non_utf8_body", _responder(b'{"response":"\xff\xfe","count":1}'), "invalid_response"),
    ("429_odd_retry_after", _responder(b"", b"Retry-After: \xb2\r\n", b"429 Too Many Requests"),
     "rate_limited"),
    ("429_http_date_retry_after",
     _responder(b"", b"Retry-After: Wed, 21 Oct 2099 07:28:00 GMT\r\n",
                b"429 Too Many Requests"), "rate_limited"),
    ("500_with_json_envelope", _responder(
        b'{"error":{"message":"boom","type":null,"stack":null,"hresult":0},"status":1,'
        b'"statusCode":500}', status=b"500 Internal Server Error"), "http_error"),
    ("status_1_envelope", _responder(b'{"response":{},"count":1,"status":1,"statusCode":200}'),
     "invalid_response"),
]


@pytest.mark.parametrize("name,respond,reason", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_raw_misbehaviour(name: str, respond: Callable[[socket.socket, bytes, threading.Event],
                                                       None], reason: str,
                          sim_with_good: Simulator, caplog: pytest.LogCaptureFixture,
                          exporters: Callable[..., RunningExporter]) -> None:
    with RawServer(respond) as srv:
        ex = exporters(_config(sim_with_good, _url_portal(srv.url())))
        rss0 = rss_bytes()
        with caplog.at_level(logging.WARNING):
            check_scrape(ex, _all(reason))
        assert rss_bytes() - rss0 < 16 * 1024 * 1024
        # A hostile answer is an expected failure, never "unexpected error" (a bug of ours).
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
            r.getMessage() for r in caplog.records]


KEPT_ALIVE_CASES = [c for c in RAW_CASES if c[0] in (
    "header_drip", "gzip_bomb", "endless_chunked_body", "deeply_nested_json")]


@pytest.mark.parametrize("name,respond,reason", KEPT_ALIVE_CASES,
                         ids=[c[0] for c in KEPT_ALIVE_CASES])
def test_raw_misbehaviour_on_a_kept_alive_connection(
        name: str, respond: Callable[[socket.socket, bytes, threading.Event], None],
        reason: str, sim_with_good: Simulator, caplog: pytest.LogCaptureFixture,
        exporters: Callable[..., RunningExporter]) -> None:
    """The same answers on connections the portal kept open from a healthy scrape: the calls
    are then sent ahead and read when their answer arrives (exporter/dispatch.py), and fail
    exactly as a call made whole does."""
    hostile = threading.Event()
    connections = [0]
    backup_calls_on: list[int] = []  # the connection of each backup call, in order

    def serve(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
        connections[0] += 1
        me = connections[0]
        while True:
            if b"/backup/" in head:
                backup_calls_on.append(me)
            if hostile.is_set():
                break
            # healthy answers, the connection kept open
            body = _healthy_body(head)
            stop.wait(0.2)  # the four calls overlap: a connection each
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = read_request_head(sock)
            if not head:
                return
        respond(sock, head, stop)

    with RawServer(serve) as srv:
        ex = exporters(_config(sim_with_good, _url_portal(srv.url())))
        healthy = assert_complete(ex.scrape())
        assert value(healthy, "docspace_up", portal="broken") == 1.0
        hostile.set()
        opened = connections[0]
        ahead = ex.app.scraper.sent_ahead
        rss0 = rss_bytes()
        with caplog.at_level(logging.WARNING):
            check_scrape(ex, _all(reason), before=healthy)
        # every backup call went out on a connection kept from the healthy scrape: sent
        # ahead (settings and tariff, which failed to parse then, may open new ones)
        assert len(backup_calls_on) == 2 * len(ENDPOINTS)
        assert max(backup_calls_on[len(ENDPOINTS):]) <= opened, (backup_calls_on, opened)
        assert ex.app.scraper.sent_ahead - ahead >= len(ENDPOINTS)
        assert rss_bytes() - rss0 < 16 * 1024 * 1024
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
            r.getMessage() for r in caplog.records]


def test_stuck_portal_does_not_stay_stuck(sim_with_good: Simulator,
                                          exporters: Callable[..., RunningExporter]) -> None:
    """A call that never ends must not be joined by later scrapes: each scrape asks again and
    counts its own timeout, and once the portal answers again it is up at the next scrape."""
    fixed = threading.Event()

    def respond(sock: socket.socket, head: bytes, stop: threading.Event) -> None:
        if fixed.is_set():
            _responder(_healthy_body(head))(sock, head, stop)
            return
        _header_drip(sock, head, stop)

    with RawServer(respond) as srv:
        ex = exporters(_config(sim_with_good, _url_portal(srv.url(), timeout=1.0)))
        first = check_scrape(ex, _all("timeout"))
        check_scrape(ex, _all("timeout"), before=assert_complete(first))
        fixed.set()  # the very next scrape asks again and gets an answer
        samples = assert_complete(ex.scrape())
        assert value(samples, "docspace_up", portal="broken") == 1.0


def test_retry_after_then_success(sim_with_good: Simulator,
                                  exporters: Callable[..., RunningExporter]) -> None:
    """429 with Retry-After: 1 on the first call of each endpoint: the exporter waits once,
    inside the deadline, asks again and gets the data."""
    sim = sim_with_good
    # Four calls at once on the first scrape: the four endpoints; settings, then tariff,
    # follow them (after the retries) and are answered at once.
    sim.add_portal("broken", "healthy", rate_limit_first=4, retry_after=1)
    ex = exporters(_config(sim, _sim_portal(sim, "broken")))
    answer = ex.scrape()
    assert answer.elapsed < SCRAPE_TIMEOUT
    samples = assert_complete(answer)
    assert value(samples, "docspace_up", portal="broken") == 1.0
    assert errors(samples, "broken") == {}
    for endpoint in ENDPOINTS:
        assert sim.request_count("broken", endpoint) == 2
    assert sim.request_count("broken", "settings") == 1
    assert sim.request_count("broken", "tariff") == 1


def test_retry_after_beyond_the_deadline_is_not_waited(
        sim_with_good: Simulator, exporters: Callable[..., RunningExporter]) -> None:
    sim = sim_with_good
    sim.add_portal("broken", "rate_limited", retry_after=30)
    ex = exporters(_config(sim, _sim_portal(sim, "broken")))
    check_scrape(ex, _all("rate_limited"))
    for endpoint in ENDPOINTS:
        assert sim.request_count("broken", endpoint) == 1


def test_every_failure_at_once(sim_with_good: Simulator, exporters: Callable[..., RunningExporter],
                               ) -> None:
    """All the simulator's broken scenarios in one config: one scrape, one deadline, the
    healthy portal still up, each broken one with its own reasons."""
    sim = sim_with_good
    portals = [PortalConfig(name="good", url=sim.portal_url("good"),
                            auth=ApiKeyAuth(Secret(sim.portal("good").api_key)), timeout=10.0,
                            history=True)]
    for case in SIM_CASES:
        assert case.scenario is not None
        sim.add_portal(case.id, case.scenario, **case.sim_kw)
        portals.append(_sim_portal(sim, case.id))
    portals.append(PortalConfig(name="refused", url=f"http://127.0.0.1:{closed_port()}",
                                auth=ApiKeyAuth(Secret(KEY)), history=True))
    # More calls than the per-host limit (8) hold the one simulator host for the whole
    # deadline, so raise it: this test is about isolation, test_server_load_and_reload about limits.
    ex = exporters(Config(portals=tuple(portals), max_requests_per_host=128))
    answer = ex.scrape()
    assert answer.elapsed < SCRAPE_TIMEOUT
    samples = assert_complete(answer)
    assert value(samples, "docspace_up", portal="good") == 1.0
    for case in SIM_CASES:
        assert value(samples, "docspace_up", portal=case.id) == 0.0, case.id
        # Settings and tariff (first scrape of the hour) may fail too, never more than once.
        got = {k: v for k, v in errors(samples, case.id).items()
               if k[0] not in ("settings", "tariff")}
        assert set(got) == set(case.reasons.items()), case.id
    assert value(samples, "docspace_up", portal="refused") == 0.0
    assert sim.leaked_requests == 0
