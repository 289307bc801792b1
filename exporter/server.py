"""The HTTP server: threads with a connection cap, TLS handshakes in the worker threads
(tlsserver.py), the web config re-read when its files change (webconfig.py), and a
graceful shutdown. Requests are answered by handler.py from its route table."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from exporter.app import ExporterApp
from exporter.auth import BasicAuth, TokenBucket
from exporter.config import ConfigError
from exporter.handler import Handler, Route, default_routes
from exporter.tlsserver import client_allowed, peer_sans
from exporter.webconfig import WebConfig, files_signature, load_web_config

log = logging.getLogger(__name__)


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
            # A verified client certificate without one of client_allowed_sans: no HTTP.
            cert = request.getpeercert()
            if not client_allowed(cert, self.web.client_allowed_sans):
                log.debug("client certificate has none of client_allowed_sans",
                          extra={"sans": len(peer_sans(cert))})
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
