"""HTTP routing (/, /metrics, /probe, /-/...) and the web config (TLS, basic auth)."""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__, exposition, sd, status
from exporter.client import wall_clock
from exporter.collector import (
    SCRAPE_TIMEOUT_OFFSET,
    DocSpaceCollector,
    ExporterCollector,
    Scraper,
)
from exporter.config import DEFAULT_MAX_CONCURRENCY, Config, ConfigError

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version", "cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
            "client_allowed_sans"}
# Health endpoints answer without basic auth so container and kubelet probes work; they
# reveal nothing but "up".
UNAUTHENTICATED_PATHS = {"/-/healthy", "/-/ready"}
MAX_QUERY = 4096


@dataclass(frozen=True)
class WebConfig:
    """exporter-toolkit's web-config.yml, the parts that apply to this exporter."""

    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)


def load_web_config(path: str | None) -> WebConfig:
    """Parse --web.config.file. Raises ConfigError listing every problem."""
    if not path:
        return WebConfig()
    problems: list[str] = []
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read web config: {exc.strerror or exc}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: web config is not valid YAML"]) from None
    if data is None:
        return WebConfig()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: web config must be a mapping"])
    base = Path(path).resolve().parent
    for key in sorted(set(data) - {"tls_server_config", "basic_auth_users",
                                   "http_server_config"}, key=str):
        problems.append(f"{key}: unknown key")

    ctx = None
    tls = data.get("tls_server_config")
    if tls is not None:
        ctx = _tls_context(tls, base, problems)

    users: dict[str, bytes] = {}
    raw_users = data.get("basic_auth_users")
    if raw_users is not None:
        if not isinstance(raw_users, dict):
            problems.append("basic_auth_users: must be a mapping of user: bcrypt hash")
        else:
            for user, hashed in raw_users.items():
                if not isinstance(user, str) or not isinstance(hashed, str) or not (
                    hashed.startswith(("$2a$", "$2b$", "$2y$"))
                ):
                    problems.append(f"basic_auth_users.{user}: must be a bcrypt hash "
                                    "($2a$/$2b$/$2y$), not a plain password")
                    continue
                users[user] = hashed.encode()

    headers: dict[str, str] = {}
    http_cfg = data.get("http_server_config")
    if http_cfg is not None:
        if not isinstance(http_cfg, dict):
            problems.append("http_server_config: must be a mapping")
        else:
            for key in sorted(set(http_cfg) - {"headers", "http2"}, key=str):
                problems.append(f"http_server_config.{key}: unknown key")
            raw_headers = http_cfg.get("headers") or {}
            if not isinstance(raw_headers, dict):
                problems.append("http_server_config.headers: must be a mapping")
            else:
                headers = {str(k): str(v) for k, v in raw_headers.items()}
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return WebConfig(ssl_context=ctx, users=users, headers=headers)


def _tls_context(tls: Any, base: Path, problems: list[str]) -> ssl.SSLContext | None:
    if not isinstance(tls, dict):
        problems.append("tls_server_config: must be a mapping")
        return None
    for key in sorted(set(tls) - TLS_KEYS, key=str):
        problems.append(f"tls_server_config.{key}: unknown key")

    def file_of(key: str) -> str | None:
        value = tls.get(key)
        if value is None:
            return None
        p = Path(str(value))
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            problems.append(f"tls_server_config.{key}: cannot read {value}")
            return None
        return str(p)

    cert, key = file_of("cert_file"), file_of("key_file")
    if "cert_file" not in tls or "key_file" not in tls:
        problems.append("tls_server_config: cert_file and key_file are both required")
    client_ca = file_of("client_ca_file")
    auth_type = tls.get("client_auth_type", "NoClientCert" if client_ca is None else
                        "RequireAndVerifyClientCert")
    if auth_type not in CLIENT_AUTH_TYPES:
        problems.append(f"tls_server_config.client_auth_type: must be one of "
                        f"{', '.join(CLIENT_AUTH_TYPES)}")
        return None
    if auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not client_ca:
        problems.append(f"tls_server_config.client_auth_type: {auth_type} needs client_ca_file")
    if cert is None or key is None or problems:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for k, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if k in tls:
            if tls[k] not in TLS_VERSIONS:
                problems.append(f"tls_server_config.{k}: must be one of {', '.join(TLS_VERSIONS)}")
                return None
            setattr(ctx, attr, TLS_VERSIONS[tls[k]])
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError):
        problems.append("tls_server_config: cert_file/key_file are not a matching PEM "
                        "certificate and key")
        return None
    if client_ca:
        try:
            ctx.load_verify_locations(client_ca)
        except (ssl.SSLError, OSError):
            problems.append("tls_server_config.client_ca_file: not a PEM certificate")
            return None
    ctx.verify_mode = CLIENT_AUTH_TYPES[auth_type]
    return ctx


