"""The fixtures: the simulator and the exporter (in a thread or as the CLI), all on 127.0.0.1
port 0 and stopped after the test, and each Prometheus release in turn. The classes they hand
out are in tests/harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from docspace_simulator import Simulator
from exporter.config import Config
from exporter.webconfig import WebConfig
from tests import deploy_helpers as dh
from tests import faults  # noqa: F401 - registers the test-only fault scenarios
from tests.harness import ExporterProcess, Running, RunningExporter, start_exporter


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


@pytest.fixture
def exporters() -> Iterator[Callable[..., RunningExporter]]:
    """Factory: exporters(config, web=None, loader=None, context=None) -> RunningExporter,
    served in a thread on 127.0.0.1:0; every one is shut down after the test."""
    started: list[RunningExporter] = []

    def make(config: Config | None, **kw: Any) -> RunningExporter:
        ex = start_exporter(config, **kw)
        started.append(ex)
        return ex

    yield make
    for ex in started:
        ex.stop()


@pytest.fixture
def exporter(exporters: Callable[..., RunningExporter]) -> Callable[..., Running]:
    """The same exporters, seen through `Running` (text answers, parsed samples)."""

    def start(config: Config | None, *, web: WebConfig | None = None,
              loader: Callable[[], Config] | None = None) -> Running:
        ex = exporters(config, web=web, loader=loader)
        scheme = "https" if (web and web.ssl_context) else "http"
        return Running(ex.app, ex.server, f"{scheme}://127.0.0.1:{ex.port}")

    return start


@pytest.fixture
def simulator(sim: Simulator) -> Simulator:
    """conftest's `sim` (started on 127.0.0.1:0, stopped after the test), by this name."""
    return sim


@pytest.fixture
def cli_processes() -> Iterator[list[ExporterProcess]]:
    """Append started CLI processes; each is stopped (SIGTERM, then kill) after the test."""
    procs: list[ExporterProcess] = []
    yield procs
    for p in procs:
        p.stop()

