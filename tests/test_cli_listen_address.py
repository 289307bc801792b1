"""exporter.cli.parse_listen_address, one row per form of --web.listen-address."""

from __future__ import annotations

import argparse

import pytest

from exporter.cli import build_parser, parse_listen_address

GOOD = [
    (":10057", ("::", 10057)),  # all interfaces (dual stack)
    ("0.0.0.0:10057", ("0.0.0.0", 10057)),
    ("127.0.0.1:10057", ("127.0.0.1", 10057)),
    ("[::1]:10057", ("::1", 10057)),
    ("[::]:0", ("::", 0)),
    ("localhost:65535", ("localhost", 65535)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
]
# ":²" and ":٣": str.isdigit() is true for them; int() refuses the first, takes the second.
BAD = ["", "10057", "127.0.0.1", "127.0.0.1:", ":65536", ":-1", ":port", ":1e3", ": 80",
       "127.0.0.1:²", ":٣٣"]


@pytest.mark.parametrize("text,expected", GOOD, ids=[g[0] for g in GOOD])
def test_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", BAD)
def test_refuses_with_the_form_it_wants(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
        parse_listen_address(text)


@pytest.mark.parametrize("text", BAD)
def test_the_flag_refuses_with_a_usage_error(text: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Through argparse (as the CLI parses it): exit status 2 and the flag named, no
    traceback."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([f"--web.listen-address={text}"])
    assert exited.value.code == 2
    assert "--web.listen-address" in capsys.readouterr().err
