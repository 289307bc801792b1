"""Settings and tariff against the simulator: read at most once an hour, never part of up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from docspace_simulator import Simulator
from exporter.collector import SIDE_MIN, SIDE_REFRESH, SIDE_SPREAD, DocSpaceCollector, Scraper
from exporter.config import PortalConfig, parse_config
from tests.harness import portal_config

BACKUP_ENDPOINTS = ("schedule", "backup_progress", "restore_progress", "history")


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scraper_factory() -> Iterator[Callable[..., Scraper]]:
    made: list[Scraper] = []

    def make(**kw: object) -> Scraper:
        s = Scraper(max_workers=16, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


class _Static(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


def scrape(scraper: Scraper, portals: list[PortalConfig]) -> CollectorRegistry:
    """One scrape; the registry answers from its result without scraping again."""
    families = list(DocSpaceCollector(scraper, portals).collect())
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Static(families))
    return reg


def test_three_scrapes_read_settings_and_tariff_once(
        sim: Simulator, exporter: Callable[..., object]) -> None:
    zones = {"a": "Europe/Berlin", "b": "America/New_York", "c": "Australia/Sydney"}
    sps = [sim.add_portal(name, timezone=zone) for name, zone in zones.items()]
    from exporter.config import Config

    cfg = Config(portals=tuple(portal_config(sim, sp, history=True) for sp in sps))
    running = exporter(cfg)
    for _ in range(3):
        samples = running.samples()  # type: ignore[attr-defined]
    for sp in sps:
        assert sim.request_count(sp.name, "settings") == 1
        assert sim.request_count(sp.name, "tariff") == 1
        for endpoint in BACKUP_ENDPOINTS:
            assert sim.request_count(sp.name, endpoint) == 3
        # Served from the cache on the scrapes that did not read them.
        key = ("docspace_portal_settings_info",
               (("portal", sp.name), ("timezone", zones[sp.name]), ("version", sp.version)))
        assert samples[key] == 1
        assert samples[("docspace_portal_tariff_state",
                        (("portal", sp.name), ("state", "paid")))] == 1
        assert ("docspace_backup_schedule_next_due_timestamp_seconds",
                (("portal", sp.name),)) in samples


def test_read_again_after_an_hour_and_after_a_failure(
        sim: Simulator, scraper_factory: Callable[..., Scraper]) -> None:
    sp = sim.add_portal("p", timezone="Europe/Berlin")
    timer = FakeTimer()
    scraper = scraper_factory(cache_timer=timer)
    portals = [portal_config(sim, sp)]
    scrape(scraper, portals)
    timer.now += SIDE_REFRESH - 1
    scrape(scraper, portals)
    assert (sim.request_count("p", "settings"), sim.request_count("p", "tariff")) == (1, 1)
    timer.now += 1
    scrape(scraper, portals)
    assert (sim.request_count("p", "settings"), sim.request_count("p", "tariff")) == (2, 2)

    # A failed read is retried on the very next scrape, not an hour later.
    sp.settings_status = 403
    timer.now += SIDE_REFRESH
    sim.reset_counters()
    reg = scrape(scraper, portals)
    assert reg.get_sample_value("docspace_scrape_errors_total", {
        "portal": "p", "endpoint": "settings", "reason": "forbidden"}) == 1
    reg = scrape(scraper, portals)
    reg = scrape(scraper, portals)
    assert (sim.request_count("p", "settings"), sim.request_count("p", "tariff")) == (3, 1)
    sp.settings_status = None
    scrape(scraper, portals)
    scrape(scraper, portals)
    assert (sim.request_count("p", "settings"), sim.request_count("p", "tariff")) == (4, 1)


def test_failed_settings_and_tariff_leave_up_at_one(
        sim: Simulator, scraper_factory: Callable[..., Scraper]) -> None:
    sp = sim.add_portal("p", timezone="Europe/Berlin")
    timer = FakeTimer()
    scraper = scraper_factory(cache_timer=timer)
    portals = [portal_config(sim, sp)]
    scrape(scraper, portals)
    sp.settings_status = 500
    sp.tariff_status = 403
    timer.now += SIDE_REFRESH
    reg = scrape(scraper, portals)
    v = reg.get_sample_value
    assert v("docspace_up", {"portal": "p"}) == 1
    assert v("docspace_scrape_errors_total",
             {"portal": "p", "endpoint": "settings", "reason": "http_error"}) == 1
    assert v("docspace_scrape_errors_total",
             {"portal": "p", "endpoint": "tariff", "reason": "forbidden"}) == 1
    assert v("docspace_portal_settings_info", {"portal": "p", "timezone": "Europe/Berlin",
                                               "version": sp.version}) is None
    assert v("docspace_portal_tariff_state", {"portal": "p", "state": "paid"}) is None
    # The zone of the last good read still gives the due time.
    assert v("docspace_backup_schedule_next_due_timestamp_seconds", {"portal": "p"}) is not None
    # Retried on the very next scrape, and back once the portal answers again.
    sp.settings_status = sp.tariff_status = None
    reg = scrape(scraper, portals)
    assert sim.request_count("p", "settings") == 3
    assert reg.get_sample_value("docspace_portal_tariff_state",
                                {"portal": "p", "state": "paid"}) == 1


def test_zone_sources(sim: Simulator, scraper_factory: Callable[..., Scraper]) -> None:
    # Hour 2, weekly on Sunday (day 1), last run 2025-01-12 (a Sunday) 01:07 UTC.
    last = 1736644052.0
    a = sim.add_portal("portal-zone", timezone="Asia/Kolkata", last_backup_time=last)
    b = sim.add_portal("config-zone", timezone="Asia/Kolkata", last_backup_time=last)
    c = sim.add_portal("dump", timezone="Asia/Kolkata", last_backup_time=last)
    d = sim.add_portal("unknown", timezone="Asia/Kolkata", last_backup_time=last)
    d.scenario = "healthy"
    d.settings_status = 500
    portals = [portal_config(sim, a), portal_config(sim, b, timezone="Europe/Berlin"),
               portal_config(sim, c, dump=True), portal_config(sim, d)]
    reg = scrape(scraper_factory(), portals)

    def due(name: str) -> float | None:
        return reg.get_sample_value("docspace_backup_schedule_next_due_timestamp_seconds",
                                    {"portal": name})

    assert due("portal-zone") == 1737232200  # Sun 2025-01-19 02:00 +05:30 = Jan 18 20:30Z
    assert due("config-zone") == 1737248400  # 02:00 CET = 01:00Z: the config wins
    # Tenant -1 runs on UTC (inferred): 01:07 UTC is before that Sunday's 02:00.
    assert due("dump") == 1736647200
    assert due("unknown") is None  # settings never read: the zone is unknown


def test_config_timezone_is_validated() -> None:
    base = {"name": "p", "url": "https://x.example.com", "api_key": "sk-" + "0" * 64}
    cfg = parse_config({"portals": [dict(base, timezone="Europe/Berlin")]})
    assert cfg.portals[0].timezone == "Europe/Berlin"
    cfg = parse_config({"defaults": {"timezone": "UTC"}, "portals": [base]})
    assert cfg.portals[0].timezone == "UTC"
    from exporter.config import ConfigError

    for bad in ("Mars/Base", "", 5, "../../etc/passwd"):
        with pytest.raises(ConfigError) as e:
            parse_config({"portals": [dict(base, timezone=bad)]})
        assert e.value.problems[0].startswith("portals[0].timezone: ")


def test_hourly_reads_are_spread_over_scrapes_but_a_failed_one_is_retried_at_once(
        sim: Simulator) -> None:
    """After a start, 40 portals do not all read settings and tariff in one scrape: at most
    max(SIDE_MIN, max_concurrency / SIDE_SPREAD) portals start them per scrape (16 here),
    each portal still reads each once, and a read that failed comes again on the very next
    scrape even when that scrape's share is taken (contract 5a)."""
    sps = [sim.add_portal(f"p{i:02d}") for i in range(40)]
    portals = [portal_config(sim, sp) for sp in sps]
    sps[0].settings_status = 403  # among the first 16
    scraper = Scraper(max_workers=8)
    assert max(SIDE_MIN, 8 // SIDE_SPREAD) == 16
    try:
        assert scraper.warm(portals).wait(30)  # connections open: no scrape is paced
        per_scrape = []
        for i in range(4):
            before = sim.request_count(endpoint="settings")
            data = scraper.scrape(portals, 8.0)
            assert all(d.up for d in data), [d.failed for d in data if not d.up]
            per_scrape.append(sim.request_count(endpoint="settings") - before)
            if i == 0:
                sps[0].settings_status = None
    finally:
        scraper.close()
    # 16 new ones, then p00 again (failed) beside 16 new ones, then the last 8
    assert per_scrape == [16, 17, 8, 0]
    assert [sim.request_count(sp.name, "settings") for sp in sps] == [2] + [1] * 39
    assert [sim.request_count(sp.name, "tariff") for sp in sps] == [1] * 40
