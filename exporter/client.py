"""One DocSpace client per portal: auth, deadlines, Retry-After, error translation; no
Prometheus. The HTTP path is exporter.transport, the deadline watchdog exporter.watchdog."""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import requests

from exporter.clock import monotonic, wall_clock
from exporter.config import ApiKeyAuth, PasswordAuth, PortalConfig, TokenAuth
from exporter.endpoints import API, BY_NAME
from exporter.errors import STATUS_REASONS, FetchError
from exporter.model import (
    History,
    ParseError,
    PortalSettings,
    Schedule,
    Tariff,
    Task,
    decode_envelope,
    parse_login,
)
from exporter.transport import Sent, Transport, close, drain, new_session, read_body
from exporter.watchdog import CURRENT, Watchdog

__all__ = ["DocSpaceClient", "FetchError"]

log = logging.getLogger(__name__)

# A login that failed is not retried for this long, so a wrong password does not
# turn every scrape into a login attempt (DocSpace locks accounts on brute force).
LOGIN_BACKOFF_START = 5.0
LOGIN_BACKOFF_MAX = 300.0
# Renew a login token this long before DocSpace says it expires (clock skew).
TOKEN_RENEW_MARGIN = 60.0
# Longest Retry-After we will wait inside one scrape; beyond it the call fails as
# rate_limited and the next scrape tries again.
MAX_RETRY_AFTER = 5.0


# The answer to one attempt: (body, status, Retry-After seconds).
_Answer = Callable[[], tuple[bytes, int, "float | None"]]


class Pending(NamedTuple):
    """A call DocSpaceClient.start sent; DocSpaceClient.finish reads its answer."""

    endpoint: str
    deadline: float
    auth_header: str | None  # what it was sent with (a 401 compares tokens)
    watchdog: Watchdog
    sent: Sent

    def fileno(self) -> int:
        """The socket the answer arrives on (selectors wait on it)."""
        return self.sent.fileno()

    def __repr__(self) -> str:  # the Authorization header never reaches a repr
        return f"Pending({self.endpoint!r})"


