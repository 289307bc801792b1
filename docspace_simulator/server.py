"""The HTTP side of the simulator: one threaded server, many portals under /{portal}/api/2.0/.

This package deliberately imports nothing from the exporter package (nor requests/yaml): it is
built from the wire-format notes (docs/docspace-api.md), so a mistake in the exporter's parsers
cannot hide in here.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from docspace_simulator.app import answer
from docspace_simulator.scenarios import SCENARIOS, SimPortal
from docspace_simulator.transport import Request, SimHandler, SimServer
from docspace_simulator.wire import (
    AUTH_LOG_LIMIT,
    CT_JSON,
    EMPTY_404,
    EMPTY_405,
    MAX_REQUEST_BODY,
    Resp,
    compact,
)

__all__ = ["ENDPOINTS", "Request", "Simulator"]

# Counter names of request_count(); the same words as the exporter's `endpoint` label.
ENDPOINTS: tuple[str, ...] = (
    "schedule", "backup_progress", "restore_progress", "history", "login", "settings", "tariff",
)
# A stop ends a request's wait (latency, a hanging scenario) within this many seconds.
SLEEP_SLICE = 0.1
_ROUTES = {
    "getbackupschedule": "schedule",
    "getbackupprogress": "backup_progress",
    "getrestoreprogress": "restore_progress",
    "getbackuphistory": "history",
}


class Simulator:
    """A DocSpace backup API on loopback serving many portals under /{portal}/api/2.0/..."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        port_per_portal: bool = False,
    ) -> None:
        """`ssl_context` (server side): portals answer over HTTPS. `port_per_portal`: each
        portal also listens on a port of its own (its URL uses that port), as several
        installations on one server do; the main port then stays plain HTTP (/_sim/)."""
        self.host = host
        self.port = port
        self.clock = clock
        self.latency = latency  # extra seconds before every answer, for all portals
        self._portals: dict[str, SimPortal] = {}
        self._tokens: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: SimServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url = ""
        self._shown = ""
        self._sockets: set[socket.socket] = set()
        self._tls = ssl_context
        self._main_tls = None if port_per_portal else ssl_context
        self._port_per_portal = port_per_portal
        self._listeners: dict[str, socket.socket] = {}  # portal name -> its own port
        self._ports: dict[str, int] = {}
        self._selector: selectors.BaseSelector | None = None
        self._acceptor: threading.Thread | None = None
        self._inflight_port: Counter[int] = Counter()
        self._max_inflight_port: Counter[int] = Counter()
        # counters
        self._requests: Counter[tuple[str, str]] = Counter()
        self._connections = 0
        self._inflight: Counter[str] = Counter()
        self._max_inflight: Counter[str] = Counter()
        self._auth: dict[str, deque[str]] = {}
        self._leaked = 0
        self._leaked_with_auth = 0

    # -- portals --

    def add_portal(self, name: str, scenario: str = "healthy", **kw: Any) -> SimPortal:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        if not name or name.startswith("_") or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"bad portal name {name!r}")
        kw.setdefault("added_at", self.clock())
        portal = SimPortal(name=name, scenario=scenario, **kw)
        with self._lock:
            if name in self._portals:
                raise ValueError(f"portal {name!r} already exists")
            self._portals[name] = portal
            self._tokens[name] = {}
            self._auth[name] = deque(maxlen=AUTH_LOG_LIMIT)
        if self._port_per_portal and self._server is not None:
            self._listen_for(name)
        return portal

    def _listen_for(self, name: str) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.host, 0))
        lsock.listen(128)
        lsock.setblocking(False)
        with self._lock:
            self._listeners[name] = lsock
            self._ports[name] = int(lsock.getsockname()[1])
        assert self._selector is not None
        self._selector.register(lsock, selectors.EVENT_READ)

    def _accept_loop(self) -> None:
        """One thread accepts on every portal's own port; each connection then gets a
        thread of the main server, as on the main port."""
        sel = self._selector
        assert sel is not None and self._server is not None
        while not self._stopping.is_set():
            for key, _ in sel.select(0.1):
                lsock = key.fileobj
                assert isinstance(lsock, socket.socket)
                try:
                    conn, addr = lsock.accept()
                except OSError:
                    continue
                conn.setblocking(True)
                if self._tls is not None:
                    conn = self._tls.wrap_socket(conn, server_side=True,
                                                 do_handshake_on_connect=False)
                self._server.process_request(conn, addr)

    def portal_port(self, name: str) -> int:
        """The port a portal's URL uses."""
        with self._lock:
            return self._ports.get(name, self.port)

    def max_concurrency_on_port(self, port: int) -> int:
        """The most requests of portals in flight at once on one port (one origin)."""
        with self._lock:
            return self._max_inflight_port[port]

    def set_scenario(self, name: str, scenario: str) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        self.portal(name).scenario = scenario

    def portal(self, name: str) -> SimPortal:
        return self._portals[name]

    @property
    def portals(self) -> tuple[SimPortal, ...]:
        return tuple(self._portals.values())

    def revoke_tokens(self, name: str) -> None:
        with self._lock:
            self._tokens[name].clear()

    # -- lifecycle --

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = SimServer((self.host, self.port), self, family)
        self.port = self._server.server_port
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in shown:
            shown = f"[{shown}]"
        self._shown = shown
        scheme = "https" if self._main_tls is not None else "http"
        self._base_url = f"{scheme}://{shown}:{self.port}"
        if self._port_per_portal:
            self._selector = selectors.DefaultSelector()
            for name in list(self._portals):
                self._listen_for(name)
            self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                              name=f"docspace-simulator-accept:{self.port}")
            self._acceptor.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"docspace-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None or self._stopping.is_set():
            return
        self._stopping.set()  # wakes every stalled request
        server.shutdown()
        server.server_close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=2)
        with self._lock:
            listeners = list(self._listeners.values())
        for lsock in listeners:
            lsock.close()
        if self._selector is not None:
            self._selector.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("simulator not started")
        return self._base_url

    def portal_url(self, name: str) -> str:
        if self._port_per_portal:
            scheme = "https" if self._tls is not None else "http"
            return f"{scheme}://{self._shown}:{self.portal_port(name)}/{name}"
        return f"{self.base_url}/{name}"

    # -- counters --

    def request_count(self, name: str | None = None, endpoint: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (p, e), n in self._requests.items()
                if (name is None or p == name) and (endpoint is None or e == endpoint)
            )

    @property
    def connections_opened(self) -> int:
        return self._connections

    def max_concurrency(self, name: str) -> int:
        with self._lock:
            return self._max_inflight[name]

    def auth_headers(self, name: str) -> list[str]:
        with self._lock:
            return list(self._auth.get(name, ()))

    @property
    def leaked_requests(self) -> int:
        return self._leaked

    @property
    def leaked_requests_with_auth(self) -> int:
        """How many of the leaked requests carried an Authorization header."""
        return self._leaked_with_auth

    def reset_counters(self) -> None:
        with self._lock:
            self._requests.clear()
            self._connections = 0
            self._max_inflight = Counter(self._inflight)
            self._max_inflight_port = Counter(self._inflight_port)
            for log in self._auth.values():
                log.clear()
            self._leaked = 0
            self._leaked_with_auth = 0

    def stats(self) -> dict[str, Any]:
        """The counters as JSON-ready data (also served at GET /_sim/stats); no secrets."""
        with self._lock:
            portals: dict[str, Any] = {}
            for name in self._portals:
                portals[name] = {
                    "requests": {e: self._requests[(name, e)] for e in ENDPOINTS},
                    "max_concurrency": self._max_inflight[name],
                    "in_flight": self._inflight[name],
                }
            return {
                "requests": sum(self._requests.values()),
                "connections_opened": self._connections,
                "leaked_requests": self._leaked,
                "leaked_requests_with_auth": self._leaked_with_auth,
                "portals": portals,
            }

    # -- server callbacks --

    def _on_connect(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._sockets.add(sock)

    def _on_disconnect(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _sleep(self, seconds: float) -> bool:
        """Wait; False if the simulator is stopping (the request must then be dropped).

        time.sleep in slices, not self._stopping.wait(): hundreds of handler threads waiting
        on that one Event all queue on its Condition's lock when their time is up together,
        and the answers of 300 calls at once went out ~20 ms later (benchmarks/floor.py:
        0.300 -> 0.278 s on 2 cores). A stop still ends a wait within one slice."""
        end = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, SLEEP_SLICE))
        return False

    def _handle(self, h: SimHandler, method: str) -> None:
        # Drain any request body first, so a keep-alive connection stays in sync.
        body = b""
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            h.close_connection = True
            h.send(Resp(411))
            return
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BODY:
            h.close_connection = True
            h.send(Resp(413 if length > 0 else 400))
            return
        if length:
            body = h.rfile.read(length)

        raw = h.path
        path, _, query = raw.partition("?")
        if path.startswith("/_sim/"):
            h.send(self._sim_path(h, path))
            return
        segs = path.split("/")
        if len(segs) > 2 and segs[-1] == "":
            segs.pop()  # one trailing slash is fine for ASP.NET routing
        portal = self._portals.get(segs[1]) if len(segs) > 1 else None
        endpoint: str | None = None
        if portal is not None and len(segs) >= 5 and segs[2].lower() == "api" and segs[3] == "2.0":
            if len(segs) == 6 and segs[4].lower() in ("backup", "portal"):
                endpoint = _ROUTES.get(segs[5].lower())
                if segs[4].lower() == "portal" and segs[5].lower() == "tariff":
                    endpoint = "tariff"
            elif len(segs) == 5 and segs[4].lower() == "authentication":
                endpoint = "login"
            elif len(segs) == 5 and segs[4].lower() == "settings":
                endpoint = "settings"
        if portal is None or endpoint is None:
            if self.latency > 0 and not self._sleep(self.latency):
                h.close_connection = True
                return
            h.send(EMPTY_404)
            return
        allowed = "POST" if endpoint == "login" else "GET"
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            h.send(EMPTY_405)
            return

        port = int(h.connection.getsockname()[1])
        req = Request(self, h, portal, endpoint, method, query, body, raw, port)
        name = portal.name
        auth = req.header("Authorization")
        with self._lock:
            self._requests[(name, endpoint)] += 1
            if auth is not None:
                self._auth[name].append(auth)
            self._inflight[name] += 1
            if self._inflight[name] > self._max_inflight[name]:
                self._max_inflight[name] = self._inflight[name]
            self._inflight_port[port] += 1
            if self._inflight_port[port] > self._max_inflight_port[port]:
                self._max_inflight_port[port] = self._inflight_port[port]
        try:
            if not self._sleep(self.latency + portal.latency):
                h.close_connection = True
                return
            self._serve(req)
        finally:
            self._leave(req)

    def _leave(self, req: Request) -> None:
        """The request no longer counts as in flight (once, whichever comes first: its
        answer is about to be written, or its handler is done)."""
        with self._lock:
            if req.left:
                return
            req.left = True
            self._inflight[req.portal.name] -= 1
            self._inflight_port[req.port] -= 1

    def _take_rate_limit(self, p: SimPortal) -> bool:
        with self._lock:
            if p.rate_limit_first <= 0:
                return False
            p.rate_limit_first -= 1
            return True

    def _sim_path(self, h: SimHandler, path: str) -> Resp:
        if path == "/_sim/stats":
            return Resp(200, compact(self.stats()).encode(), CT_JSON)
        if path == "/_sim/leak" or path.startswith("/_sim/leak/"):
            # Where a redirect must never lead: counts who arrives, and with what.
            with self._lock:
                self._leaked += 1
                if h.headers.get("Authorization") is not None:
                    self._leaked_with_auth += 1
            return Resp(200, b'{"leaked":true}', CT_JSON)
        return EMPTY_404

    def _serve(self, req: Request) -> None:
        """In front of the application (proxy, limiters, the scenario's faults), then it."""
        sc = req.portal.sc
        if sc.edge is not None and sc.edge(req):
            return
        if self._take_rate_limit(req.portal):
            req.send_rate_limited()
            return
        if sc.front is not None and sc.front(req):
            return
        resp = answer(self, req)
        if sc.writer is not None:
            sc.writer(req, resp)
        else:
            req.send(resp)
