"""exporter.exposition.encode gives the same bytes as prometheus_client's own encoders."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.samples import Exemplar, Sample

from exporter import exposition, metrics
from exporter.metrics import PortalData
from exporter.model import Schedule, Task

ACCEPT = [
    "",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=values",
    "text/plain;version=1.0.0;escaping=dots",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=0.0.1",
    # What Prometheus 2.x sends.
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
]


class Static:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def odd_families() -> list[Metric]:
    g = GaugeMetricFamily("odd_gauge", 'Help with "quotes", a \\ backslash\nand a newline.',
                          labels=["a", "b_c"])
    for value in (0.0, -0.0, 1.0, 1, 0, True, -1.5, 1e-9, 12345678.0, 1.5e20, math.inf,
                  -math.inf, math.nan, 2**53):
        g.add_metric([repr(value), 'v "q" \\ \n ü'], value)
    c = CounterMetricFamily("odd_requests", "A counter.", labels=["code"])
    c.add_metric(["200"], 3.0)
    c.add_metric(["500"], 0.0)
    created = CounterMetricFamily("with_created", "Counter with _created.", labels=["x"],
                                  created=1700000000.0)
    created.add_metric(["y"], 1.0, created=1700000000.0)
    unit = GaugeMetricFamily("size_bytes", "A unit.", unit="bytes")
    unit.add_metric([], 5.0)
    ts = GaugeMetricFamily("stamped", "A timestamp.", labels=["p"])
    ts.add_metric(["x"], 1.0, timestamp=1700000000.5)
    info = InfoMetricFamily("build", "Info.", value={"version": "1.2"})
    state = StateSetMetricFamily("state", "A state set.", value={"a": True, "b": False})
    hist = HistogramMetricFamily("latency_seconds", "A histogram.",
                                 buckets=[("0.1", 1.0), ("+Inf", 2.0)], sum_value=0.3)
    colon = GaugeMetricFamily("job:rate:5m", "A recording-rule style name.")
    colon.add_metric([], 2.0)
    exemplar = CounterMetricFamily("ex", "Exemplar.")
    exemplar.samples.append(Sample("ex_total", {}, 1.0, None, Exemplar({"t": "1"}, 1.0)))
    utf8 = GaugeMetricFamily("utf8_labels", "Odd label name.")
    utf8.samples.append(Sample("utf8_labels", {"odd.name": "x"}, 1.0))
    empty = GaugeMetricFamily("empty", "No samples.")
    return [g, c, created, unit, ts, info, state, hist, colon, exemplar, utf8, empty]


def portal_families() -> list[Metric]:
    sched = Schedule(period="daily", hour=2, day=0, storage_type="documents", dump=False,
                     backups_stored=5, last_backup_time=1700000000.0)
    done = Task(is_completed=True, progress=100.0, has_error=False, status="Completed")
    data = []
    for i in range(30):
        p = PortalData(name=f"p{i:04d}", url=f'http://127.0.0.1:1/p{i:04d}?"x"', duration=0.2)
        if i % 3:
            p.answer("schedule", sched if i % 5 else None)
            p.answer("backup_progress", done)
            p.answer("restore_progress", None)
        else:
            p.fail("schedule", "timeout")
            p.fail("backup_progress", "connection")
        data.append(p)
    fams = list(metrics.portal_families(data, 1700000100.0))
    fams.append(metrics.error_family({("p0000", "schedule", "timeout"): 3}, None))
    return fams


def registries() -> list[Any]:
    regs = []
    for fams in (portal_families(), odd_families()):
        reg = CollectorRegistry(auto_describe=False)
        reg.register(Static(fams))
        regs.append(reg)
    procs = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=procs)
    PlatformCollector(registry=procs)
    GCCollector(registry=procs)
    regs.append(procs)
    return regs


@pytest.mark.parametrize("accept", ACCEPT)
def test_same_bytes_as_prometheus_client(accept: str) -> None:
    encoder, _ = choose_encoder(accept)
    for reg in registries()[:2]:
        assert exposition.encode(reg, encoder) == encoder(reg)


@pytest.mark.parametrize("accept", ACCEPT)
def test_same_bytes_for_process_metrics(accept: str) -> None:
    # Process metrics move between two collections (CPU time, RSS): freeze one collection.
    encoder, _ = choose_encoder(accept)
    frozen = CollectorRegistry(auto_describe=False)
    frozen.register(Static(list(registries()[2].collect())))
    assert exposition.encode(frozen, encoder) == encoder(frozen)


def test_unknown_encoder_is_used_as_is() -> None:
    def custom(registry: Any) -> bytes:
        return b"custom\n"

    assert exposition.encode(registries()[0], custom) == b"custom\n"


@pytest.mark.parametrize("accept", [ACCEPT[0], ACCEPT[-1]])
def test_portal_families_take_the_fast_path(accept: str, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    def no_fallback(metric: Metric) -> None:
        raise AssertionError(f"{metric.name} went through prometheus_client")

    library, _ = choose_encoder(accept)
    reg = registries()[0]
    expected = library(reg)
    given: list[Any] = []

    def encoder(registry: Any) -> bytes:
        given.append(registry)
        return library(registry)

    monkeypatch.setattr(exposition, "_One", no_fallback)
    assert exposition.encode(reg, encoder) == expected
    assert reg not in given  # the library only ever rendered the small probe


def test_reads_no_library_internals() -> None:
    """The module decides from the encoder's own output, not from prometheus_client's
    internals (functools.partial keywords, escaping constants, private helpers), which
    differ between releases: it imports only the public metric families."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(exposition.__file__).read_text(encoding="utf-8"))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    library = [m for m in imported if m.startswith("prometheus_client")]
    assert library == ["prometheus_client.core"], imported


def test_an_encoder_writing_other_bytes_does_all_the_work() -> None:
    """An encoder whose output differs from the direct path in any detail (here: every
    value written another way) is used for the whole registry."""
    text, _ = choose_encoder("")

    def other(registry: Any) -> bytes:
        return text(registry).replace(b" 1.0\n", b" 1\n")

    reg = registries()[0]
    assert exposition.encode(reg, other) == other(reg)
    assert b" 1\n" in other(reg)
