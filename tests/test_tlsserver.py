"""exporter/tlsserver.py: the client_allowed_sans check, as exporter-toolkit compares SANs."""

from __future__ import annotations

import pytest

from exporter.tlsserver import client_allowed


@pytest.mark.parametrize(("sans", "allowed", "ok"), [
    ([("DNS", "prom.example")], None, True),  # no client_allowed_sans: any verified cert
    ([("DNS", "prom.example")], ("prom.example",), True),
    ([("DNS", "other.example")], ("prom.example",), False),
    ([("IP Address", "127.0.0.1\n")], ("127.0.0.1",), True),  # written as Go writes it
    ([("IP Address", "0:0:0:0:0:0:0:1")], ("::1",), True),
    ([("email", "a@example.com"), ("URI", "spiffe://x")], ("spiffe://x",), True),
    ([("DirName", "prom.example")], ("prom.example",), False),  # not a kind Go compares
    ([], ("prom.example",), False),
])
def test_client_allowed(sans: list[tuple[str, str]], allowed: tuple[str, ...] | None,
                        ok: bool) -> None:
    assert client_allowed({"subjectAltName": tuple(sans)}, allowed) is ok
