"""exporter/handler.py: the scrape timeout taken from Prometheus' header, and the route
table as the one place every path is written."""

from __future__ import annotations

import pytest

from exporter.handler import default_routes, scrape_timeout_from


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("abc", None), ("0", None), ("-3", None), ("nan", None),
    ("inf", None), ("10", 9.5), ("0.2", 0.1),
])
def test_scrape_timeout_from(header: str | None, seconds: float | None) -> None:
    assert scrape_timeout_from(header) == seconds


def test_the_route_table_holds_every_path_once() -> None:
    routes = default_routes("/custom")
    assert set(routes) == {"/custom", "/probe", "/", "/sd", "/-/healthy", "/-/ready",
                           "/-/reload"}
    assert routes["/-/reload"].methods == ("POST",)
    assert [p for p, r in routes.items() if not r.auth] == ["/-/healthy", "/-/ready"]
