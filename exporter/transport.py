"""The one HTTP path of the DocSpace client: requests prepares each call, which goes straight
to the urllib3 pool of the session's adapter; connections the deadline watchdog can cut; one
shared SSLContext per verification setting; connections opened ahead (warm)."""

from __future__ import annotations

import http.client
import http.cookiejar
import os
import re
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context
from urllib3.util.wait import wait_for_read

from exporter import __version__
from exporter.config import PortalConfig
from exporter.errors import FetchError, classify, classify_body
from exporter.response import PREFIX, Response, is_plain_block
from exporter.watchdog import watch

CHUNK = 64 * 1024


def _readable(sock: Any) -> bool:
    return bool(wait_for_read(sock, timeout=0.0))


class WatchedConnection(HTTPConnection):
    """The one connection class: it hands its socket to the watchdog of the call using it
    (exporter.watchdog), on connect and on each request (a kept-alive connection is not
    connected again). WatchedHTTPSConnection is its HTTPS variant. Its answers' header
    blocks are read without the email package when they are plain (exporter/response.py)."""

    response_class = Response

    def connect(self) -> None:
        super().connect()
        watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch(self.sock)
        super().request(*args, **kwargs)


class WatchedHTTPSConnection(WatchedConnection, HTTPSConnection):
    @property
    def is_connected(self) -> bool:
        """urllib3's test (an idle socket with something to read was dropped), except for
        TLS records without data: a TLS 1.3 server sends its session tickets after the
        handshake, and a connection opened ahead of use (DocSpaceClient.warm) has not read
        them yet. They are read here; the connection then counts as open."""
        sock = self.sock
        if sock is None:
            return False
        if not _readable(sock):
            return True
        if not isinstance(sock, ssl.SSLSocket):
            return False
        timeout = sock.gettimeout()
        try:
            sock.setblocking(False)
            for _ in range(8):
                try:
                    sock.recv(1)
                except ssl.SSLWantReadError:
                    if not _readable(sock):
                        return True
                    continue
                return False  # the peer closed, or sent bytes nobody asked for
            return False
        except OSError:
            return False
        finally:
            try:
                sock.settimeout(timeout)
            except OSError:
                pass



_POOLS = {
    "http": type("WatchedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": WatchedConnection}),
    "https": type("WatchedHTTPSPool", (HTTPSConnectionPool,),
                  {"ConnectionCls": WatchedHTTPSConnection}),
}


class _SharedContext(ssl.SSLContext):
    """An SSLContext that many pools and threads use at once.

    urllib3 sets the ALPN list on the context for every connection it opens (and the verify
    mode, to the value it already has). On a context of its own that is harmless; on a
    shared one, replacing the ALPN list frees the buffer another thread's handshake may be
    copying (CPython creates the SSL object without the GIL). It is set once here, and
    setting the same list again is a no-op.
    """

    _alpn: tuple[str, ...] = ()

    def set_alpn_protocols(self, alpn_protocols: Any) -> None:
        protocols = tuple(alpn_protocols)
        if protocols != self._alpn:
            super().set_alpn_protocols(list(protocols))
            self._alpn = protocols


_CONTEXTS: weakref.WeakValueDictionary[tuple[Any, ...], ssl.SSLContext] = (
    weakref.WeakValueDictionary())
_CONTEXTS_LOCK = threading.Lock()
_ALPN = list(getattr(urllib3.util.ssl_, "ALPN_PROTOCOLS", ["http/1.1"]))


