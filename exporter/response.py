"""http.client's response, with a plain header block parsed without the email package.

http.client parses every response's header block with a whole email FeedParser: ~65 us of
CPU per answer on the benchmark machine, about a sixth of what reading a warm answer costs
(benchmarks/README.md). An answer from DocSpace (and the nginx in front of it) has a few plain
`Name: value` lines; those are read here into the same HTTPMessage, with the same values, that
the email parser makes of them. Anything else (a folded line, a line without a colon, a bare
LF, a `From ` line) is left to http.client's own parser, unchanged. The limits are
http.client's: 100 header lines of at most 64 kB. tests/test_response.py checks both parsers
against each other on generated header blocks, and every hostile-portal test runs through
this class.
"""

from __future__ import annotations

import http.client
import io
import re
import threading
from typing import Any

# http.client's limits (_MAXLINE, _MAXHEADERS), restated: those names are private.
MAX_LINE = 65536
MAX_HEADERS = 100

# Only lines the email parser reads as one `name: value` header each: a name of printable
# ASCII without ':' (its headerRE), a value without CR or LF, CRLF; then the empty line.
_PLAIN = re.compile(rb"(?:[!-9;-~]+:[^\r\n]*\r\n)*\r\n")


def read_header_lines(fp: Any) -> list[bytes]:
    """The header lines up to and including the empty one, as http.client reads them."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            return lines


def is_plain_block(block: bytes) -> bool:
    """True for a header block (after the status line, up to and including the empty line)
    of plain `name: value` lines only."""
    return _PLAIN.fullmatch(block) is not None


def parse_header_lines(lines: list[bytes]) -> http.client.HTTPMessage:
    """What http.client.parse_headers makes of these lines (it reads a block that is not
    plain itself)."""
    block = b"".join(lines)
    if is_plain_block(block):
        msg = http.client.HTTPMessage()
        for line in lines[:-1]:
            name, _, value = line.decode("iso-8859-1").partition(":")
            # the email policy's header_source_parse: leading blanks off, the CRLF off
            msg.set_raw(name, value.lstrip(" \t")[:-2])
        return msg
    return http.client.parse_headers(io.BytesIO(block))


# Bytes of an answer already read off its socket (transport.drain), handed to the Response
# that getresponse() makes next in this thread (Transport.finish sets and clears it).
PREFIX = threading.local()


class _PrefixRaw(io.RawIOBase):
    """A raw stream that gives `prefix` first, then reads the socket's own raw stream."""

    def __init__(self, prefix: bytes, raw: Any) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._raw.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()  # the socket's reference count (socket.makefile)
        super().close()


class Response(http.client.HTTPResponse):
    """http.client.HTTPResponse; begin() is CPython's own (3.10-3.13 alike, debug output
    left out) but for the header block, read by read_header_lines/parse_header_lines. An
    answer whose first bytes (or all) were read off the socket ahead (PREFIX) is read from
    them first, then from the socket."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        prefix = getattr(PREFIX, "data", None)
        if prefix:
            PREFIX.data = None
            self.fp = io.BufferedReader(_PrefixRaw(prefix, self.fp.detach()))

    def begin(self) -> None:
        if self.headers is not None:
            return  # already begun
        while True:  # until a response other than 100 Continue
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            read_header_lines(self.fp)  # a 100 response's headers are skipped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = parse_header_lines(read_header_lines(self.fp))
        tr_enc = self.headers.get("transfer-encoding")
        self.chunked = bool(tr_enc and tr_enc.lower() == "chunked")
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if (status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
                or 100 <= status < 200 or self._method == "HEAD"):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
