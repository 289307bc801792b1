"""Shared fixtures: the simulator and a real exporter server, both on 127.0.0.1 port 0."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from docspace_simulator import SimPortal, Simulator
from exporter.config import (
    ApiKeyAuth,
    Config,
    PasswordAuth,
    PortalConfig,
    Secret,
    TokenAuth,
)
from exporter.server import ExporterApp, ExporterHTTPServer, WebConfig
from tests import deploy_helpers as dh
from tests import faults  # noqa: F401 - registers the test-only fault scenarios
from tests.hardening_helpers import parse_samples


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The Prometheus releases the `prom` tests run against (or why one is missing)."""
    lines = []
    for major in dh.PROM_MAJORS:
        found = dh.find_release(major)
        lines.append(f"prometheus{major}: " + (found if isinstance(found, str) else
                                              f"{found.label} ({found.prometheus})"))
    return lines


@pytest.fixture(scope="module", params=dh.PROM_MAJORS, ids=lambda m: f"prometheus{m}")
def prom(request: pytest.FixtureRequest) -> dh.PromRelease:
    """Each Prometheus major release in turn (tests/deploy_helpers.py says how to use it)."""
    return dh.prom_release(request.param)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    s = Simulator("127.0.0.1", 0)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def portal_config(sim: Simulator, sp: SimPortal, *, auth: str = "api_key",
                  **kw: Any) -> PortalConfig:
    """An exporter PortalConfig for a simulator portal, with the chosen auth method."""
    a: ApiKeyAuth | TokenAuth | PasswordAuth
    if auth == "api_key":
        a = ApiKeyAuth(Secret(sp.api_key))
    elif auth == "token":
        assert sp.token
        a = TokenAuth(Secret(sp.token))
    else:
        assert sp.username and sp.password
        a = PasswordAuth(sp.username, Secret(sp.password))
    kw.setdefault("timeout", 5.0)
    return PortalConfig(name=sp.name, url=sim.portal_url(sp.name), auth=a, **kw)


@dataclass
class Running:
    app: ExporterApp
    server: ExporterHTTPServer
    url: str

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET", timeout: float = 30) -> tuple[int, dict[str, str], str]:
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def samples(self, path: str = "/metrics", headers: dict[str, str] | None = None
                ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = self.get(path, headers)
        assert status == 200, body
        return parse_samples(body)


@pytest.fixture
def exporter() -> Iterator[Callable[..., Running]]:
    """Factory: exporter(config, web=None, loader=None) -> Running, served on 127.0.0.1:0."""
    started: list[tuple[ExporterHTTPServer, threading.Thread, ExporterApp]] = []

    def start(config: Config | None, *, web: WebConfig | None = None,
              loader: Callable[[], Config] | None = None) -> Running:
        app = ExporterApp(config, loader=loader)
        server = ExporterHTTPServer(("127.0.0.1", 0), app, web or WebConfig())
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
        t.start()
        started.append((server, t, app))
        scheme = "https" if (web and web.ssl_context) else "http"
        return Running(app, server, f"{scheme}://127.0.0.1:{server.server_address[1]}")

    yield start
    for server, t, app in started:
        server.graceful_shutdown()
        t.join(timeout=10)
        server.server_close()
        app.scraper.close()
