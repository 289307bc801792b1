"""FetchError and the contract's failure reasons; HTTP library exceptions classified by type."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import requests
import urllib3

REASONS = (
    "timeout", "connection", "tls", "unauthorized", "forbidden", "payment_required",
    "not_found", "rate_limited", "http_error", "invalid_response",
)
STATUS_REASONS = {401: "unauthorized", 402: "payment_required", 403: "forbidden",
                  404: "not_found", 429: "rate_limited"}


class FetchError(Exception):
    """A failed call. `reason` is the contract's label value; the message is safe to log."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None,
                 endpoint: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.reason = reason
        self.retry_after = retry_after
        # Set to "login" when the call failed because logging in failed.
        self.endpoint = endpoint
        super().__init__(message)


_TLS = (urllib3.exceptions.SSLError, requests.exceptions.SSLError, ssl.SSLError,
        ssl.CertificateError)
# urllib3 derives NewConnectionError (refused, no such host) from ConnectTimeoutError; like
# requests, it counts as a connection error (see _is_timeout).
_TIMEOUT = (urllib3.exceptions.TimeoutError, requests.exceptions.Timeout, TimeoutError)
_UNRESOLVED = (urllib3.exceptions.NameResolutionError, socket.gaierror)
_CONNECTION = (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError, OSError)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, then the errors it wraps, nearest first: `raise ... from` causes, urllib3's
    ProtocolError/ProxyError arguments, MaxRetryError.reason (inside requests' errors)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)
        inner = [e.__cause__, reason, *e.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _is_timeout(e: BaseException) -> bool:
    return isinstance(e, _TIMEOUT) and not isinstance(e, urllib3.exceptions.NewConnectionError)


def classify(exc: BaseException) -> FetchError:
    """An exception of requests, urllib3 or the socket layer -> FetchError with the contract's
    reason, by the types in its chain only (never its message text): the outermost error that
    is a TLS failure or a timeout decides; otherwise it is a connection failure."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, _TLS):
            return FetchError("tls", "TLS handshake or certificate verification failed")
        if _is_timeout(e):
            return FetchError("timeout", "no answer before the deadline")
    if any(isinstance(e, _UNRESOLVED) for e in chain):
        return FetchError("connection", "host name does not resolve")
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return FetchError("connection", "connection refused")
    if isinstance(exc, _CONNECTION):
        return FetchError("connection", "connection failed")
    return FetchError("connection", f"request failed ({type(exc).__name__})")


def classify_body(exc: BaseException) -> FetchError:
    """An exception while the body was being read: a timeout, or a broken connection."""
    if any(_is_timeout(e) for e in _chain(exc)):
        return FetchError("timeout", "answer not complete before the deadline")
    return FetchError("connection", "connection broke while reading the answer")
