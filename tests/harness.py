"""The test harness: the exporter served in a thread (`RunningExporter`) or run as the CLI in a
subprocess (`ExporterProcess`), simulator portals as exporter config, hostile raw servers,
certificates, HTTP and exposition helpers. Loopback only, everything cleaned up.

The fixtures that hand these out (`exporters`, `exporter`, `cli_processes`, `sim`, ...) are in
tests/conftest.py; test modules import the helpers from here (`from tests.harness import ...`).
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from docspace_simulator import SimPortal, Simulator
from exporter.app import ExporterApp
from exporter.config import (
    ApiKeyAuth,
    Config,
    PasswordAuth,
    PortalConfig,
    Secret,
    TokenAuth,
    load_config,
)
from exporter.server import ExporterHTTPServer
from exporter.webconfig import WebConfig

ROOT = Path(__file__).resolve().parents[1]
# What Prometheus sends with a 3 s scrape_timeout; the contract's deadline is this header.
SCRAPE_TIMEOUT = 3.0
SCRAPE_HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
ENDPOINTS = ("schedule", "backup_progress", "restore_progress", "history")
# The data series each endpoint feeds (contract §5); none may be served when it failed.
DATA_FAMILIES = {
    "schedule": (
        "docspace_backup_schedule_configured",
        "docspace_backup_schedule_info",
        "docspace_backup_schedule_expected_interval_seconds",
        "docspace_backup_schedule_backups_stored",
        "docspace_backup_schedule_last_backup_timestamp_seconds",
        "docspace_backup_schedule_last_backup_age_seconds",
    ),
    "backup_progress": (
        "docspace_backup_progress_ratio",
        "docspace_backup_completed",
        "docspace_backup_failed",
        "docspace_backup_status",
        "docspace_backup_warning",
    ),
    "restore_progress": (
        "docspace_restore_progress_ratio",
        "docspace_restore_completed",
        "docspace_restore_failed",
        "docspace_restore_status",
    ),
    "history": (
        "docspace_backup_history_backups",
        "docspace_backup_last_success_timestamp_seconds",
    ),
}

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


# --- HTTP --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # seconds from sending the request to the last byte of the answer

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1",
    context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request on a fresh connection (http.client: no proxies, no redirects)."""
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                      time.monotonic() - start)
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet; for malformed requests."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            if len(rest) >= int(line.split(b":", 1)[1]):
                                return b"".join(chunks)
        except TimeoutError:
            pass
        return b"".join(chunks)


def parse_samples(text: str) -> Samples:
    """Exposition text -> {(name, sorted labels): value}; raises if it does not parse."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series_of(samples: Samples, name: str, portal: str) -> list[tuple[str, Labels]]:
    return [k for k in samples if k[0] == name and ("portal", portal) in k[1]]


def assert_complete(answer: Answer) -> Samples:
    """A whole exposition: 200, ends with a newline, parses."""
    assert answer.status == 200, answer.body[:300]
    assert answer.body.endswith(b"\n")
    return parse_samples(answer.text)


def assert_no_data(samples: Samples, portal: str, endpoint: str) -> None:
    """No series of a failed endpoint (contract §5: never served stale)."""
    for fam in DATA_FAMILIES[endpoint]:
        found = series_of(samples, fam, portal)
        assert not found, f"{endpoint} failed but {found} is served"


def errors(samples: Samples, portal: str) -> dict[tuple[str, str], float]:
    """docspace_scrape_errors_total of one portal: {(endpoint, reason): count}."""
    out = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if name == "docspace_scrape_errors_total" and d.get("portal") == portal:
            out[(d["endpoint"], d["reason"])] = v
    return out


# --- the exporter --------------------------------------------------------------------------


@dataclass
class RunningExporter:
    """ExporterHTTPServer serving in a thread, exactly as the CLI wires it (minus signals)."""

    app: ExporterApp
    server: ExporterHTTPServer
    thread: threading.Thread
    context: ssl.SSLContext | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        kw.setdefault("context", self.context)
        return request(self.port, path, headers=headers, **kw)

    def scrape(self, path: str = "/metrics", timeout_header: bool = True) -> Answer:
        return self.get(path, dict(SCRAPE_HEADERS) if timeout_header else None)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.server.graceful_shutdown()
        self.thread.join(timeout=30)
        self.server.server_close()
        self.app.scraper.close()


def start_exporter(
    config: Config | None,
    *,
    web: WebConfig | None = None,
    loader: Callable[[], Config] | None = None,
    context: ssl.SSLContext | None = None,
) -> RunningExporter:
    app = ExporterApp(config, loader=loader)
    server = ExporterHTTPServer(("127.0.0.1", 0), app, web or WebConfig())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="exporter-under-test", daemon=True)
    thread.start()
    return RunningExporter(app, server, thread, context)


# --- exporter config of simulator portals ---


def portal_config(sim: Simulator, sp: SimPortal, *, auth: str = "api_key",
                  **kw: Any) -> PortalConfig:
    """An exporter PortalConfig for a simulator portal, with the chosen auth method."""
    a: ApiKeyAuth | TokenAuth | PasswordAuth
    if auth == "api_key":
        a = ApiKeyAuth(Secret(sp.api_key))
    elif auth == "token":
        assert sp.token
        a = TokenAuth(Secret(sp.token))
    else:
        assert sp.username and sp.password
        a = PasswordAuth(sp.username, Secret(sp.password))
    kw.setdefault("timeout", 5.0)
    return PortalConfig(name=sp.name, url=sim.portal_url(sp.name), auth=a, **kw)


@dataclass
class Running:
    app: ExporterApp
    server: ExporterHTTPServer
    url: str

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET", timeout: float = 30) -> tuple[int, dict[str, str], str]:
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def samples(self, path: str = "/metrics", headers: dict[str, str] | None = None
                ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = self.get(path, headers)
        assert status == 200, body
        return parse_samples(body)


# --- config files ------------------------------------------------------------------------------


def portal_entry(sim: Simulator, sp: SimPortal, **kw: Any) -> dict[str, Any]:
    """The YAML mapping of one simulator portal; its auth chosen from what the portal has."""
    entry: dict[str, Any] = {"name": sp.name, "url": sim.portal_url(sp.name)}
    if sp.username is not None and sp.password is not None:
        entry.update(username=sp.username, password=sp.password)
    elif sp.token is not None:
        entry["token"] = sp.token
    else:
        entry["api_key"] = sp.api_key
    entry.setdefault("timeout", "10s")
    entry.update(kw)
    return entry


def write_config(path: Path, portals: list[dict[str, Any]], **top: Any) -> Path:
    """Write atomically, so a reload never reads half a file."""
    doc = dict(top, portals=portals)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def config_of(path: Path) -> Config:
    return load_config(path)


# --- hostile servers ---------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_request_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """The next request's line and headers from `sock`; b"" when the peer closed first."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        head += chunk
    return head


