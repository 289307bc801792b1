"""exporter/handler.py: the scrape timeout taken from Prometheus' header, and the route
table as the one place every path is written."""

from __future__ import annotations

import pytest

from exporter.collector import SCRAPE_TIMEOUT_OFFSET
from exporter.handler import default_routes, scrape_timeout_from

ROWS = [
    (None, None),  # no header: the configured timeouts alone
    ("", None),
    ("10", 10 - SCRAPE_TIMEOUT_OFFSET),
    ("3", 3 - SCRAPE_TIMEOUT_OFFSET),
    ("2.5", 2.5 - SCRAPE_TIMEOUT_OFFSET),
    (" 4 ", 4 - SCRAPE_TIMEOUT_OFFSET),  # float() accepts surrounding blanks
    ("1e1", 10 - SCRAPE_TIMEOUT_OFFSET),
    ("0.2", 0.1),  # never below 0.1 s, however short the scrape timeout
    (str(SCRAPE_TIMEOUT_OFFSET), 0.1),
    ("0", None),
    ("-5", None),
    ("nan", None),
    ("inf", None),
    ("-inf", None),
    ("ten", None),
    ("10s", None),  # Prometheus sends plain seconds; a duration is not guessed at
]


@pytest.mark.parametrize("header,expected", ROWS, ids=[repr(r[0]) for r in ROWS])
def test_scrape_timeout_from(header: str | None, expected: float | None) -> None:
    got = scrape_timeout_from(header)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_the_route_table_holds_every_path_once() -> None:
    routes = default_routes("/custom")
    assert set(routes) == {"/custom", "/probe", "/", "/sd", "/-/healthy", "/-/ready",
                           "/-/reload"}
    assert routes["/-/reload"].methods == ("POST",)
    assert [p for p, r in routes.items() if not r.auth] == ["/-/healthy", "/-/ready"]
