"""HTTP serving: the route table (/, /metrics, /probe, /-/...), reloads, and the web config
(exporter/webconfig.py) applied to every connection and request."""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
from exporter.webconfig import (
    BasicAuth,
    TokenBucket,
    WebConfig,
    files_signature,
    load_web_config,
    peer_sans,
)

__all__ = ["ExporterApp", "ExporterHTTPServer", "Handler", "Route", "WebConfig",
           "load_web_config"]

log = logging.getLogger(__name__)

MAX_QUERY = 4096


class ExporterApp:
    """The running exporter: current config, reload state, scraper, self metrics."""

    # How long POST /-/reload waits for its reload before answering 503.
    RELOAD_WAIT = 60.0

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
        # Reloads: requests are numbered; one worker thread at a time runs the loader for
        # the newest request and answers every request up to it (last request wins). An
        # RLock, because SIGHUP's handler may interrupt the main thread anywhere.
        self._reload_cond = threading.Condition(threading.RLock())
        self._reload_requested = 0
        self._reload_done = 0
        self._reload_result: list[str] = []
        self._reload_worker: threading.Thread | None = None
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

    # -- reloads ------------------------------------------------------------------------------

    def request_reload(self) -> int:
        """Ask for a reload (SIGHUP, POST /-/reload); returns a ticket for wait_reload().
        Never blocks on a running reload: safe in a signal handler."""
        with self._reload_cond:
            self._reload_requested += 1
            ticket = self._reload_requested
            if self._reload_worker is None:
                self._reload_worker = threading.Thread(target=self._reload_loop,
                                                       name="reload", daemon=True)
                self._reload_worker.start()
            return ticket

    def wait_reload(self, ticket: int, timeout: float | None = None) -> list[str] | None:
        """The problems of the reload that served `ticket` (empty: success), or None if it
        has not finished within `timeout`."""
        with self._reload_cond:
            if not self._reload_cond.wait_for(lambda: self._reload_done >= ticket, timeout):
                return None
            return list(self._reload_result)

    def reload(self) -> list[str]:
        """Reload and wait for it. Returns the problems (empty on success); on failure the
        old config keeps serving."""
        result = self.wait_reload(self.request_reload())
        assert result is not None  # no timeout
        return result

    def _reload_loop(self) -> None:
        while True:
            with self._reload_cond:
                if self._reload_done >= self._reload_requested:
                    self._reload_worker = None
                    return
                target = self._reload_requested
            problems = self._reload_now()
            with self._reload_cond:
                self._reload_done = target
                self._reload_result = problems
                self._reload_cond.notify_all()

    def _reload_now(self) -> list[str]:
        """The loader and the swap; only ever run by the reload worker, one at a time."""
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


@dataclass(frozen=True)
class Route:
    """One path: the methods it answers and the handler method that answers them."""

    methods: tuple[str, ...]
    answer: Callable[[Handler, str], None]  # (handler, query string)
    auth: bool = True  # basic auth applies (when basic_auth_users is set)


def default_routes(telemetry_path: str) -> dict[str, Route]:
    """The route table: every path the exporter answers. 404, 405 and Allow come from it."""
    get = ("GET", "HEAD")
    # Health endpoints answer without basic auth so container and kubelet probes work;
    # they reveal nothing but "up".
    return {
        telemetry_path: Route(get, lambda h, q: h._metrics(None)),
        "/probe": Route(get, lambda h, q: h._probe(q)),
        "/": Route(get, lambda h, q: h._landing()),
        "/sd": Route(get, lambda h, q: h._sd()),
        "/-/healthy": Route(get, lambda h, q: h._text(200, "Healthy"), auth=False),
        "/-/ready": Route(get, lambda h, q: h._ready(), auth=False),
        "/-/reload": Route(("POST",), lambda h, q: h._reload()),
    }


class Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"docspace-backup-exporter/{__version__}"
    # A request line without a version is not HTTP/0.9 here: it gets a 400 with a status
    # line (the base class would answer a bare body, as HTTP/0.9 did).
    default_request_version = "HTTP/1.0"
    # Idle keep-alive connections and slow clients are dropped after this long.
    timeout = 120

    def version_string(self) -> str:
        return self.server_version  # the base class appends " " + sys_version

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
        try:
            # Each answer is one write; without Nagle it leaves at once instead of waiting
            # for the client's delayed ACK of the previous packet (~40 ms per request).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.track(self, busy=False)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.requestline.split()) < 3:
            self.send_error(400, "Bad request: the request line has no HTTP version")
            return False
        return True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The base class's errors (bad request line, 414, 431, 501) as plain text like
        every other answer, not Python's HTML page."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        text = phrase if not message or message == phrase else f"{phrase}: {message[:200]}"
        self._text(code, text, {"Connection": "close"})

    # -- plumbing ---------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        """Status line, headers and body in ONE write: separate small writes make the
        second wait for the client's delayed ACK on a kept-alive connection."""
        headers = getattr(self, "headers", None)
        if (
            len(body) > 1024
            and code == 200
            and headers is not None
            and "gzip" in (headers.get("Accept-Encoding") or "")
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
        if self.close_connection and "Connection" not in (extra or {}):
            # Say so: the client must not send its next request on this connection.
            self.send_header("Connection", "close")
        head = b"".join(getattr(self, "_headers_buffer", [])) + b"\r\n"
        self._headers_buffer: list[bytes] = []
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _text(self, code: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._send(code, (text.rstrip("\n") + "\n").encode(), extra=extra)

    def _authorized(self) -> bool:
        auth = self.server.basic_auth
        if auth.check(self.headers.get("Authorization")):
            return True
        self._text(401, "Unauthorized",
                   {"WWW-Authenticate": 'Basic realm="docspace-backup-exporter"'})
        return False

    def _drain_body(self) -> None:
        """Read a request body so the connection stays usable (or close it if too big)."""
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= 65536:
            self.rfile.read(int(length))
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

    # -- dispatch: every method goes through the route table ----------------------------

    def _dispatch(self) -> None:
        try:
            self._drain_body()
            self.server.refresh_web()
            if self.server.web_broken:
                self._text(500, "Internal Server Error: the web config is invalid; see the log")
                return
            limiter = self.server.limiter
            if limiter is not None and not limiter.allow():
                self._text(429, "Too Many Requests")
                return
            if len(self.path) > MAX_QUERY:
                self._text(414, "URI too long")
                return
            parts = urlsplit(self.path)
            path, query = parts.path or "/", parts.query
            route = self.server.routes.get(path)
            needs_auth = self.server.basic_auth.enabled and (route is None or route.auth)
            if needs_auth and not self._authorized():
                return
            if route is None:
                self._text(404, "Not found")
            elif self.command not in route.methods:
                self._text(405, "Method not allowed", {"Allow": ", ".join(route.methods)})
            else:
                route.answer(self, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    # -- answers ----------------------------------------------------------------------

    def _ready(self) -> None:
        if self.server.app.config is not None:
            self._text(200, "Ready")
        else:
            self._text(503, "Not ready: no config loaded")

    def _reload(self) -> None:
        app = self.server.app
        problems = app.wait_reload(app.request_reload(), timeout=app.RELOAD_WAIT)
        if problems is None:
            self._text(503, "reload still running; see the reload metrics for its result")
        elif problems:
            self._text(500, "failed to reload config:\n" + "\n".join(problems))
        else:
            self._text(200, "config reloaded")

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

    def __init__(self, address: tuple[str, int], app: ExporterApp, web: WebConfig, *,
                 web_path: str | None = None, web_check_interval: float = 1.0) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._apply_web(web)
        # exporter-toolkit reads the web config on every request, so rotated certificates
        # and changed users apply at once. Here: when one of its files changed, checked at
        # most every web_check_interval seconds when a connection is accepted.
        self._web_path = web_path
        self._web_check_interval = web_check_interval
        self._web_checked = time.monotonic()
        self._web_signature = files_signature(web.files)
        self._web_lock = threading.Lock()
        self.web_broken = False  # the file on disk is invalid: every request gets 500
        # The route table; more routes may be added before serving (add_route).
        self.routes: dict[str, Route] = default_routes(app.telemetry_path)
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

    def add_route(self, path: str, methods: tuple[str, ...],
                  answer: Callable[[Handler, str], None], *, auth: bool = True) -> None:
        self.routes[path] = Route(methods, answer, auth)

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

    def _apply_web(self, web: WebConfig) -> None:
        self.web = web
        self.basic_auth = BasicAuth(web.users)
        self.limiter = TokenBucket(web.rate_limit) if web.rate_limit else None

    def refresh_web(self) -> None:
        """Load the web config again if one of its files changed (called per connection
        and per request, at most once per web_check_interval). An invalid file is not
        served around: like exporter-toolkit, every request fails until it is fixed."""
        if self._web_path is None:
            return
        now = time.monotonic()
        if now - self._web_checked < self._web_check_interval:
            return
        if not self._web_lock.acquire(blocking=False):
            return  # another thread is at it; this request goes on with the current one
        try:
            self._web_checked = now
            old_files = self.web.files
            before = files_signature(old_files)
            if before == self._web_signature:
                return
            try:
                web = load_web_config(self._web_path)
            except ConfigError as exc:
                self._web_signature = before
                if not self.web_broken:
                    log.error("web config is invalid; answering 500 until it is fixed",
                              extra={"problems": len(exc.problems)})
                    for problem in exc.problems:
                        log.error("invalid web config", extra={"problem": problem})
                self.web_broken = True
                return
            self._apply_web(web)
            # The signature taken before loading, so a change during the load is seen
            # next time (a new set of files: their signature now).
            self._web_signature = (before if web.files == old_files
                                   else files_signature(web.files))
            self.web_broken = False
            log.info("web config reloaded", extra={"tls": web.ssl_context is not None,
                                                   "users": len(web.users)})
        finally:
            self._web_lock.release()

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        self.refresh_web()
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
            allowed = self.web.client_allowed_sans
            if allowed is not None:
                # exporter-toolkit's VerifyPeerCertificate: the (verified) client
                # certificate must carry one of the listed SANs, else no HTTP at all.
                sans = peer_sans(request.getpeercert())
                if not any(s in allowed for s in sans):
                    log.debug("client certificate has none of client_allowed_sans",
                              extra={"sans": len(sans)})
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
