"""exporter.transport: the one HTTP path. The deadline watchdog reaches every call through the
one connection class, HTTPS and the login POST included (issue 9 item 1)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docspace_simulator import Simulator
from exporter.client import DocSpaceClient, FetchError
from exporter.config import ApiKeyAuth, Auth, PasswordAuth, PortalConfig, Secret
from exporter.transport import WatchedConnection, WatchedHTTPSConnection
from tests.harness import make_certs, read_request_head, wait_for

BODY = b'{"count":0,"status":0,"statusCode":200}'
DRIP_BYTES = 40  # x 0.1 s: the answer is whole after ~4 s, long past the 1 s deadline


class _DripServer:
    """HTTPS on loopback: a status line, then one header byte every 0.1 s, then a valid answer.
    Each socket read returns in time; only a watchdog on the whole call ends it at its
    deadline. Records each request line, and for each answer whether it went out whole
    (False: the client cut the connection first)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        self.whole: list[bool] = []
        self.sock = ctx.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, ssl.SSLError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            head = read_request_head(conn)
            if not head:
                return
            self.requests.append(head.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            for _ in range(DRIP_BYTES):
                if self.stop.wait(0.1):
                    return
                conn.sendall(b"x")
            conn.sendall(b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY)
            self.whole.append(True)
        except OSError:
            self.whole.append(False)
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def drip(tmp_path: Path) -> Iterator[tuple[_DripServer, Path]]:
    certs = make_certs(tmp_path / "certs")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    srv = _DripServer(ctx)
    yield srv, certs.ca
    srv.close()


@pytest.mark.parametrize(("auth", "first_request", "endpoint"), [
    (ApiKeyAuth(Secret("sk-key")), b"GET /api/2.0/backup/getbackupschedule", None),
    (PasswordAuth("admin", Secret("pw")), b"POST /api/2.0/authentication", "login"),
], ids=["get", "login_post"])
def test_dripped_https_answer_ends_at_the_deadline(
        drip: tuple[_DripServer, Path], auth: Auth, first_request: bytes,
        endpoint: str | None) -> None:
    srv, ca = drip
    client = DocSpaceClient(PortalConfig(name="p", url=f"https://127.0.0.1:{srv.port}",
                                         auth=auth, ca_file=str(ca)))
    try:
        with pytest.raises(FetchError) as err:
            client.schedule(time.monotonic() + 1.0)
    finally:
        client.close()
    assert (err.value.reason, err.value.endpoint) == ("timeout", endpoint)
    assert srv.requests[0].startswith(first_request + b" ")
    # The watchdog shut the socket at the deadline: the drip broke off. Without it each read
    # returns in time, the answer arrives whole after ~4 s, and only then is it too late.
    wait_for(lambda: bool(srv.whole), timeout=10)
    assert srv.whole == [False]


def test_the_one_connection_class_serves_both_schemes() -> None:
    client = DocSpaceClient(PortalConfig(name="p", url="https://127.0.0.1:9",
                                         auth=ApiKeyAuth(Secret("k"))))
    try:
        adapter = client._session.get_adapter("https://127.0.0.1:9")
        pools = adapter.poolmanager.pool_classes_by_scheme  # type: ignore[attr-defined]
    finally:
        client.close()
    assert pools["http"].ConnectionCls is WatchedConnection
    assert pools["https"].ConnectionCls is WatchedHTTPSConnection
    assert issubclass(WatchedHTTPSConnection, WatchedConnection)


def test_an_answer_of_known_length_is_read_at_once_and_its_connection_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual answer (Content-Length, no Content-Encoding) is read with one read of its
    length, not read1() chunk by chunk, and its connection still goes back to the pool."""
    import urllib3

    chunked_reads: list[int] = []
    read1 = urllib3.response.HTTPResponse.read1

    def counting_read1(self: Any, *args: Any, **kwargs: Any) -> bytes:
        chunked_reads.append(1)
        return read1(self, *args, **kwargs)

    monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", counting_read1)
    with Simulator("127.0.0.1", 0) as sim:
        sim.add_portal("p")
        client = DocSpaceClient(PortalConfig(name="p", url=sim.portal_url("p"),
                                             auth=ApiKeyAuth(Secret(sim.portal("p").api_key))))
        try:
            first = client.schedule(time.monotonic() + 5)
            second = client.schedule(time.monotonic() + 5)
        finally:
            client.close()
        assert first == second and first is not None
        assert sim.request_count("p", "schedule") == 2
        assert sim.connections_opened == 1  # the first answer was read whole: kept alive
    assert chunked_reads == []
