"""exporter.errors: exceptions of requests, urllib3 and the socket layer -> the contract's
reason, by type only (issue 9 item 1). Every message below is chosen to mislead a classifier
that reads text."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from exporter.client import DocSpaceClient
from exporter.config import ApiKeyAuth, PortalConfig, Secret
from exporter.errors import REASONS, FetchError, classify, classify_body


def _refused() -> NewConnectionError:
    exc = NewConnectionError(None, "Failed to establish a new connection: timed out?")  # type: ignore[arg-type]
    exc.__cause__ = ConnectionRefusedError(111, "nothing here")
    return exc


CASES: list[tuple[str, BaseException, str, str]] = [
    # name, exception, reason, message
    ("urllib3 SSLError", SSLError("connection refused"), "tls",
     "TLS handshake or certificate verification failed"),
    ("requests SSLError", requests.exceptions.SSLError("timed out"), "tls",
     "TLS handshake or certificate verification failed"),
    ("certificate verify", ssl.SSLCertVerificationError(1, "refused"), "tls",
     "TLS handshake or certificate verification failed"),
    ("TLS inside proxy error", ProxyError("Unable to connect to proxy", SSLError("x")), "tls",
     "TLS handshake or certificate verification failed"),
    ("connect timeout", ConnectTimeoutError("connection refused"), "timeout",
     "no answer before the deadline"),
    ("read timeout", ReadTimeoutError(None, "/", "Read refused."), "timeout",  # type: ignore
     "no answer before the deadline"),
    ("requests ConnectTimeout", requests.exceptions.ConnectTimeout("refused"), "timeout",
     "no answer before the deadline"),
    ("requests ReadTimeout", requests.exceptions.ReadTimeout("x"), "timeout",
     "no answer before the deadline"),
    ("socket timeout while sending", ProtocolError("Connection aborted.", TimeoutError("x")),
     "timeout", "no answer before the deadline"),
    ("refused (a NewConnectionError is no timeout)", _refused(), "connection",
     "connection refused"),
    ("refused, as requests wraps it",
     requests.exceptions.ConnectionError(MaxRetryError(None, "/", _refused())),  # type: ignore
     "connection", "connection refused"),
    ("no such host", NameResolutionError("portal.invalid", None, socket.gaierror(-2, "refused")),  # type: ignore[arg-type]
     "connection", "host name does not resolve"),
    ("reset", ProtocolError("Connection aborted.", ConnectionResetError(104, "timed out")),
     "connection", "connection failed"),
    ("OSError saying timed out", OSError("timed out"), "connection", "connection failed"),
    ("OSError saying refused", OSError("Connection refused"), "connection", "connection failed"),
    ("text says certificate", OSError("CERTIFICATE_VERIFY_FAILED"), "connection",
     "connection failed"),
    ("not a network error", ValueError("timed out"), "connection",
     "request failed (ValueError)"),
]


@pytest.mark.parametrize(("exc", "reason", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_classify_by_type(exc: BaseException, reason: str, message: str) -> None:
    err = classify(exc)
    assert (err.reason, str(err)) == (reason, message)


BODY_CASES: list[tuple[str, BaseException, str]] = [
    ("read timeout", ReadTimeoutError(None, "/", "Read refused."), "timeout"),  # type: ignore
    ("socket timeout", TimeoutError("x"), "timeout"),
    ("broken", ProtocolError("Connection broken: timed out", ConnectionResetError()),
     "connection"),
    ("bad gzip", DecodeError("timed out"), "connection"),
    ("TLS record error", SSLError("timed out"), "connection"),
    ("OSError saying timed out", OSError("timed out"), "connection"),
]


@pytest.mark.parametrize(("exc", "reason"), [c[1:] for c in BODY_CASES],
                         ids=[c[0] for c in BODY_CASES])
def test_classify_body_by_type(exc: BaseException, reason: str) -> None:
    assert classify_body(exc).reason == reason


def test_every_reason_is_the_contracts() -> None:
    for _, _exc, reason, _ in CASES:
        assert reason in REASONS
    with pytest.raises(ValueError):
        FetchError("timed out", "x")


def test_refused_port_on_loopback_is_connection_refused() -> None:
    """The whole path, a real socket: a port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = DocSpaceClient(PortalConfig(name="p", url=f"http://127.0.0.1:{port}",
                                    auth=ApiKeyAuth(Secret("k"))))
    try:
        with pytest.raises(FetchError) as err:
            c.schedule(time.monotonic() + 5)
    finally:
        c.close()
    assert (err.value.reason, str(err.value)) == ("connection", "connection refused")
