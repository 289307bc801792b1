"""exporter.client's error classification: an exception of the HTTP stack -> the contract's
`reason` label, with a message that is safe to log (nothing of the exception's own text)."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests
import urllib3

from exporter.errors import REASONS, classify

SECRET = "sk-0123456789abcdef-do-not-log"
URL = f"https://docspace.example/api/2.0/backup/getbackupschedule?key={SECRET}"

ROWS: list[tuple[str, BaseException, str]] = [
    ("requests SSLError", requests.exceptions.SSLError(SECRET), "tls"),
    ("urllib3 SSLError", urllib3.exceptions.SSLError(SECRET), "tls"),
    ("ssl verify error", ssl.SSLCertVerificationError(1, SECRET), "tls"),
    ("ssl error", ssl.SSLError(1, SECRET), "tls"),
    ("requests ConnectTimeout", requests.exceptions.ConnectTimeout(SECRET), "timeout"),
    ("requests ReadTimeout", requests.exceptions.ReadTimeout(SECRET), "timeout"),
    ("urllib3 ReadTimeoutError", urllib3.exceptions.ReadTimeoutError(None, URL, SECRET),  # type: ignore[arg-type]
     "timeout"),
    ("urllib3 ConnectTimeoutError", urllib3.exceptions.ConnectTimeoutError(SECRET), "timeout"),
    ("requests ConnectionError", requests.exceptions.ConnectionError(SECRET), "connection"),
    ("urllib3 NewConnectionError",
     urllib3.exceptions.NewConnectionError(None, f"refused {SECRET}"),  # type: ignore[arg-type]
     "connection"),
    ("urllib3 NameResolutionError",
     urllib3.exceptions.NameResolutionError("docspace.example", None,  # type: ignore[arg-type]
                                            socket.gaierror(-2, SECRET)), "connection"),
    ("ConnectionRefusedError", ConnectionRefusedError(111, SECRET), "connection"),
    ("ConnectionResetError", ConnectionResetError(104, SECRET), "connection"),
    ("urllib3 ProtocolError",
     urllib3.exceptions.ProtocolError(SECRET, ConnectionResetError(104, SECRET)), "connection"),
    ("requests ChunkedEncodingError", requests.exceptions.ChunkedEncodingError(SECRET),
     "connection"),
    ("unexpected ValueError", ValueError(SECRET), "connection"),
]


@pytest.mark.parametrize("exc,reason", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_reason_by_exception(exc: BaseException, reason: str) -> None:
    error = classify(exc)
    assert error.reason == reason
    assert error.reason in REASONS
    # The message is the classifier's own words: nothing of the exception (URL, key) leaks.
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert str(error)