class RawServer:
    """A loopback TCP (or TLS) server whose `respond(sock, request_head)` does anything a
    broken portal might: drip headers, gzip bombs, chunked floods. Records what it was sent."""

    def __init__(self, respond: Callable[[socket.socket, bytes, threading.Event], None], *,
                 context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.context = context
        self.stopping = threading.Event()
        self.requests: list[bytes] = []
        self.handshake_failures = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                if outer.context is not None:
                    try:
                        sock = outer.context.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        with outer._lock:
                            outer.handshake_failures += 1
                        return
                try:
                    head = read_request_head(sock)
                except OSError:
                    return
                if not head:
                    return
                with outer._lock:
                    outer.requests.append(head)
                try:
                    outer.respond(sock, head, outer.stopping)
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/portal"


# --- certificates ------------------------------------------------------------------------------


@dataclass
class Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate signed by the
    CA, and a self-signed certificate that no CA vouches for."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    files: dict[str, Path] = field(default_factory=dict)


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _certs_with_cryptography(directory)
    except ImportError:
        return _certs_with_openssl(directory)


def _certs_with_cryptography(d: Path) -> Certs:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
              ) -> tuple[Path, Path]:
        cp, kp = d / f"{stem}.crt", d / f"{stem}.key"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        return cp, kp

    def build(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              signer: ec.EllipticCurvePrivateKey, *, ca: bool, usage: Any = None,
              san: bool = False) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                critical=False)
        else:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), critical=False)
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("hardening test CA", ca_key, name("hardening test CA"), ca_key, ca=True)
    ca_path, _ = write("ca", ca_cert, ca_key)
    s_key = ec.generate_private_key(ec.SECP256R1())
    s_cert = build("127.0.0.1", s_key, ca_cert.subject, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    sc, sk = write("server", s_cert, s_key)
    c_key = ec.generate_private_key(ec.SECP256R1())
    c_cert = build("prometheus", c_key, ca_cert.subject, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    cc, ck = write("client", c_cert, c_key)
    r_key = ec.generate_private_key(ec.SECP256R1())
    r_cert = build("127.0.0.1", r_key, name("127.0.0.1"), r_key, ca=True, san=True)
    rc, rk = write("rogue", r_cert, r_key)
    return Certs(ca_path, sc, sk, cc, ck, rc, rk)


def _certs_with_openssl(d: Path) -> Certs:  # pragma: no cover - used without cryptography
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=hardening test CA")
    ext = d / "ext.cnf"
    ext.write_text("[s]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                   "[c]\nextendedKeyUsage=clientAuth\n")
    for stem, cn, section in (("server", "127.0.0.1", "s"), ("client", "prometheus", "c")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{stem}.crt", "-days", "2", "-extfile", "ext.cnf",
            "-extensions", section)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                 d / "client.key", d / "rogue.crt", d / "rogue.key")


# --- processes and memory ----------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@dataclass
class ExporterProcess:
    """The CLI (`python -m exporter`) as a subprocess; stderr (the log) collected."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        return request(self.port, path, headers=headers, **kw)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cli(config: Path, log_path: Path, *extra: str, ready_timeout: float = 20.0
              ) -> ExporterProcess:
    """Start the CLI with --config.file on a free loopback port; see run_cli."""
    return run_cli(["--config.file", str(config), *extra], log_path,
                   ready_timeout=ready_timeout)


def run_cli(args: list[str], log_path: Path, *, ready_timeout: float = 20.0
            ) -> ExporterProcess:
    """`python -m exporter ARGS` on a free loopback port, its output (the log) in log_path;
    returns once /-/healthy answers. The one way the tests start the exporter's CLI."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args, "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
    log_file.close()
    ep = ExporterProcess(proc, port, log_path)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exporter exited {proc.returncode}:\n{ep.log()}")
        try:
            return ep.get("/-/healthy", timeout=1).status == 200
        except OSError:
            return False

    if not wait_for(healthy, ready_timeout, 0.05):
        ep.stop()
        raise AssertionError(f"exporter did not come up:\n{ep.log()}")
    return ep
