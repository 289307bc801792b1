"""The HTTP plumbing: a threaded server, a handler that writes each answer in one piece, and
the Request object the scenario hooks and the application get."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from docspace_simulator.scenarios import SimPortal
from docspace_simulator.wire import REASONS, Resp, http_date

if TYPE_CHECKING:
    from docspace_simulator.server import Simulator

__all__ = ["Request", "SimHandler", "SimServer"]


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sim: Simulator, family: int) -> None:
        self.address_family = family
        self.sim = sim
        super().__init__(address, SimHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        ctx = self.sim._main_tls
        if ctx is not None:  # the handshake runs in the connection's thread (SimHandler.setup)
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed on loopback.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.sim._on_connect(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.sim._on_disconnect(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)) or self.sim._stopping.is_set():
            return  # a client went away or we are stopping: nothing worth printing
        super().handle_error(request, client_address)


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections and stuck writes end eventually
    server: SimServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()  # a failed handshake ends here (handle_error)
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return "nginx"

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def do_HEAD(self) -> None:
        self.server.sim._handle(self, "HEAD")

    def do_PATCH(self) -> None:
        self.server.sim._handle(self, "PATCH")

    # One write per response: headers and body together, so no Nagle/delayed-ACK stall.
    def head_bytes(self, resp: Resp, length: int | None = None) -> bytes:
        n = len(resp.body) if length is None else length
        lines = [
            f"HTTP/1.1 {resp.code} {REASONS.get(resp.code, 'Unknown')}\r\n"
            f"Server: nginx\r\nDate: {http_date()}\r\n"
        ]
        if resp.ctype:
            lines.append(f"Content-Type: {resp.ctype}\r\n")
        lines.append(f"Content-Length: {n}\r\n")
        for k, v in resp.headers:
            lines.append(f"{k}: {v}\r\n")
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def send(self, resp: Resp) -> None:
        body = b"" if self.command == "HEAD" else resp.body
        self.wfile.write(self.head_bytes(resp, len(resp.body)) + body)





@dataclass
class Request:
    """One API request to a portal, as the scenario hooks and the application see it."""

    sim: Simulator
    handler: SimHandler
    portal: SimPortal
    endpoint: str  # one of ENDPOINTS
    method: str
    query: str
    body: bytes
    raw: str  # the request target: path and query
    port: int = 0  # the listening port it came in on
    left: bool = False  # no longer counted in flight (Simulator._leave)

    def header(self, name: str) -> str | None:
        return self.handler.headers.get(name)

    @property
    def href(self) -> str:
        """The request's URL as the server writes it into `links` (always http://)."""
        sim = self.sim
        host = self.header("Host") or f"{sim.host}:{sim.port}"
        return f"http://{host}{self.raw}"

    def send(self, resp: Resp) -> None:
        """Write the whole answer (head and body in one write). The request stops counting
        as in flight just before: a client may send its next call the moment the answer is
        in, sooner than this thread gets back to count it out."""
        self.sim._leave(self)
        self.handler.send(resp)

    def head(self, resp: Resp, length: int | None = None) -> bytes:
        """The status line and headers of `resp`, with Content-Length `length` if given."""
        return self.handler.head_bytes(resp, length)

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(data)

    def close(self) -> None:
        """Close the connection after this request."""
        self.handler.close_connection = True

    def sleep(self, seconds: float) -> bool:
        """Wait; False if the simulator is stopping (then drop the request)."""
        return self.sim._sleep(seconds)

    @property
    def stopping(self) -> threading.Event:
        return self.sim._stopping

    def send_rate_limited(self) -> None:
        """A sliding-window rejection: Retry-After in whole seconds (may be 0) and no
        X-RateLimit-Reset (docspace-api.md section 16)."""
        self.send(
            Resp(
                429,
                headers=(
                    ("Retry-After", str(self.portal.retry_after)),
                    ("X-RateLimit-Limit", "1500"),
                    ("X-RateLimit-Remaining", "0"),
                ),
            )
        )