def _watched(watchdog: Watchdog, exchange: _Answer) -> tuple[bytes, int, float | None]:
    """Run one exchange under its Watchdog: once the socket was cut at the deadline, whatever
    was read is not the answer, and whatever failed failed as `timeout`."""
    try:
        result = exchange()
    except FetchError as exc:
        if watchdog.fired and exc.reason != "timeout":
            raise FetchError("timeout", "answer not complete before the deadline") from None
        raise
    if watchdog.fired:
        raise FetchError("timeout", "answer not complete before the deadline")
    return result


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is also true for '²'
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class DocSpaceClient:
    """Talks to one portal. Thread-safe: the collector calls its endpoints concurrently."""

    def __init__(
        self,
        portal: PortalConfig,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] | None = None,
        timer: Callable[[], float] = monotonic,
        sleep: Callable[[float], None] = time.sleep,
        host_limit: threading.BoundedSemaphore | None = None,
        # More than the most calls one scrape makes at once (the three backup endpoints and
        # history; settings and tariff follow them): a smaller pool would open and discard
        # a connection (a TLS handshake) per extra call.
        pool_size: int = 5,
    ) -> None:
        self.portal = portal
        self._clock = clock or wall_clock
        self._timer = timer
        self._sleep = sleep
        self._host_limit = host_limit
        self._session = session or new_session(portal, pool_size)
        self._pool_size = pool_size
        # Every call goes straight to the pool of the session's requests HTTPAdapter (an
        # injected session must send through one).
        self._transport = Transport(self._session, portal.url)
        self._login_lock = threading.Lock()
        self._token: str | None = None
        self._token_renew_at: float | None = None  # Unix seconds; None = only on a 401
        self._login_failures = 0
        self._login_blocked_until = 0.0  # timer() value
        self._login_error: FetchError | None = None

    def __repr__(self) -> str:
        return f"DocSpaceClient(portal={self.portal.name!r}, url={self.portal.url!r})"

    def close(self) -> None:
        self._session.close()

    # -- auth -------------------------------------------------------------------------

    def needs_login(self) -> bool:
        """True when the next call needs a login first (password auth, no valid token)."""
        if not isinstance(self.portal.auth, PasswordAuth):
            return False
        with self._login_lock:
            return not self._token_valid()

    def _token_valid(self) -> bool:
        if self._token is None:
            return False
        if self._token_renew_at is None:
            return True
        return self._clock() < self._token_renew_at

    def _renew_at(self, expires: float | None) -> float | None:
        """When to log in again ahead of DocSpace's `expires` (clock skew), but at most half
        the token's life ahead: a token shorter-lived than the margin would count as expired
        the moment it arrived, and each endpoint call of a scrape would log in again."""
        if expires is None:
            return None
        life = expires - self._clock()
        if life <= 0:
            # Already past by our clock, just issued by the portal's: the clocks disagree,
            # so only the portal's 401 can say the token is done.
            return None
        return expires - min(TOKEN_RENEW_MARGIN, life / 2)

    def _auth_header(self) -> str | None:
        auth = self.portal.auth
        if isinstance(auth, ApiKeyAuth):
            return "Bearer " + auth.key.reveal()
        if isinstance(auth, TokenAuth):
            return auth.token.reveal()
        with self._login_lock:
            return self._token

    def login(self, deadline: float, *, force: bool = False, stale: str | None = None) -> None:
        """Make sure a valid login token is cached. Raises FetchError(endpoint login).

        `stale` is the token a 401 was seen with; when another thread already replaced
        it, there is nothing to do.
        """
        auth = self.portal.auth
        if not isinstance(auth, PasswordAuth):
            return
        with self._login_lock:
            if stale is not None and self._token is not None and self._token != stale:
                return
            if not force and self._token_valid():
                return
            if self._timer() < self._login_blocked_until and self._login_error is not None:
                raise FetchError(self._login_error.reason,
                                 f"{self._login_error} (login backing off)", endpoint="login")
            self._token = None
            body = {"userName": auth.username, "password": auth.password.reveal(),
                    "session": False}
            try:
                present, resp = self._call("POST", API + "/authentication", deadline,
                                           json_body=body, auth_header=None)
                token, expires = parse_login(present, resp)
            except FetchError as exc:
                exc.endpoint = "login"
                self._login_failures += 1
                backoff = min(LOGIN_BACKOFF_MAX,
                              LOGIN_BACKOFF_START * 2 ** (self._login_failures - 1))
                self._login_blocked_until = self._timer() + backoff
                self._login_error = exc
                raise
            except ParseError as exc:
                self._login_failures += 1
                self._login_blocked_until = self._timer() + LOGIN_BACKOFF_START
                err = FetchError("invalid_response", f"login: {exc}", endpoint="login")
                self._login_error = err
                raise err from None
            self._login_failures = 0
            self._login_error = None
            self._token = token
            self._token_renew_at = self._renew_at(expires)
            log.debug("logged in", extra={"portal": self.portal.name})

    # -- calls ------------------------------------------------------------------------

    def _call(self, method: str, path: str, deadline: float, *,
              params: dict[str, str] | None = None, json_body: Any = None,
              auth_header: str | None, first: _Answer | None = None) -> tuple[bool, Any]:
        """One HTTP call, its whole answer bounded by `deadline` (a timer() value). `first`:
        the answer to a first attempt already sent ahead (start())."""
        url = self.portal.url + path
        headers = {"Authorization": auth_header} if auth_header else {}
        for attempt in (1, 2):
            if attempt == 1 and first is not None:
                body, status, retry_after = first()
            else:
                body, status, retry_after = self._http(method, url, deadline, params,
                                                       json_body, headers)
            if status == 429 and attempt == 1 and retry_after is not None:
                # Honour Retry-After once when it still fits inside this scrape's deadline.
                remaining = deadline - self._timer()
                if retry_after <= min(MAX_RETRY_AFTER, remaining - 0.2):
                    self._sleep(retry_after)
                    continue
            break
        if status != 200:
            reason = STATUS_REASONS.get(status, "http_error")
            raise FetchError(reason, f"HTTP {status}", retry_after=retry_after)
        try:
            return decode_envelope(body)
        except ParseError as exc:
            raise FetchError("invalid_response", str(exc)) from None

    def _http(self, method: str, url: str, deadline: float, params: dict[str, str] | None,
              json_body: Any, headers: dict[str, str]) -> tuple[bytes, int, float | None]:
        """One attempt inside the host's slot, under a Watchdog: (body, status, Retry-After)."""
        remaining = deadline - self._timer()
        if remaining <= 0:
            raise FetchError("timeout", "deadline passed before the request was sent")
        if self._host_limit is not None:
            if not self._host_limit.acquire(timeout=remaining):
                raise FetchError("timeout", "waited for a free connection to the host until "
                                            "the deadline")
        try:
            remaining = deadline - self._timer()
            if remaining <= 0:
                raise FetchError("timeout", "deadline passed before the request was sent")
            watchdog = Watchdog(remaining)
            CURRENT.watchdog = watchdog
            try:
                return _watched(watchdog, lambda: self._exchange(
                    watchdog, method, url, deadline, params, json_body, headers, remaining))
            finally:
                CURRENT.watchdog = None
                watchdog.stop()
        finally:
            self._release()

    def _exchange(self, watchdog: Watchdog, method: str, url: str, deadline: float,
                  params: dict[str, str] | None, json_body: Any, headers: dict[str, str],
                  remaining: float) -> tuple[bytes, int, float | None]:
        resp = self._transport.send(method, url, params, json_body, headers, remaining)
        return self._answer(watchdog, resp, deadline)

    def _answer(self, watchdog: Watchdog, resp: Any, deadline: float
                ) -> tuple[bytes, int, float | None]:
        """(body, status, Retry-After) of a response whose body is not read yet."""
        try:
            status = resp.status
            retry_after = _retry_after(resp.headers.get("Retry-After"), self._clock())
            if status != 200:
                return b"", status, retry_after
            body = read_body(resp, self.portal.max_response_bytes, deadline, self._timer)
            return body, status, retry_after
        finally:
            # Disarm the watchdog before the connection can go back to the pool: a late
            # shutdown would cut whichever call takes that connection next.
            watchdog.stop()
            close(resp)

    def idle_connections(self) -> int:
        """Open connections waiting in the pool: calls that can go out at once (start())."""
        return self._transport.idle()

    def warm(self, timeout: float, stop: Callable[[], bool] = lambda: False) -> int:
        """Open the connections a scrape will use (TCP and TLS handshake) ahead of it: one
        per call the scrape makes at once, at most what the pool keeps. Connections that
        are already open count as done (a scrape that paced this portal left one). Returns
        how many were opened; a failure ends the warm-up quietly (the scrape reports it),
        and so does stop()."""
        # The backup calls (with history); the job that reads settings then tariff runs
        # after them, on one of their connections.
        want = min(4 if self.portal.history else 3, self._pool_size)
        opened, error = self._transport.warm(self.portal.url, want, timeout, stop)
        if error is not None:
            log.debug("could not open a connection ahead", extra={
                "portal": self.portal.name, "reason": error.reason})
        return opened

    # -- sent ahead: one thread sends, the answer is read when it is there -------------

    def start(self, endpoint: str, deadline: float) -> Pending | None:
        """Send the GET of one endpoint now, on a connection that is already open, inside
        the host's slot and under a Watchdog, without waiting for the answer; finish() reads
        it. None, with nothing sent and nothing held, when the call cannot start that way
        (no open connection, a login due, no free slot at the host, the deadline passed):
        the caller then makes the whole call with fetch(). Raises FetchError when the send
        fails (the call is then over).

        It never waits: it runs in the thread that hands out slots, which may be the poller
        (exporter/dispatch.py). A login in progress in another thread (the login lock held
        for a whole HTTP call) makes it None too: the call then waits for that login in a
        worker."""
        if isinstance(self.portal.auth, PasswordAuth):
            if not self._login_lock.acquire(blocking=False):
                return None
            try:
                header = self._token if self._token_valid() else None
            finally:
                self._login_lock.release()
            if header is None:
                return None
        else:
            header = self._auth_header()
        ep = BY_NAME[endpoint]
        params = {"Dump": "true"} if self.portal.dump and ep.dump else None
        headers = {"Authorization": header} if header else {}
        remaining = deadline - self._timer()
        if remaining <= 0:
            return None
        if self._host_limit is not None and not self._host_limit.acquire(blocking=False):
            return None
        watchdog = Watchdog(remaining)
        CURRENT.watchdog = watchdog  # WatchedConnection.request hands it the socket
        try:
            sent = self._transport.begin(self.portal.url + API + ep.path, params, headers,
                                         remaining)
        except BaseException:
            watchdog.stop()
            self._release()
            raise
        finally:
            CURRENT.watchdog = None
        if sent is None:
            watchdog.stop()
            self._release()
            return None
        return Pending(endpoint, deadline, header, watchdog, sent)

    def drain(self, pending: Pending, buf: bytearray) -> int:
        """Read what has arrived of the answer to a call start() sent into `buf`, without
        waiting -> transport.MORE, COMPLETE or ELSEWHERE (transport.drain)."""
        return drain(pending.sent, buf, self.portal.max_response_bytes)

    def receive(self, pending: Pending, prefix: bytes = b"") -> tuple[bytes, int, float | None]:
        """Read the answer to a call start() sent: (body, status, Retry-After); `prefix` is
        what drain() read of it. Blocks only until the answer is complete (the Watchdog ends
        it at the deadline), never when drain() found it COMPLETE; never sleeps, logs in or
        calls again: complete() does. Raises FetchError."""
        watchdog = pending.watchdog
        try:
            return _watched(watchdog, lambda: self._answer(
                watchdog, self._transport.finish(pending.sent, prefix), pending.deadline))
        finally:
            watchdog.stop()
            self._release()

    def complete(self, pending: Pending, answer: tuple[bytes, int, float | None]) -> Any:
        """Go on from the answer receive() read, as fetch() would from its first attempt
        (Retry-After, a login again after a 401) -> the parsed value. Raises FetchError."""
        return self.fetch(pending.endpoint, pending.deadline,
                          first=(lambda: answer, pending.auth_header))

    def abandon(self, pending: Pending) -> None:
        """Give up a call start() sent without reading its answer (the exporter is shutting
        down): its Watchdog stops and its host slot is freed."""
        pending.watchdog.stop()
        self._release()

    def _release(self) -> None:
        if self._host_limit is not None:
            self._host_limit.release()

    def get(self, endpoint: str, deadline: float,
            first: tuple[_Answer, str | None] | None = None) -> tuple[bool, Any]:
        """GET one endpoint of the table -> decoded envelope. Raises FetchError. `first`:
        the answer to a first attempt start() sent, and the Authorization it was sent with."""
        ep = BY_NAME[endpoint]
        params = {"Dump": "true"} if self.portal.dump and ep.dump else None
        path = API + ep.path
        if first is not None:
            answer, header = first
        else:
            answer = None
            if self.needs_login():
                # No token yet, or DocSpace's `expires` is near: log in before the call
                # rather than spend a round trip on a certain 401.
                self.login(deadline)
            header = self._auth_header()
        try:
            return self._call("GET", path, deadline, params=params, auth_header=header,
                              first=answer)
        except FetchError as exc:
            if exc.reason != "unauthorized" or not isinstance(self.portal.auth, PasswordAuth):
                raise
        # The token was revoked or expired early: log in again, once.
        self.login(deadline, force=True, stale=header)
        return self._call("GET", path, deadline, params=params, auth_header=self._auth_header())

    def schedule(self, deadline: float) -> Schedule | None:
        return self.fetch("schedule", deadline)

    def backup_progress(self, deadline: float) -> Task | None:
        return self.fetch("backup_progress", deadline)

    def restore_progress(self, deadline: float) -> Task | None:
        return self.fetch("restore_progress", deadline)

    def history(self, deadline: float) -> History:
        return self.fetch("history", deadline)

    def settings(self, deadline: float) -> PortalSettings:
        return self.fetch("settings", deadline)

    def tariff(self, deadline: float) -> Tariff:
        return self.fetch("tariff", deadline)

    def fetch(self, endpoint: str, deadline: float,
              first: tuple[_Answer, str | None] | None = None) -> Any:
        """GET one endpoint of the table and parse its answer with the table's parser."""
        present, response = self.get(endpoint, deadline, first)
        try:
            return BY_NAME[endpoint].parse(present, response)
        except ParseError as exc:
            raise FetchError("invalid_response", str(exc)) from None
