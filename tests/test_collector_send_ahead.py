"""Calls sent ahead, read when their answer is there, and scrapes paced when many portals
have no open connection (issue 11).

Against the simulator on loopback. Each test would fail without the feature it names: a
warm scrape that made its calls in workers sends none ahead; jobs that waited for a
slot inside a worker starved the reads and timed out; an unpaced first scrape opens one
connection per call instead of one per portal.
"""

from __future__ import annotations

import collections
import gc
import threading
import time
from collections.abc import Iterator

import pytest

from docspace_simulator import Simulator
from exporter.client import DocSpaceClient
from exporter.collector import Scraper
from exporter.results import value
from tests.harness import portal_config, wait_for


@pytest.fixture
def ports_sim() -> Iterator[Simulator]:
    """Every portal on a port of its own: one origin each, as in the benchmark."""
    s = Simulator("127.0.0.1", 0, port_per_portal=True)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_warm_scrape_sends_every_call_ahead_without_a_thread_per_call(
        ports_sim: Simulator) -> None:
    """Once a portal's connections are open, its calls go out from the scrape's thread and
    wait for their answers in the poller (no worker thread holds a call while the portal
    thinks), and the three calls of each portal are in flight together."""
    ports_sim.latency = 0.2
    portals = [portal_config(ports_sim, ports_sim.add_portal(f"p{i}")) for i in range(20)]
    scraper = Scraper(max_workers=64)
    try:
        assert scraper.warm(portals).wait(20)
        # one per backup call (the hourly job follows them on one of theirs). The simulator
        # counts a connection when its acceptor thread takes it, which may be after the
        # client's connect() returned.
        assert wait_for(lambda: ports_sim.connections_opened == 20 * 3, 10)
        opened = ports_sim.connections_opened
        for _ in range(2):
            data = scraper.scrape(portals, 5.0)
            assert all(d.up for d in data), [d.failed for d in data if not d.up]
        # every backup call, and settings and tariff (first scrape), none made whole
        assert scraper.sent_ahead == 2 * 60 + 20 * 2
        # every answer arrived whole and plain: the poller read each itself, no worker
        assert scraper.read_in_poller == scraper.sent_ahead
        assert ports_sim.connections_opened == opened  # every call found a connection
        assert all(ports_sim.max_concurrency(p.name) == 3 for p in portals)  # together
        assert ports_sim.request_count(endpoint="schedule") == 40
    finally:
        scraper.close()


def test_calls_and_jobs_share_the_slots_first_come_first_served(ports_sim: Simulator) -> None:
    """With max_concurrency 2, the first scrape after the warm-up has 36 backup calls to
    send ahead and 12 hourly jobs (settings, then tariff) that need a worker: all wait in
    one queue for the 2 slots, none waits for one inside a worker. (A job that waited for a
    slot inside a worker once held both workers while the slots went to calls whose
    answers then had no worker to read them: every portal timed out.)"""
    ports_sim.latency = 0.05
    portals = [portal_config(ports_sim, ports_sim.add_portal(f"p{i}")) for i in range(12)]
    scraper = Scraper(max_workers=2)
    try:
        assert scraper.warm(portals).wait(20)
        data = scraper.scrape(portals, 8.0)
        assert all(d.up for d in data), [d.failed for d in data if not d.up]
        assert all(value(d.settings) is not None and value(d.tariff) is not None
                   for d in data), [d.failed for d in data]
        # max_concurrency still bounds the calls in flight, sent ahead or not
        assert max(ports_sim.max_concurrency(p.name) for p in portals) <= 2
    finally:
        scraper.close()