class BasicAuth:
    """bcrypt check with a cache of recent successes: bcrypt costs ~50-250 ms by design,
    and Prometheus presents the same credentials every scrape (exporter-toolkit caches too)."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":  # auth schemes are case-insensitive (RFC 9110 §11.1)
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(b"\0".join([user.encode(), password.encode(), hashed])).digest()
        with self._lock:
            if key in self._ok:
                return True
        import bcrypt  # imported lazily: only needed with basic_auth_users

        try:
            good = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if good:
            with self._lock:
                if len(self._ok) > 1000:
                    self._ok.clear()
                self._ok.add(key)
        return good


class ExporterApp:
    """The running exporter: current config, reload state, scraper, self metrics."""

    def __init__(self, config: Config | None, *, loader: Callable[[], Config] | None = None,
                 scraper: Scraper | None = None, clock: Callable[[], float] | None = None,
                 telemetry_path: str = "/metrics", on_config: Callable[[Config], None] | None
                 = None) -> None:
        self._clock = clock = clock or wall_clock
        self._loader = loader
        self._lock = threading.Lock()
        self._config = config
        self._reload_ok = config is not None
        self._reload_ts: float | None = clock() if config is not None else None
        self._on_config = on_config
        self.telemetry_path = telemetry_path
        self.last_scrape = status.LastScrape()  # what `/` shows
        self.scraper = scraper or Scraper(
            max_workers=config.max_concurrency if config else DEFAULT_MAX_CONCURRENCY,
            max_requests_per_host=config.max_requests_per_host if config else 8)
        # Built once in a scratch registry and added to each request's registry.
        scratch = CollectorRegistry()
        self._process = [ProcessCollector(registry=scratch), PlatformCollector(registry=scratch),
                         GCCollector(registry=scratch)]
        if config is not None and on_config is not None:
            on_config(config)

    @property
    def config(self) -> Config | None:
        with self._lock:
            return self._config

    def state(self) -> tuple[bool, float | None, Config | None]:
        with self._lock:
            return self._reload_ok, self._reload_ts, self._config

    def reload(self) -> list[str]:
        """Load the config again. Returns the problems (empty on success); on failure the
        old config keeps serving."""
        if self._loader is None:
            return ["this exporter runs without a config file (--demo); nothing to reload"]
        try:
            cfg = self._loader()
        except ConfigError as exc:
            with self._lock:
                self._reload_ok = False
            log.error("config reload failed; keeping the previous config",
                      extra={"problems": len(exc.problems)})
            for p in exc.problems:
                log.error("config problem", extra={"problem": p})
            return list(exc.problems)
        except Exception as exc:  # noqa: BLE001 - a reload must not kill the exporter
            with self._lock:
                self._reload_ok = False
            log.exception("config reload failed")
            return [f"unexpected error: {type(exc).__name__}"]
        with self._lock:
            self._config = cfg
            self._reload_ok = True
            self._reload_ts = self._clock()
        self.scraper.retain(cfg.portals)
        self.last_scrape.retain(p.name for p in cfg.portals)
        if self._on_config is not None:
            self._on_config(cfg)
        log.info("config reloaded", extra={"portals": len(cfg.portals)})
        return []

    def registry(self, target: str | None, scrape_timeout: float | None) -> CollectorRegistry:
        """A fresh registry per request: the portals are queried when it is collected."""
        cfg = self.config
        reg = CollectorRegistry(auto_describe=False)
        if target is None:
            portals = list(cfg.portals) if cfg else []
            reg.register(DocSpaceCollector(self.scraper, portals, scrape_timeout=scrape_timeout,
                                           clock=self._clock,
                                           on_result=self.last_scrape.record))
            reg.register(ExporterCollector(self.state))
            for c in self._process:
                reg.register(c)
        else:
            portal = cfg.portal(target) if cfg else None
            portals = [portal] if portal else []
            reg.register(DocSpaceCollector(self.scraper, portals, scrape_timeout=scrape_timeout,
                                           include_errors_for_all=False, clock=self._clock,
                                           on_result=self.last_scrape.record))
        return reg


def scrape_timeout_from(header: str | None) -> float | None:
    """X-Prometheus-Scrape-Timeout-Seconds minus the offset, as blackbox_exporter does."""
    if not header:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    if not value > 0 or value != value or value == float("inf"):
        return None
    return max(0.1, value - SCRAPE_TIMEOUT_OFFSET)


class Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"docspace-backup-exporter/{__version__}"
    sys_version = ""
    # Idle keep-alive connections and slow clients are dropped after this long.
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http " + format % args)

    def handle_one_request(self) -> None:
        self.server.track(self, busy=True)
        try:
            super().handle_one_request()
        finally:
            self.server.track(self, busy=False)
            if self.server.stopping:
                self.close_connection = True

    def setup(self) -> None:
        super().setup()
        self.server.track(self, busy=False)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    # -- plumbing ---------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        if (
            len(body) > 1024
            and "gzip" in (self.headers.get("Accept-Encoding") or "")
            and code == 200
        ):
            body = gzip.compress(body, compresslevel=5)
            extra = dict(extra or {}, **{"Content-Encoding": "gzip"})
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in self.server.web.headers.items():
            self.send_header(k, v)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, code: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._send(code, (text.rstrip("\n") + "\n").encode(), extra=extra)

    def _authorized(self, path: str) -> bool:
        auth = self.server.basic_auth
        if not auth.enabled or path in UNAUTHENTICATED_PATHS:
            return True
        if auth.check(self.headers.get("Authorization")):
            return True
        self._text(401, "Unauthorized",
                   {"WWW-Authenticate": 'Basic realm="docspace-backup-exporter"'})
        return False

    def _route(self) -> tuple[str, str] | None:
        if len(self.path) > MAX_QUERY:
            self._text(414, "URI too long")
            return None
        parts = urlsplit(self.path)
        return parts.path or "/", parts.query

    # -- methods ----------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        path, query = routed
        if path == "/-/reload":
            self._text(405, "Use POST to reload", {"Allow": "POST"})
            return
        if not self._authorized(path):
            return
        app = self.server.app
        try:
            if path == app.telemetry_path:
                self._metrics(None)
            elif path == "/probe":
                self._probe(query)
            elif path == "/":
                self._landing()
            elif path == "/sd":
                self._sd()
            elif path == "/-/healthy":
                self._text(200, "Healthy")
            elif path == "/-/ready":
                if app.config is not None:
                    self._text(200, "Ready")
                else:
                    self._text(503, "Not ready: no config loaded")
            else:
                self._text(404, "Not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        routed = self._route()
        if routed is None:
            return
        path, _ = routed
        # Drain any request body so the connection stays usable.
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= 65536:
            self.rfile.read(int(length))
        elif length:
            self.close_connection = True
        if path != "/-/reload":
            known = path in (self.server.app.telemetry_path, "/probe", "/", "/sd",
                             "/-/healthy", "/-/ready")
            if known:
                self._text(405, "Method not allowed", {"Allow": "GET, HEAD"})
            else:
                self._text(404, "Not found")
            return
        if not self._authorized(path):
            return
        problems = self.server.app.reload()
        if problems:
            self._text(500, "failed to reload config:\n" + "\n".join(problems))
        else:
            self._text(200, "config reloaded")

    def _method_not_allowed(self) -> None:
        routed = self._route()
        if routed is None:
            return
        path = routed[0]
        if path == "/-/reload":
            self._text(405, "Method not allowed", {"Allow": "POST"})
        elif path in (self.server.app.telemetry_path, "/probe", "/", "/sd", "/-/healthy",
                      "/-/ready"):
            self._text(405, "Method not allowed", {"Allow": "GET, HEAD"})
        else:
            self._text(404, "Not found")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _metrics(self, target: str | None) -> None:
        timeout = scrape_timeout_from(self.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
        registry = self.server.app.registry(target, timeout)
        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
        except (TypeError, ValueError):
            # prometheus_client fails on some malformed Accept values (an OpenMetrics
            # `version=abc`), which dropped the connection without an answer; such a
            # header gets the classic text format, as an absent one does.
            encoder, content_type = choose_encoder("")
        # Same bytes as encoder(registry), in a fraction of the CPU (exporter/exposition.py).
        self._send(200, exposition.encode(registry, encoder), content_type)

    def _probe(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True)
        targets = params.get("target", [])
        if len(targets) != 1 or not targets[0]:
            self._text(400, "Need exactly one target parameter: /probe?target=<portal name>")
            return
        target = targets[0]
        cfg = self.server.app.config
        if cfg is None or cfg.portal(target) is None:
            # Only configured names: the exporter never sends credentials to a URL that
            # is not in its config, so a URL here is refused too.
            self._text(400, "Unknown target: target must be the name of a configured portal")
            return
        self._metrics(target)

    def _landing(self) -> None:
        """The status page (exporter/status.py): the last scrape of each portal."""
        app = self.server.app
        cfg = app.config
        page = status.render(cfg.portals if cfg else (), app.last_scrape, version=__version__,
                             telemetry_path=app.telemetry_path, now=wall_clock())
        self._send(200, page, "text/html; charset=utf-8")

    def _sd(self) -> None:
        """Prometheus http_sd targets: every configured portal as a /probe target of this
        exporter, addressed as the client reached it (exporter/sd.py)."""
        try:
            address = sd.target_address(self.headers.get("Host"), self.server.server_address[1])
        except sd.BadHost as exc:
            self._text(400, str(exc))
            return
        cfg = self.server.app.config
        body = sd.document(cfg.portals if cfg else (), address,
                           tls=isinstance(self.connection, ssl.SSLSocket))
        self._send(200, body, "application/json")


class ExporterHTTPServer(ThreadingHTTPServer):
    """Threaded server that drains in-flight requests on shutdown and does TLS handshakes
    in the worker threads (a slow client must not block accept())."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128
    # Each connection holds a thread; beyond this many, new ones are closed at once so slow
    # or idle clients cannot pin unbounded threads and memory.
    max_connections = 256

    def __init__(self, address: tuple[str, int], app: ExporterApp, web: WebConfig) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.web = web
        self.basic_auth = BasicAuth(web.users)
        self.stopping = False
        self._conns: dict[Handler, bool] = {}
        self._active = 0
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6 and address[0] == "::":
            # ":PORT" means every interface, IPv4 included.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
        if full:
            log.warning("too many connections; closing a new one",
                        extra={"max_connections": self.max_connections})
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._active -= 1

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.web.ssl_context is not None:
            sock = self.web.ssl_context.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(10)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake failed", extra={"err": type(exc).__name__})
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error", exc_info=True)

    def track(self, handler: Handler, *, busy: bool) -> None:
        with self._conns_lock:
            self._conns[handler] = busy

    def untrack(self, handler: Handler) -> None:
        with self._conns_lock:
            self._conns.pop(handler, None)

    def graceful_shutdown(self) -> None:
        """Stop accepting, let in-flight requests answer, close idle keep-alive
        connections. Call from a thread other than the one in serve_forever()."""
        self.stopping = True
        self.shutdown()
        with self._conns_lock:
            idle = [h for h, busy in self._conns.items() if not busy]
        for h in idle:
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
