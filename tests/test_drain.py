"""Answers read by the poller itself (issue 11): transport.drain reads what has arrived of the
answer to a call sent ahead, without waiting. Only a whole plain answer (status line, plain
header lines, one Content-Length) counts as COMPLETE, and only such an answer is read in the
poller thread; anything else goes to a worker, which reads the drained bytes first and then
the socket, as every answer was read before.

Against TLS servers on loopback that send their answers in pieces, close mid-answer or
answer chunked, on kept-alive connections.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.client import DocSpaceClient, FetchError, Pending
from exporter.config import ApiKeyAuth, PortalConfig, Secret
from exporter.transport import COMPLETE, ELSEWHERE, HEAD_CAP, MORE, answer_state
from tests.harness import RawServer, make_certs, read_request_head

BODY = b'{"response":{"id":1},"count":1,"status":0,"statusCode":200}'
PLAIN = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


@pytest.mark.parametrize(("raw", "state"), [
    (PLAIN, COMPLETE),
    (PLAIN + b"more", COMPLETE),  # bytes after it: as before, dropped with the answer
    (PLAIN[:-1], MORE),  # one byte of the body missing
    (PLAIN[:20], MORE),  # the header block not over yet
    (b"", MORE),
    (b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n", COMPLETE),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}", COMPLETE),
    (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}", COMPLETE),
    (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}", COMPLETE),  # no reason phrase
    # everything below is read by a worker, the usual way
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}", ELSEWHERE),  # read until the end
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n  folded\r\nContent-Length: 2\r\n\r\n{}", ELSEWHERE),
    # http.client reads these; waiting for a CRLF CRLF that never comes would make a timeout
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\n", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\n{}", ELSEWHERE),
    (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * HEAD_CAP, ELSEWHERE),
    (b"HTTP/1.1 100 Continue\r\n", ELSEWHERE),
    (b"HTTP/2 200\r\nContent-Length: 2\r\n\r\n{}", ELSEWHERE),
    (b"<html>hello</html>\r\n\r\n", ELSEWHERE),
    (b"<html>", ELSEWHERE),  # HTTP/0.9: a body without a status line
    (b"HTTP/1", MORE),
    (b"HTTP/1.1 200 OK\r\nContent-Le", MORE),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", ELSEWHERE),  # over the limit (10)
])
def test_answer_state(raw: bytes, state: int) -> None:
    assert answer_state(raw, 10 if b"Length: 11" in raw else 1 << 20) == state


@pytest.fixture
def certs(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, Path]]:
    c = make_certs(tmp_path / "certs")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(c.server_cert), str(c.server_key))
    yield ctx, c.ca


Answer = Callable[[socket.socket, threading.Event], None]


def keep_alive(answer: Answer, served: list[int]) -> Callable[..., None]:
    """A RawServer respond() that answers every request on the connection with `answer`;
    `served` gets one entry per request: the number of the connection (first = 0)."""
    lock = threading.Lock()
    conns: dict[int, int] = {}

    def respond(sock: socket.socket, head: bytes, stopping: threading.Event) -> None:
        with lock:
            n = conns.setdefault(id(sock), len(conns))
        while head:
            served.append(n)
            answer(sock, stopping)
            head = read_request_head(sock)

    return respond


def in_pieces(*pieces: bytes, gap: float = 0.1, gate: threading.Event | None = None) -> Answer:
    """Send the pieces `gap` apart; with a `gate`, the last one only once the test set it (so
    a slow machine cannot merge it with the others), then the gate is closed again."""
    def answer(sock: socket.socket, stopping: threading.Event) -> None:
        for i, piece in enumerate(pieces):
            if gate is not None and i == len(pieces) - 1:
                gate.wait(5)
                gate.clear()
            elif i and stopping.wait(gap):
                return
            sock.sendall(piece)
    return answer


@contextlib.contextmanager
def kept_alive(answer: Answer, certs: tuple[ssl.SSLContext, Path], served: list[int]
               ) -> Iterator[DocSpaceClient]:
    """A TLS portal on loopback answering every request with `answer`, and a client of it."""
    ctx, ca = certs
    with RawServer(keep_alive(answer, served), context=ctx) as srv:
        client = DocSpaceClient(PortalConfig(name="p", url=srv.url("https"),
                                             auth=ApiKeyAuth(Secret("sk-test")),
                                             ca_file=str(ca)))
        try:
            yield client
        finally:
            client.close()


def started(client: DocSpaceClient) -> Pending:
    """A call sent ahead on an open connection, as the dispatcher sends it."""
    if not client.idle_connections():
        assert client.warm(5.0) >= 1
    pending = client.start("schedule", time.monotonic() + 5.0)
    assert pending is not None, "not sent ahead"
    return pending


def drain_until_done(client: DocSpaceClient, pending: Pending, buf: bytearray,
                     each: Callable[[], object] = lambda: None) -> list[int]:
    """What the poller does: wait until the socket is readable, drain, until not MORE. (A TLS
    record without data, such as a TLS 1.3 session ticket, wakes it too: MORE.) `each` runs
    after every drain."""
    states: list[int] = []
    while not states or states[-1] == MORE:
        select.select([pending.fileno()], [], [], 5.0)
        states.append(client.drain(pending, buf))
        each()
        assert len(states) < 100
    return states


def test_an_answer_in_pieces_waits_then_is_read_whole_and_the_connection_kept(
        certs: tuple[ssl.SSLContext, Path]) -> None:
    served: list[int] = []
    gate = threading.Event()  # the last 3 bytes wait until drain() has seen the rest
    answer = in_pieces(PLAIN[:15], PLAIN[15:60], PLAIN[60:-3], PLAIN[-3:], gap=0.05, gate=gate)
    with kept_alive(answer, certs, served) as client:
        for _ in range(2):
            pending = started(client)
            buf = bytearray()

            def open_gate() -> None:
                if len(buf) == len(PLAIN) - 3:  # noqa: B023 - called within this round
                    gate.set()

            states = drain_until_done(client, pending, buf, open_gate)
            # all but 3 bytes there: drain said MORE (and did not block), then COMPLETE
            assert states[-1] == COMPLETE and MORE in states, states
            assert bytes(buf) == PLAIN
            assert client.receive(pending, bytes(buf)) == (BODY, 200, None)
    # both calls went out on one connection: the drained answer left it reusable
    assert len(served) == 2 and served[0] == served[1], served


def test_an_answer_cut_short_goes_elsewhere_and_fails_as_connection(
        certs: tuple[ssl.SSLContext, Path]) -> None:
    def cut(sock: socket.socket, stopping: threading.Event) -> None:
        sock.sendall(PLAIN[:-10])  # the body 10 bytes short
        stopping.wait(0.1)
        sock.close()

    with kept_alive(cut, certs, []) as client:
        pending = started(client)
        buf = bytearray()
        states = drain_until_done(client, pending, buf)
        assert states[-1] == ELSEWHERE and bytes(buf) == PLAIN[:-10], states
        with pytest.raises(FetchError) as err:
            client.receive(pending, bytes(buf))
    assert err.value.reason == "connection"


def test_a_chunked_answer_goes_elsewhere_which_reads_the_drained_bytes_then_the_socket(
        certs: tuple[ssl.SSLContext, Path]) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % 10 + BODY[:10] + b"\r\n"
               + b"%x\r\n" % (len(BODY) - 10) + BODY[10:] + b"\r\n0\r\n\r\n")
    served: list[int] = []
    gate = threading.Event()  # the rest waits until drain() has given up on it
    answer = in_pieces(chunked[:70], chunked[70:], gate=gate)
    with kept_alive(answer, certs, served) as client:
        for _ in range(2):
            pending = started(client)
            buf = bytearray()
            states = drain_until_done(client, pending, buf)
            gate.set()
            # (a MORE first when TLS 1.3 session tickets woke the select: no data)
            assert states[-1] == ELSEWHERE and set(states[:-1]) <= {MORE}, states
            assert bytes(buf) == chunked[:70]
            # a worker's read: the drained bytes first, then it waits for the rest
            assert client.receive(pending, bytes(buf)) == (BODY, 200, None)
    assert len(served) == 2 and served[0] == served[1], served


# --- through the Scraper: the poller reads whole plain answers, workers the rest ----------------

WIRE = Path(__file__).parent / "fixtures" / "wire"
ANSWERS = {b"/backup/getbackupschedule": "E01_schedule_weekly.json",
           b"/backup/getbackupprogress": "E05_backup_completed.json",
           b"/backup/getrestoreprogress": "E03_nothing.json",
           b"/settings": "E16_settings.json", b"/portal/tariff": "E17_tariff_paid.json"}


def _body(head: bytes) -> bytes:
    target = head.split(b" ", 2)[1].split(b"?", 1)[0]
    for path, name in ANSWERS.items():
        if target.endswith(path):
            return (WIRE / name).read_bytes()
    raise AssertionError(target)


def styled(style: str) -> Callable[..., None]:
    """A kept-alive portal answering every call in one of the forms http.client reads."""
    import gzip

    def respond(sock: socket.socket, head: bytes, stopping: threading.Event) -> None:
        while head:
            body = _body(head)
            if style == "plain":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
            elif style == "pieces":
                raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                in_pieces(raw[:10], raw[10:50], raw[50:], gap=0.05)(sock, stopping)
            elif style == "gzip":
                packed = gzip.compress(body)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(packed) + packed)
            elif style == "chunked":
                half = len(body) // 2
                raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"%x\r\n" % half + body[:half] + b"\r\n"
                       + b"%x\r\n" % (len(body) - half) + body[half:] + b"\r\n0\r\n\r\n")
                in_pieces(raw[:60], raw[60:], gap=0.05)(sock, stopping)
            elif style == "bare_lf":
                sock.sendall(b"HTTP/1.1 200 OK\nContent-Length: %d\n\n" % len(body) + body)
            head = read_request_head(sock)

    return respond


STYLES = ("plain", "pieces", "gzip", "chunked", "bare_lf")


def test_warm_scrapes_read_every_form_of_answer(certs: tuple[ssl.SSLContext, Path]) -> None:
    """Five portals, each answering in another form, scraped three times (the first opens the
    connections, the later ones send every call ahead). Every portal is up with the same
    values each time; plain answers, whole or in pieces, gzip included, are read by the
    poller, chunked and bare-LF ones by workers (reading what the poller drained first)."""
    from exporter.collector import Scraper
    from exporter.results import value

    ctx, ca = certs
    servers = [RawServer(styled(s), context=ctx) for s in STYLES]
    for srv in servers:
        srv.__enter__()
    portals = [PortalConfig(name=s, url=srv.url("https"), auth=ApiKeyAuth(Secret("sk-t")),
                            ca_file=str(ca), timeout=5.0)
               for s, srv in zip(STYLES, servers, strict=True)]
    scraper = Scraper(max_workers=64)
    try:
        assert scraper.warm(portals).wait(20)
        seen = []
        for _ in range(3):
            data = scraper.scrape(portals, 8.0)
            assert all(d.up for d in data), [(d.name, d.failed) for d in data if not d.up]
            seen.append([(value(d.schedule).backups_stored,  # type: ignore[union-attr]
                          value(d.backup_progress).progress)  # type: ignore[union-attr]
                         for d in data])
        assert seen[0] == seen[1] == seen[2] == [(5, 100)] * len(STYLES)
        # every backup call of the two warm scrapes was sent ahead; the poller read those of
        # plain, pieces and gzip (3 portals x 3 calls x 2 scrapes, and their settings/tariff
        # of the first scrape), workers those of chunked and bare_lf
        assert scraper.sent_ahead >= 2 * 3 * len(STYLES)
        assert scraper.read_in_poller >= 2 * 3 * 3
        assert scraper.sent_ahead - scraper.read_in_poller >= 2 * 3 * 2
    finally:
        scraper.close()
        for srv in servers:
            srv.__exit__(None, None, None)
