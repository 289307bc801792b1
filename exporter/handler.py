"""Request handling: the route table (the one place paths are written; 404, 405 and Allow
come from it), basic auth and the rate limit per request, and every answer in one write."""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder

from exporter import __version__, exposition, sd, status
from exporter.clock import wall_clock
from exporter.collector import SCRAPE_TIMEOUT_OFFSET

if TYPE_CHECKING:
    from exporter.server import ExporterHTTPServer

# The name server.py logged under before the split: log lines ("logger") stay the same.
log = logging.getLogger("exporter.server")

MAX_QUERY = 4096


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
        if length and length.isascii() and length.isdigit() and int(length) <= 65536:
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
