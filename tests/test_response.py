"""exporter/response.py: the header block of an answer parsed as http.client parses it."""

from __future__ import annotations

import email.parser
import http.client
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.response import MAX_HEADERS, MAX_LINE, Response, parse_header_lines, read_header_lines
from exporter.transport import WatchedConnection, WatchedHTTPSConnection

# Names: printable ASCII, sometimes with what makes a line not plain (space, nothing).
NAMES = st.one_of(
    st.sampled_from(["Server", "Date", "Content-Type", "Content-Length", "Retry-After",
                     "Connection", "Transfer-Encoding", "Set-Cookie", "X-A", "From"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
            min_size=1, max_size=12),
    st.sampled_from(["", "From ", "Bad Name", " lead", "\tfolded"]),
)
# Values: any latin-1 bytes but CR/LF mostly, with blanks and colons around.
VALUES = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.sampled_from([b"", b" ", b"\t x \t", b" a: b ", b" \xff\xfe", b" 200", b"x\ry"]),
)
ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


def _block(lines: list[tuple[str, bytes, bytes]], last: bytes) -> bytes:
    return b"".join(n.encode("latin-1") + b":" * (i % 7 != 6) + v + e
                    for i, (n, v, e) in enumerate(lines)) + last


def _reference(block: bytes) -> http.client.HTTPMessage:
    return http.client.parse_headers(io.BytesIO(block))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES, ENDS), max_size=8),
       st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]))
def test_the_same_message_as_http_client(lines: list[tuple[str, bytes, bytes]],
                                         last: bytes) -> None:
    block = _block(lines, last)
    ours = parse_header_lines(read_header_lines(io.BytesIO(block)))
    ref = _reference(block)
    assert type(ours) is type(ref) is http.client.HTTPMessage
    assert ours.items() == ref.items()
    assert [type(d) for d in ours.defects] == [type(d) for d in ref.defects]
    assert bool(ours.get_payload()) == bool(ref.get_payload())  # urllib3's header check
    for name in ("content-length", "transfer-encoding", "connection", "retry-after"):
        assert ours.get(name) == ref.get(name)
        assert ours.get_all(name) == ref.get_all(name)


def test_a_plain_block_does_not_go_through_the_email_parser(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the email parser was used")

    block = (b"Server: nginx\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\n"
             b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 51\r\n\r\n")
    expected = _reference(block).items()
    monkeypatch.setattr(email.parser.Parser, "parsestr", refuse)
    assert parse_header_lines(read_header_lines(io.BytesIO(block))).items() == expected
    # a folded line is not plain: the email parser (http.client's way) reads it
    with pytest.raises(AssertionError, match="email parser"):
        parse_header_lines(read_header_lines(io.BytesIO(b"A: 1\r\n  more\r\n\r\n")))


def test_http_client_limits() -> None:
    with pytest.raises(http.client.HTTPException, match=f"more than {MAX_HEADERS}"):
        read_header_lines(io.BytesIO(b"A: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        read_header_lines(io.BytesIO(b"A: " + b"x" * MAX_LINE + b"\r\n\r\n"))
    # the same limits as http.client's own
    with pytest.raises(http.client.HTTPException, match=f"more than {MAX_HEADERS}"):
        http.client.parse_headers(io.BytesIO(b"A: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        http.client.parse_headers(io.BytesIO(b"A: " + b"x" * MAX_LINE + b"\r\n\r\n"))


class _Sock:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


@pytest.mark.parametrize("raw,method", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "GET"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "GET"),
    (b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\nHTTP/1.1 204 No Content\r\nA: b\r\n\r\n", "GET"),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nrest", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HEAD"),
    (b"HTTP/1.1 429 Too Many\r\nRetry-After: \xb2\r\n  folded\r\nContent-Length: 0\r\n\r\n",
     "GET"),
])
def test_begin_is_http_clients(raw: bytes, method: str) -> None:
    ours = Response(_Sock(raw), method=method)
    ref = http.client.HTTPResponse(_Sock(raw), method=method)  # type: ignore[arg-type]
    ours.begin()
    ref.begin()
    for attr in ("status", "reason", "version", "chunked", "will_close", "length"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert ours.msg.items() == ref.msg.items()
    assert ours.read() == ref.read()


def test_unknown_protocol_as_http_client() -> None:
    raw = b"HTTP/2.0 200 OK\r\n\r\n"
    with pytest.raises(http.client.UnknownProtocol):
        Response(_Sock(raw), method="GET").begin()
    with pytest.raises(http.client.UnknownProtocol):
        http.client.HTTPResponse(_Sock(raw), method="GET").begin()  # type: ignore[arg-type]


def test_the_connections_use_it() -> None:
    assert WatchedConnection.response_class is Response
    assert WatchedHTTPSConnection.response_class is Response