def tls_context(portal: PortalConfig) -> ssl.SSLContext | None:
    """The one client SSLContext for the portal's verification setting, shared by every
    portal with the same setting: the default CA bundle (requests': certifi's), each
    `ca_file`, or `insecure_skip_verify`.

    Without it urllib3 builds a context and loads the whole CA bundle for every new
    connection: ~24 ms of CPU and a few hundred kB each, 3000 times at 1000 HTTPS portals.
    The context is what urllib3 would build (create_urllib3_context, the same CA file), so
    verification is exactly as strict. A `ca_file` is keyed by its path and file identity,
    so a CA file replaced before a reload is read again. None when the CA file cannot be
    loaded: then urllib3 loads it per connection, as before, and the call fails as `tls`.
    """
    if portal.insecure_skip_verify:
        key: tuple[Any, ...] = ("insecure",)
        where = None
    else:
        where = portal.ca_file or requests.utils.extract_zipped_paths(
            requests.utils.DEFAULT_CA_BUNDLE_PATH)
        try:
            st = os.stat(where)
        except OSError:
            return None
        key = ("verify", where, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is not None:
            return ctx
        try:
            ctx = create_urllib3_context(
                cert_reqs=ssl.CERT_NONE if where is None else ssl.CERT_REQUIRED)
            ctx.__class__ = _SharedContext
            if where is not None:
                if os.path.isdir(where):
                    ctx.load_verify_locations(capath=where)
                else:
                    ctx.load_verify_locations(cafile=where)
            ctx.set_alpn_protocols(_ALPN)
        except (OSError, ValueError, TypeError):  # ssl.SSLError is an OSError; TypeError:
            return None  # a context urllib3 made of another class (pyOpenSSL): as before
        _CONTEXTS[key] = ctx
        return ctx


class _Adapter(HTTPAdapter):
    """requests' adapter, with connections that a call's watchdog can cut, and TLS through
    one shared SSLContext (tls_context) instead of one built per connection."""

    def __init__(self, *args: Any, ssl_context: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:
        self._tls = ssl_context  # before super().__init__, which calls init_poolmanager
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._tls is not None:
            kwargs["ssl_context"] = self._tls
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def build_connection_pool_key_attributes(self, request: Any, verify: Any,
                                             cert: Any = None) -> Any:
        # requests >= 2.32.2: pools get the shared context (proxied ones too) instead of a
        # CA path that urllib3 would load for every connection.
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        if self._tls is not None and host_params.get("scheme") == "https":
            pool_kwargs["ssl_context"] = self._tls
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # checks the path, sets cert_reqs
        if self._tls is not None and getattr(conn, "conn_kw", {}).get("ssl_context") is self._tls:
            # The CAs are in the shared context; a path here would be loaded into it
            # again on every connection.
            conn.ca_certs = None
            conn.ca_cert_dir = None

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes
            manager.pool_classes_by_scheme = _POOLS
        return manager


def new_session(portal: PortalConfig, pool_size: int) -> requests.Session:
    s = requests.Session()
    # Environment proxies are honoured, but netrc is not: with trust_env requests
    # would put ~/.netrc credentials in place of our Authorization header.
    proxies = requests.utils.get_environ_proxies(portal.url)
    s.trust_env = False
    s.proxies.update(proxies)
    # Authentication is by header only. Login also sets the asc_auth_key cookie, and
    # DocSpace prefers a cookie over the header: a stale cookie would outvote a fresh
    # token, so the session keeps no cookies at all.
    s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    # No automatic retries: one call per endpoint per scrape. A retry would hide a
    # flaky portal and double its load; the next scrape is the retry.
    tls = tls_context(portal) if portal.url.lower().startswith("https:") else None
    adapter = _Adapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0,
                       ssl_context=tls)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    if portal.insecure_skip_verify:
        s.verify = False
    elif portal.ca_file:
        s.verify = portal.ca_file
    s.headers.update({
        "User-Agent": f"docspace-backup-exporter/{__version__}",
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
    })
    return s


class _Target(NamedTuple):
    """Where a prepared request goes: the adapter's pool, the request target, headers, body."""

    pool: Any  # urllib3 HTTP(S)ConnectionPool
    url: str
    headers: dict[str, str]
    body: Any


class Sent(NamedTuple):
    """A GET that Transport.begin sent on an open connection; Transport.finish reads it."""

    pool: Any  # urllib3 HTTP(S)ConnectionPool
    conn: Any  # its WatchedConnection, out of the pool until the answer is released

    def fileno(self) -> int:
        return int(self.conn.sock.fileno())


class Transport:
    """Sends every call of one client (GETs and the login POST alike) to the urllib3 pool of
    the session's requests adapter, as Session.send with allow_redirects=False would: one
    attempt, no redirect (credentials never travel to a URL that is not in the config), no
    cookies, the answer streamed.

    requests prepares each request (URL, params, session and auth headers, JSON body) and
    owns the pool: TLS settings, proxies, the watched connections. Session.request would redo
    the preparation, pool lookup, URL parsing and Response building on every call: measured
    (benchmarks/client_cpu.py), going to the pool directly takes ~45% off the client's CPU
    per call. A prepared GET is kept for the next scrape (they never change between scrapes
    but for a new login token)."""

    def __init__(self, session: requests.Session, url: str) -> None:
        if not isinstance(session.get_adapter(url), HTTPAdapter):
            raise TypeError("the session must send through a requests HTTPAdapter")
        self.session = session
        self._prepared: dict[tuple[Any, ...], _Target] = {}
        self._pool: Any = None  # the portal's pool, once a call or the warm-up found it

    def idle(self) -> int:
        """How many open connections wait in the portal's pool (a hint: unlocked)."""
        pool = self._pool
        queue = getattr(getattr(pool, "pool", None), "queue", None)
        if not queue:
            return 0
        return sum(1 for conn in list(queue) if getattr(conn, "sock", None) is not None)

    def send(self, method: str, url: str, params: dict[str, str] | None, json_body: Any,
             headers: dict[str, str], timeout: float) -> Any:
        """-> the urllib3 response, body not read yet. Raises FetchError."""
        target = self._target(method, url, params, json_body, headers)
        try:
            return target.pool.urlopen(
                method, target.url, body=target.body, headers=target.headers, retries=False,
                redirect=False, assert_same_host=False, preload_content=False,
                decode_content=False, timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise classify(exc) from None

    def _target(self, method: str, url: str, params: dict[str, str] | None, json_body: Any,
                headers: dict[str, str]) -> _Target:
        key = (method, url, tuple(params.items()) if params else (), tuple(headers.items()))
        target = self._prepared.get(key) if json_body is None else None
        if target is None or target.pool.pool is None:  # new, or its pool was closed
            target = self._prepare(method, url, params, json_body, headers)
            if json_body is None:  # a login body (the password) is never kept
                if len(self._prepared) >= 16:  # old login tokens
                    self._prepared.clear()
                self._prepared[key] = target
        return target

    def begin(self, url: str, params: dict[str, str] | None, headers: dict[str, str],
              timeout: float) -> Sent | None:
        """Send a GET on a connection of the pool that is already open, and return without
        waiting for the answer (finish() reads it). None, with nothing sent, when the pool
        has no open connection (or the call goes through a proxy): the caller then makes the
        whole call the usual way (send()), which opens one.

        This is what pool.urlopen does before it waits (take a connection, check it was not
        dropped, send), split from the wait, so that one thread can send every call of a
        scrape and no thread is parked per call: measured, a thread per call spent ~260 us
        of CPU per send in GIL hand-offs at 100 portals, and the last call of a scrape went
        out ~85 ms after the first. Raises FetchError when the send itself fails."""
        target = self._target("GET", url, params, None, headers)
        pool = target.pool
        try:
            conn = pool._get_conn()  # an idle one; one the peer dropped comes back closed
        except Exception:  # noqa: BLE001 - pool closed or empty: the usual way decides
            return None
        if getattr(conn, "sock", None) is None or getattr(conn, "proxy", None) is not None:
            pool._put_conn(conn)
            return None
        try:
            conn.timeout = timeout
            conn.request("GET", target.url, body=None, headers=target.headers,
                         preload_content=False, decode_content=False)
        except (BrokenPipeError, ConnectionResetError):
            pass  # as urlopen: the peer may have answered and closed; the read will tell
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            conn.close()
            pool._put_conn(None)
            raise classify(exc) from None
        return Sent(pool, conn)

    @staticmethod
    def finish(sent: Sent, prefix: bytes = b"") -> Any:
        """Wait for the answer to a call begin() sent -> the urllib3 response, body not read
        (as send() returns it). `prefix`: what drain() already read of it. Raises
        FetchError."""
        conn = sent.conn
        PREFIX.data = prefix
        try:
            resp = conn.getresponse()
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            conn.close()
            sent.pool._put_conn(None)
            raise classify(exc) from None
        finally:
            PREFIX.data = None
        # What urlopen sets: releasing the response puts the connection back in its pool.
        resp._connection = conn
        resp._pool = sent.pool
        return resp

    def _prepare(self, method: str, url: str, params: dict[str, str] | None, json_body: Any,
                 headers: dict[str, str]) -> _Target:
        s = self.session
        try:
            prepared = s.prepare_request(requests.Request(method, url, params=params,
                                                          json=json_body, headers=headers))
        except (requests.RequestException, ValueError) as exc:
            raise classify(exc) from None
        adapter, pool = self.pool(prepared)
        self._pool = pool
        return _Target(pool, adapter.request_url(prepared, s.proxies), dict(prepared.headers),
                       prepared.body)

    def pool(self, prepared: requests.PreparedRequest) -> tuple[HTTPAdapter, Any]:
        """The session adapter's urllib3 pool for a prepared request, as HTTPAdapter.send
        finds it (TLS settings and proxies applied)."""
        s = self.session
        url = prepared.url or ""
        verify = True if s.verify is None else s.verify
        adapter = s.get_adapter(url)
        assert isinstance(adapter, HTTPAdapter)  # __init__
        try:
            pool = adapter.get_connection_with_tls_context(prepared, verify, s.proxies, s.cert)
        except requests.RequestException as exc:
            raise classify(exc) from None
        try:
            adapter.cert_verify(pool, url, verify, s.cert)
        except OSError:  # requests: the CA file or directory is not there
            raise FetchError("tls", "the CA file cannot be read") from None
        return adapter, pool

    def warm(self, url: str, want: int, timeout: float,
             stop: Callable[[], bool]) -> tuple[int, FetchError | None]:
        """Open up to `want` connections of the pool for `url` ahead of use (TCP and TLS
        handshake); open ones count as done. Stops early when stop() says so, or at the
        first failure. -> (how many were opened, the failure); the pool keeps them."""
        conns: list[Any] = []
        opened = 0
        error: FetchError | None = None
        pool = None
        try:
            prepared = self.session.prepare_request(requests.Request("GET", url))
            _, pool = self.pool(prepared)
            self._pool = pool
            for _ in range(want):
                if stop():
                    break
                conn = pool._get_conn()
                conns.append(conn)
                if getattr(conn, "sock", None) is None:
                    conn.timeout = timeout
                    conn.connect()
                    opened += 1
        except Exception as exc:  # noqa: BLE001 - warming must never raise
            if conns:
                conns[-1].close()
            error = exc if isinstance(exc, FetchError) else classify(exc)
        finally:
            for conn in conns:
                pool._put_conn(conn)  # type: ignore[union-attr]
        return opened, error


# What drain() found of an answer on its socket.
MORE = 0  # not all there yet: wait until more arrives
COMPLETE = 1  # all there: reading it from the drained bytes never waits
ELSEWHERE = 2  # anything else: a thread reads it the usual way, which may wait
# A header block longer than this is not waited for in drain() (http.client's own limits
# then apply in the thread that reads it).
HEAD_CAP = 64 * 1024
_STATUS = re.compile(rb"HTTP/1\.[01] ([2-5][0-9][0-9])(?: [^\r\n]*)?\r\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def drain(sent: Sent, buf: bytearray, limit: int) -> int:
    """Read what has arrived of the answer to a call begin() sent, without waiting, into
    `buf` -> MORE, COMPLETE or ELSEWHERE. finish(sent, bytes(buf)) reads the answer from
    those bytes first.

    COMPLETE only for the answer DocSpace and nginx send (a status line, plain header lines,
    one Content-Length of at most `limit`, no Transfer-Encoding) once every byte of it is in
    `buf`, so a thread that reads it never blocks: the poller thread reads such answers
    itself (exporter/dispatch.py). The end of the connection, a socket error, a 1xx, chunked
    or unsized answer are ELSEWHERE, read as before by a worker."""
    sock = getattr(sent.conn, "sock", None)
    if sock is None:
        return ELSEWHERE
    try:
        timeout = sock.gettimeout()
        sock.setblocking(False)
    except OSError:
        return ELSEWHERE
    try:
        while True:
            try:
                chunk = sock.recv(CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError):
                return MORE
            except OSError:  # reset, a TLS alert, a write the TLS layer wants, ...
                return ELSEWHERE
            if not chunk:  # closed, or cut by the Watchdog at the deadline
                return ELSEWHERE
            buf += chunk
            state = answer_state(buf, limit)
            if state != MORE:
                return state
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


def answer_state(buf: bytes | bytearray, limit: int) -> int:
    """Whether `buf` holds a whole plain answer with its Content-Length (COMPLETE), the start
    of one (MORE), or something to read the usual way (ELSEWHERE)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        # Not over yet, unless it is not what we wait for: a first line that is not a
        # status line of ours (HTTP/0.9, a 1xx, junk) or lines ending in a bare LF, which
        # http.client reads (so waiting here would turn its answer into a timeout).
        if len(buf) > HEAD_CAP or _BARE_LF.search(buf):
            return ELSEWHERE
        if b"\n" in buf:
            return MORE if _STATUS.match(buf) else ELSEWHERE
        return MORE if b"HTTP/1."[:len(buf)] == bytes(buf[:7]) else ELSEWHERE
    status = _STATUS.match(buf)
    if status is None:
        return ELSEWHERE
    block = bytes(buf[status.end():end + 4])
    if not is_plain_block(block):
        return ELSEWHERE
    length = None
    for line in block.split(b"\r\n")[:-2]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and length is not None):
            return ELSEWHERE
        if name == b"content-length":
            value = value.strip()
            if not (value.isdigit() and len(value) <= 12):
                return ELSEWHERE
            length = int(value)
    if status[1] in (b"204", b"304"):
        length = 0
    if length is None or length > limit:
        return ELSEWHERE
    return COMPLETE if len(buf) >= end + 4 + length else MORE


def read_body(resp: Any, limit: int, deadline: float, timer: Callable[[], float]) -> bytes:
    """Read the body with the deadline bounding the whole read, not each socket read.

    The loop checks the deadline between reads; a read blocked at the deadline is ended by
    the call's Watchdog (the connection's socket is not reachable from here: http.client
    drops `connection.sock` once the response has begun)."""
    headers = resp.headers
    length = headers.get("Content-Length")
    if length and length.isascii() and length.isdigit():
        size = int(length)
        if size > limit:
            raise FetchError("invalid_response", f"answer larger than {limit} bytes")
        if not headers.get("Content-Encoding") and not headers.get("Transfer-Encoding"):
            # The usual answer: its size known, nothing to decode. One read of exactly that
            # many bytes, where the loop below took two read1() calls (~40 us of CPU per
            # call, benchmarks/README.md); a body that stalls is ended by the Watchdog, one
            # that ends early fails as the loop's would.
            try:
                body = resp.read(size, decode_content=False)
            except Exception as exc:  # noqa: BLE001 - urllib3/socket errors mid-body
                raise classify_body(exc) from None
            if deadline - timer() <= 0:
                raise FetchError("timeout", "answer not complete before the deadline")
            if len(body) != size:  # the connection closed before the whole body
                raise FetchError("connection", "connection broke while reading the answer")
            return bytes(body)
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            if deadline - timer() <= 0:
                raise FetchError("timeout", "answer not complete before the deadline")
            chunk = resp.read1(CHUNK, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise FetchError("invalid_response", f"answer larger than {limit} bytes")
            chunks.append(chunk)
    except FetchError:
        raise
    except Exception as exc:  # noqa: BLE001 - urllib3/socket errors mid-body
        raise classify_body(exc) from None
    return b"".join(chunks)


def close(resp: Any) -> None:
    """What requests.Response.close() does for a streamed answer."""
    resp.close()
    resp.release_conn()