def test_many_cold_portals_are_paced_one_connection_each(ports_sim: Simulator) -> None:
    """More calls without an open connection than max_concurrency (a start with many
    portals): each portal makes its calls in turn on one new connection, and its hourly
    reads wait for a scrape that does not pace it. The warm-up then opens the rest."""
    portals = [portal_config(ports_sim, ports_sim.add_portal(f"p{i}")) for i in range(6)]
    scraper = Scraper(max_workers=4)  # 18 backup calls > 4
    try:
        data = scraper.scrape(portals, 8.0)
        assert all(d.up for d in data), [d.failed for d in data if not d.up]
        assert ports_sim.connections_opened == 6
        assert all(ports_sim.max_concurrency(p.name) == 1 for p in portals)
        assert all(d.settings is None and d.tariff is None for d in data)
        assert ports_sim.request_count(endpoint="settings") == 0

        assert scraper.warm(portals).wait(20)
        assert wait_for(lambda: ports_sim.connections_opened == 6 * 3, 10), (
            ports_sim.connections_opened)
        data = scraper.scrape(portals, 8.0)  # warm: not paced, the hourly reads come now
        assert all(d.up and value(d.settings) is not None for d in data)
        assert ports_sim.connections_opened == 6 * 3
    finally:
        scraper.close()


def test_a_few_cold_portals_are_not_paced(ports_sim: Simulator) -> None:
    """Pacing is for a crowd: 3 cold portals within max_concurrency open a connection per
    backup call, in parallel, and read settings and tariff in their first scrape, after the
    backup calls, on one of their connections."""
    ports_sim.latency = 0.2
    portals = [portal_config(ports_sim, ports_sim.add_portal(f"p{i}")) for i in range(3)]
    scraper = Scraper(max_workers=64)
    try:
        data = scraper.scrape(portals, 8.0)
        assert all(d.up and value(d.tariff) is not None for d in data)
        assert ports_sim.connections_opened == 3 * 3
        assert all(ports_sim.max_concurrency(p.name) == 3 for p in portals)
    finally:
        scraper.close()


def test_close_ends_the_poller(ports_sim: Simulator) -> None:
    portals = [portal_config(ports_sim, ports_sim.add_portal("p0"))]
    scraper = Scraper(max_workers=4)
    scraper.scrape(portals, 5.0)
    poller = scraper._dispatch.poller.thread
    assert poller.is_alive()
    scraper.close()
    assert wait_for(lambda: not poller.is_alive(), 5)


def test_a_finished_scrape_leaves_no_reference_cycles(ports_sim: Simulator) -> None:
    """What a scrape made (fetches, futures, their callbacks, answers) is freed as soon as the
    scrape is over, not left for a full garbage collection: with 1000 portals such cycles
    were ~50k objects a scrape and two full collections per scrape."""
    portals = [portal_config(ports_sim, ports_sim.add_portal(f"p{i}")) for i in range(10)]
    scraper = Scraper(max_workers=64)
    try:
        assert scraper.warm(portals).wait(20)
        scraper.scrape(portals, 5.0)  # settings, tariff, logins: the first scrape's extras
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            data = scraper.scrape(portals, 5.0)
            assert all(d.up for d in data), [d.failed for d in data if not d.up]
            del data
            gc.collect()
            made = collections.Counter(type(o).__name__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    finally:
        scraper.close()
    assert not made, made.most_common(10)


def test_sending_ahead_never_waits_for_a_login_in_progress(ports_sim: Simulator) -> None:
    """Calls are sent ahead by whichever thread hands out slots, the poller among them, and
    the poller reads every plain answer: it must never wait. A login holds the portal's login
    lock for a whole HTTP call; a call to send meanwhile is left to a worker (start() gives
    None) instead of waiting for the lock, and is sent ahead again once the login is over."""
    sp = ports_sim.add_portal("p0", username="admin@example.com", password="pw-secret-1")
    portal = portal_config(ports_sim, sp, auth="password")
    client = DocSpaceClient(portal)
    try:
        client.login(time.monotonic() + 5)
        assert client.warm(5.0) >= 1
        outcome: list[object] = []
        with client._login_lock:  # another thread's login, in progress
            sender = threading.Thread(
                target=lambda: outcome.append(client.start("schedule", time.monotonic() + 5)))
            sender.start()
            sender.join(10)
            assert not sender.is_alive(), "start() waited for the login lock"
        assert outcome == [None]
        pending = client.start("schedule", time.monotonic() + 5)
        assert pending is not None  # the login is over: sent ahead again
        assert client.receive(pending)[1] == 200
    finally:
        client.close()
