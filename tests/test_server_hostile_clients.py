"""Hostile clients: what reaches the exporter's own HTTP server, over real
sockets on 127.0.0.1. Bad probes are refused before any request leaves the exporter, bad
credentials are 401 (never 500), TLS client auth holds, and nothing takes the server down.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from docspace_simulator import Simulator
from exporter.config import ApiKeyAuth, Config, PortalConfig, Secret
from exporter.webconfig import load_web_config
from tests.harness import (
    Certs,
    RunningExporter,
    assert_complete,
    make_certs,
    raw_exchange,
    value,
)

USER = "prometheus"
PASSWORD = "correct horse battery staple"  # the exporter's own basic-auth password


@pytest.fixture
def config(simulator: Simulator) -> Config:
    simulator.add_portal("main", "healthy")
    simulator.add_portal("other", "healthy")
    return Config(portals=tuple(
        PortalConfig(name=n, url=simulator.portal_url(n),
                     auth=ApiKeyAuth(Secret(simulator.portal(n).api_key)), timeout=5.0)
        for n in ("main", "other")))


def outgoing(sim: Simulator) -> tuple[int, int]:
    return sim.request_count(), sim.connections_opened


# --- /probe ------------------------------------------------------------------------------------


BAD_PROBES = [
    "/probe",
    "/probe?target=",
    "/probe?target",
    "/probe?target=nope",
    "/probe?target=main&target=main",
    "/probe?target=main&target=other",
    "/probe?target=main&target=",
    "/probe?target=MAIN",
    "/probe?target=main%20",
    "/probe?target=%20main",
    "/probe?target=main%00",
    "/probe?target=main%0d%0aX-Injected:%201",
    "/probe?target=%ff%fe",
    "/probe?target=http://127.0.0.1:1/main",
    "/probe?target=http%3A%2F%2Fevil.example%2F",
    "/probe?target=//evil.example/x",
    "/probe?target=../main",
    "/probe?module=main",
    "/probe?target[]=main",
]


def test_bad_probe_targets_are_400_and_send_nothing(
        simulator: Simulator, config: Config,
        exporters: Callable[..., RunningExporter]) -> None:
    ex = exporters(config)
    targets = [*BAD_PROBES,
               # the exact URL of a configured portal is still not a name
               "/probe?target=" + simulator.portal_url("main"),
               "/probe?target=" + "a" * 3000]
    before = outgoing(simulator)
    for path in targets:
        answer = ex.get(path)
        assert answer.status == 400, (path, answer.status, answer.body)
        assert b"X-Injected" not in b"".join(f"{k}: {v}".encode()
                                             for k, v in answer.headers.items())
    assert outgoing(simulator) == before, "a refused probe reached the portal"
    # A URL too long for the request line is refused too, still with nothing sent.
    assert ex.get("/probe?target=" + "a" * 70000).status in (400, 414)
    assert outgoing(simulator) == before
    # The control: a good probe does reach the portal.
    samples = assert_complete(ex.get("/probe?target=main"))
    assert value(samples, "docspace_up", portal="main") == 1.0
    assert outgoing(simulator) != before


# --- paths and methods -------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,codes", [
    ("GET", "/nope", {404}),
    ("GET", "/metrics/", {404}),
    ("GET", "/../metrics", {404}),
    ("GET", "/-/", {404}),
    ("GET", "/-/reload", {405}),
    ("POST", "/metrics", {405}),
    ("POST", "/probe?target=main", {405}),
    ("POST", "/", {405}),
    ("POST", "/nope", {404}),
    ("PUT", "/metrics", {405}),
    ("DELETE", "/metrics", {405}),
    ("PATCH", "/-/reload", {405}),
    ("OPTIONS", "/metrics", {405}),
    ("PUT", "/nope", {404, 405}),
    ("TRACE", "/metrics", {501}),
    ("CONNECT", "127.0.0.1:1", {501}),
    ("BREW", "/metrics", {501}),
])
def test_unknown_paths_and_wrong_methods(
        method: str, path: str, codes: set[int], simulator: Simulator,
        config: Config, exporters: Callable[..., RunningExporter]) -> None:
    ex = exporters(config)
    before = outgoing(simulator)
    answer = ex.get(path, method=method)
    assert answer.status in codes, (method, path, answer.status)
    assert outgoing(simulator) == before
    assert ex.get("/-/healthy").status == 200


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /metrics HTTP/9.9\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
    b"GET /probe?target=\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nConnection: close"
    b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello, on http
    b"\x00" * 1024,
]


def test_malformed_requests_never_500_and_server_survives(
        simulator: Simulator, config: Config,
        exporters: Callable[..., RunningExporter]) -> None:
    ex = exporters(config)
    for data in MALFORMED:
        # Requests without a line end are never answered; give up on those quickly.
        reply = raw_exchange(ex.port, data, timeout=1.5)
        status_line = reply.split(b"\r\n", 1)[0]
        assert b" 500 " not in status_line, (data[:40], status_line)
        assert ex.get("/-/healthy").status == 200


@pytest.mark.parametrize("length", [b"\xb2", b"1\xb2", b"\xb3\xb9"])
def test_a_content_length_of_non_ascii_digits_is_answered(
        length: bytes, config: Config, exporters: Callable[..., RunningExporter]) -> None:
    """A Content-Length whose characters str.isdigit() takes but int() does not ('²', read
    as Latin-1) reached int() and ended the request with a traceback and no answer. It is
    now a length we cannot use: the request is answered and the connection closed."""
    ex = exporters(config)
    reply = raw_exchange(ex.port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         + length + b"\r\n\r\n", timeout=5)
    assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == b"200", reply[:80]
    assert b"connection: close" in reply.lower()


@pytest.mark.parametrize("header", [
    "0", "-1", "abc", "nan", "inf", "-inf", "1e309", "", " ", "3,3", "0x10", "1_0",
])
def test_odd_scrape_timeout_headers(header: str, config: Config,
                                    exporters: Callable[..., RunningExporter]) -> None:
    ex = exporters(config)
    samples = assert_complete(ex.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": header}))
    assert value(samples, "docspace_up", portal="main") == 1.0


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=abc",
    "application/openmetrics-text; version=99.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=bogus",
    "text/plain; version=0.0.4; escaping=underscores",
    "*/*;q=abc",
    ";;;,,,",
])
def test_odd_accept_headers_get_an_exposition(accept: str, config: Config,
                                              exporters: Callable[..., RunningExporter]
                                              ) -> None:
    ex = exporters(config)
    answer = ex.get("/metrics", {"Accept": accept})
    assert answer.status == 200, accept
    assert b"docspace_up" in answer.body


def test_client_that_leaves_mid_scrape(simulator: Simulator, config: Config,
                                       exporters: Callable[..., RunningExporter]
                                       ) -> None:
    """A scraper that hangs up while its portals are still being asked leaves no damage."""
    simulator.portal("main").latency = 0.5
    ex = exporters(config)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", ex.port)) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    samples = assert_complete(ex.get("/metrics"))
    assert value(samples, "docspace_up", portal="main") == 1.0


# --- basic auth --------------------------------------------------------------------------------


@pytest.fixture
def web_config_path(tmp_path: Path) -> Iterator[Path]:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n", encoding="utf-8")
    yield path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


BAD_AUTH = [
    None,
    "",
    "Basic",
    "Basic ",
    "Basic !!!!",
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    "Basic " + base64.b64encode(f"{USER}:".encode()).decode(),
    "Basic " + base64.b64encode(f":{PASSWORD}".encode()).decode(),
    basic(USER, "wrong"),
    basic(USER, PASSWORD + " "),
    basic("root", PASSWORD),
    basic(USER, "x" * 5000),  # bcrypt takes 72 bytes; newer releases raise beyond
    basic(USER, "pass\x00word"),
    basic(USER, PASSWORD)[:-2],  # truncated base64
    "Bearer " + PASSWORD,
    "Digest username=\"prometheus\"",
    "Basic " + "A" * 20000,
    PASSWORD,
]


def test_basic_auth_rejects_everything_else_with_401(
        simulator: Simulator, config: Config, web_config_path: Path,
        exporters: Callable[..., RunningExporter]) -> None:
    ex = exporters(config, web=load_web_config(str(web_config_path)))
    before = outgoing(simulator)
    for path in ("/metrics", "/probe?target=main", "/", "/nope"):
        for header in BAD_AUTH:
            headers = {} if header is None else {"Authorization": header}
            answer = ex.get(path, headers)
            assert answer.status == 401, (path, header and header[:30], answer.status)
            assert answer.headers.get("www-authenticate", "").startswith("Basic ")
    # POST /-/reload is guarded too.
    assert ex.get("/-/reload", {"Authorization": basic(USER, "wrong")}, method="POST"
                  ).status == 401
    assert outgoing(simulator) == before, "an unauthenticated request reached a portal"
    # Health endpoints stay open for probes; the right credentials open the rest.
    assert ex.get("/-/healthy").status == 200
    assert ex.get("/-/ready").status == 200
    ok = ex.get("/metrics", {"Authorization": basic(USER, PASSWORD)})
    assert value(assert_complete(ok), "docspace_up", portal="main") == 1.0


def test_basic_auth_with_raw_header_bytes(config: Config, web_config_path: Path,
                                          exporters: Callable[..., RunningExporter]
                                          ) -> None:
    """Header bytes http.client would refuse to send (latin-1 beyond ASCII, lone CR)."""
    ex = exporters(config, web=load_web_config(str(web_config_path)))
    for value_bytes in (b"Basic \xe9\xe9\xe9", b"\xff\xff", b"Basic cHJvbWV0aGV1czp4\r",
                        b"Basic cHJvbWV0aGV1czp4 \t "):
        reply = raw_exchange(ex.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close"
                             b"\r\nAuthorization: " + value_bytes + b"\r\n\r\n")
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.split(b" ")[1] in (b"400", b"401"), (value_bytes, status_line)
    assert ex.get("/-/healthy").status == 200


# --- TLS and client certificates ---------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


def tls_web_config(tmp_path: Path, certs: Certs, auth_type: str) -> Path:
    path = tmp_path / "web-tls.yml"
    path.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certs.server_cert}\n"
        f"  key_file: {certs.server_key}\n"
        f"  client_ca_file: {certs.ca}\n"
        f"  client_auth_type: {auth_type}\n", encoding="utf-8")
    return path


def client_context(certs: Certs, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def test_tls_client_auth_required(
        simulator: Simulator, config: Config, certs: Certs, tmp_path: Path,
        exporters: Callable[..., RunningExporter]) -> None:
    web = load_web_config(str(tls_web_config(tmp_path, certs, "RequireAndVerifyClientCert")))
    ex = exporters(config, web=web)
    before = outgoing(simulator)

    # No client certificate: the handshake is refused (TLS 1.3 reports it on first read).
    with pytest.raises(OSError):
        ex.get("/metrics", context=client_context(certs), timeout=10)
    # A certificate no configured CA signed: refused as well.
    with pytest.raises(OSError):
        ex.get("/metrics", context=client_context(certs, certs.rogue_cert, certs.rogue_key),
               timeout=10)
    # Plain HTTP on the TLS port gets no HTTP answer.
    reply = raw_exchange(ex.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert not reply.startswith(b"HTTP/1.1 200")
    assert outgoing(simulator) == before, "a refused client caused an upstream request"

    # A client that opens TCP and never says hello does not block anyone: handshakes run
    # in the worker threads, not in accept().
    with socket.create_connection(("127.0.0.1", ex.port)):
        good = client_context(certs, certs.client_cert, certs.client_key)
        answer = ex.get("/metrics", context=good, timeout=10)
    assert value(assert_complete(answer), "docspace_up", portal="main") == 1.0
    assert ex.get("/probe?target=main", context=good).status == 200
    assert ex.get("/-/healthy", context=good).status == 200


def test_tls_without_client_auth_still_verifies_nothing_extra(
        config: Config, certs: Certs, tmp_path: Path,
        exporters: Callable[..., RunningExporter]) -> None:
    """The control: with VerifyClientCertIfGiven a client without a certificate is served,
    and one with a rogue certificate is still refused."""
    web = load_web_config(str(tls_web_config(tmp_path, certs, "VerifyClientCertIfGiven")))
    ex = exporters(config, web=web)
    assert ex.get("/-/healthy", context=client_context(certs)).status == 200
    with pytest.raises(OSError):
        ex.get("/-/healthy", context=client_context(certs, certs.rogue_cert, certs.rogue_key))
