"""Fan out over portals under one deadline, time each, count errors; never raise."""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.registry import Collector

from exporter import __version__, logs, metrics
from exporter.client import DocSpaceClient, FetchError
from exporter.clock import monotonic, wall_clock
from exporter.config import DEFAULT_MAX_CONCURRENCY, Config, PortalConfig
from exporter.dispatch import Dispatcher, Queued, settle
from exporter.endpoints import BY_NAME, TABLE
from exporter.model import PortalSettings, Task
from exporter.results import PortalData, value
from exporter.schedule import zone
from exporter.sidecache import SIDE_REFRESH, SideCache

__all__ = ["SIDE_REFRESH", "DocSpaceCollector", "ExporterCollector", "Scraper"]

log = logging.getLogger(__name__)

# Margin kept free inside Prometheus's scrape timeout for rendering and sending the answer.
SCRAPE_TIMEOUT_OFFSET = 0.5
# Each call must give up a little before the scrape's end so its error is known in time.
CALL_MARGIN = 0.05
# Threads that open portal connections ahead of the first scrape (Scraper.warm): enough to
# open 3000 TLS connections in a few seconds, few enough to leave a scrape its CPU.
WARM_THREADS = 8
# Longest wait for one connection (TCP + TLS handshake) while warming up.
WARM_TIMEOUT = 10.0
# At most max(SIDE_MIN, max_concurrency / SIDE_SPREAD) portals start their hourly reads
# (settings, tariff) in one scrape; a read again after a failure is not counted (it comes
# on the next scrape, contract 5a). After a start with 1000 HTTPS portals every one of them
# was due in the same scrape: 2000 calls more, 8.1 s of a 10 s timeout on 2 cores. Spread
# over a few scrapes, the reads stay spread in the hours after (benchmarks/README.md).
SIDE_SPREAD = 2
SIDE_MIN = 16


class _Fetch:
    """One in-flight round of API calls for one portal, shared by concurrent scrapes."""

    def __init__(self, portal: PortalConfig, started: float) -> None:
        self.portal = portal
        self.started = started
        self.futures: dict[str, Future[Any]] = {}
        self.done = threading.Event()
        self.finished: float | None = None
        self.remaining = 0
        self.lock = threading.Lock()


class Scraper:
    """Owns the DocSpace clients and the worker pool; turns portals into PortalData."""

    def __init__(
        self,
        *,
        max_workers: int = DEFAULT_MAX_CONCURRENCY,
        max_requests_per_host: int = 8,
        timer: Callable[[], float] = monotonic,
        client_factory: Callable[..., DocSpaceClient] = DocSpaceClient,
        cache_timer: Callable[[], float] = monotonic,
    ) -> None:
        self._timer = timer
        # settings and tariff, read at most hourly (cache_timer is its clock)
        self._side = SideCache(cache_timer)
        self._client_factory = client_factory
        self._max_per_host = max_requests_per_host
        # max_concurrency: calls in flight at once, all portals together. Calls and jobs
        # wait for a slot in one queue (no thread), then a backup call goes out ahead on an
        # open connection, or it (or a job) runs in a worker thread (exporter/dispatch.py).
        self._dispatch = Dispatcher(max_workers)
        self._lock = threading.Lock()
        self._clients: dict[str, DocSpaceClient] = {}
        # One limit per origin (scheme, host, port): one web server. Keyed by host name
        # alone, portals on several ports of one host (several installations on one
        # server) shared 8 slots: 100 of them took 7.7 s a scrape instead of 0.3 s, and
        # hanging ones held every slot, so a healthy neighbour timed out.
        self._host_limits: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
        self._inflight: dict[str, _Fetch] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        # Levels of the failure lines: warn on a change, then a reminder (exporter/logs.py).
        self.failure_log = logs.FailureLog()
        self.upstream_fetches = 0  # rounds of API calls started; proves request sharing
        self._closed = False
        self._max_workers = max_workers
        self._scrapes = 0  # running now; the warm-up waits for them
        self._scrape_cond = threading.Condition()

    # -- clients ----------------------------------------------------------------------

    def _client(self, portal: PortalConfig) -> DocSpaceClient:
        with self._lock:
            client = self._clients.get(portal.name)
            if client is not None and client.portal == portal:
                return client
            if client is not None:
                client.close()
            origin = _origin(portal.url)
            limit = self._host_limits.get(origin)
            if limit is None:
                limit = self._host_limits[origin] = threading.BoundedSemaphore(
                    self._max_per_host)
            client = self._client_factory(portal, host_limit=limit)
            self._clients[portal.name] = client
            return client

    def retain(self, portals: Iterable[PortalConfig]) -> None:
        """After a reload: drop clients (and cached logins) of portals no longer configured
        or whose settings changed."""
        keep = {p.name: p for p in portals}
        with self._lock:
            for name in list(self._clients):
                if name not in keep or self._clients[name].portal != keep[name]:
                    self._clients.pop(name).close()
            for key in list(self._errors):
                if key[0] not in keep:
                    del self._errors[key]
        self._side.retain(keep)
        self.failure_log.retain(keep)

    def warm(self, portals: Iterable[PortalConfig]) -> threading.Event:
        """Open each portal's connections in the background (WARM_THREADS at a time), so
        the first scrape after a start or a reload does not spend its deadline on 3000 TLS
        handshakes at once. While a scrape runs it waits, then opens what is still missing.
        The returned event is set when every portal was tried."""
        # Last portal first: a scrape calls the portals first to last, so the portals a
        # warm-up reached before a scrape came are the ones that scrape reaches last.
        todo = iter(list(portals)[::-1])
        lock = threading.Lock()
        done = threading.Event()
        running = [WARM_THREADS]

        def worker() -> None:
            try:
                while not self._closed:
                    with lock:
                        portal = next(todo, None)
                    if portal is None:
                        return
                    # A scrape that runs meanwhile has the CPU (handshakes are CPU-bound
                    # here): the warm-up waits for it, then opens what is still missing.
                    while self._wait_for_no_scrape():
                        try:
                            self._client(portal).warm(min(portal.timeout, WARM_TIMEOUT),
                                                      stop=self._scraping)
                        except Exception:  # noqa: BLE001 - warming must never raise
                            log.debug("warm-up failed", extra={"portal": portal.name})
                        if not self._scraping():
                            break
            finally:
                with lock:
                    running[0] -= 1
                    if running[0] == 0:
                        done.set()

        for i in range(WARM_THREADS):
            threading.Thread(target=worker, name=f"docspace-warm-{i}", daemon=True).start()
        return done

    @property
    def sent_ahead(self) -> int:
        """Calls sent on an open connection, read when their answer arrived (a statistic)."""
        return self._dispatch.sent_ahead

    @property
    def read_in_poller(self) -> int:
        """Answers of calls sent ahead that arrived whole and were read by the poller thread
        itself, not handed to a worker (a statistic)."""
        return self._dispatch.read_in_poller

    def _scraping(self) -> bool:
        return self._scrapes > 0

    def _wait_for_no_scrape(self) -> bool:
        """Wait while a scrape runs; False once the scraper is closed."""
        with self._scrape_cond:
            while self._scrapes and not self._closed:
                self._scrape_cond.wait(1.0)
        return not self._closed

    def close(self) -> None:
        self._closed = True
        self._dispatch.close()
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()

    # -- errors -----------------------------------------------------------------------

    def errors(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._errors)

    def _count(self, portal: str, endpoint: str, reason: str) -> None:
        with self._lock:
            key = (portal, endpoint, reason)
            self._errors[key] = self._errors.get(key, 0) + 1

    # -- fetching ---------------------------------------------------------------------

    def _start(self, portal: PortalConfig, deadline: float, paced: bool,
               side_budget: list[int]) -> _Fetch:
        """Join the portal's in-flight fetch, or start one. DocSpace allows 50 concurrent
        GETs per user; sharing keeps two Prometheus servers from doubling the load.

        Every call queues for a slot of max_concurrency (exporter/dispatch.py); the hourly
        ones go in turn after the backup calls. `paced`: only as many backup calls as the
        portal has open connections queue at once; the rest go in turn (one new connection,
        not one per call), and the hourly reads wait for a scrape that does not pace the
        portal. `side_budget`: how many more portals may start their hourly reads in this
        scrape (SIDE_SPREAD); one that may not reads them in a later scrape."""
        with self._lock:
            fetch = self._inflight.get(portal.name)
            if fetch is not None and not fetch.done.is_set() and fetch.portal == portal:
                return fetch
            fetch = _Fetch(portal, self._timer())
            self._inflight[portal.name] = fetch
            self.upstream_fetches += 1
        client = self._client(portal)
        # Each endpoint is read by the client method of its name.
        calls: list[tuple[str, Callable[[float], Any]]] = [
            (e.name, getattr(client, e.name)) for e in TABLE
            if not e.side and (portal.history or not e.needs_history)]
        # Settings and tariff (hourly) go one after the other once the backup calls are
        # over, on a connection one of them used: a portal keeps as many connections as it
        # has backup calls (each open TLS connection costs ~30 kB and a handshake), and its
        # hourly scrape takes two round trips more.
        turn = [(e.name, getattr(client, e.name)) for e in TABLE
                if e.side and self._side.due(portal, e.name)]
        open_now = _idle(client) if paced else None
        if open_now is not None and open_now < len(calls):
            # The hourly reads wait for a scrape that does not pace this portal.
            calls, turn = calls[:open_now], calls[open_now:]
        elif turn and not any(
                self._side.failed(portal, name) for name, _ in turn):
            if side_budget[0] <= 0:
                turn = []  # a later scrape reads them
            else:
                side_budget[0] -= 1
        fetch.remaining = len(calls) + len(turn)
        futures: dict[str, Future[Any]] = {}
        for endpoint, _ in calls + turn:
            fut = futures[endpoint] = fetch.futures[endpoint] = Future()
            # A weak reference: the fetch holds its futures, and a future holds its callbacks
            # for good, so a strong one made every fetch a reference cycle that only a full
            # garbage collection could free: ~53 objects per portal per scrape, two full
            # collections per scrape of 1000 portals (benchmarks/README.md). The fetch is
            # alive while its calls run: the scrapes that wait for it and _inflight hold it.
            fut.add_done_callback(functools.partial(self._call_done, weakref.ref(fetch),
                                                    endpoint))
        start = getattr(client, "start", None)  # test doubles may lack it

        def queued_call(endpoint: str, fn: Callable[[float], Any]) -> Queued:
            return Queued(client, futures[endpoint],
                          functools.partial(settle, futures[endpoint], fn, deadline),
                          None if start is None else functools.partial(start, endpoint,
                                                                      deadline))

        queued = [queued_call(endpoint, fn) for endpoint, fn in calls]
        if turn:
            # In turn: each call is queued when the one before it is over, so it finds that
            # one's connection open and goes out ahead on it.
            chain = [queued_call(endpoint, fn) for endpoint, fn in turn]
            for before, after in zip(chain, chain[1:], strict=False):
                assert before.future is not None
                _after([before.future], functools.partial(self._dispatch.queue, [after]))
            if calls and not paced:  # the hourly reads: after the backup calls
                _after([futures[e] for e, _ in calls],
                       functools.partial(self._dispatch.queue, [chain[0]]))
            else:
                queued.append(chain[0])
        self._dispatch.queue(queued)
        return fetch

    def _call_done(self, ref: weakref.ref[_Fetch], endpoint: str, fut: Future[Any]) -> None:
        fetch = ref()
        if fetch is None:  # nobody holds it any more (a reload replaced its portal)
            return
        with fetch.lock:
            fetch.remaining -= 1
            last = fetch.remaining == 0
        if last:
            fetch.finished = self._timer()
            self._record(fetch)
            fetch.done.set()

    def _record(self, fetch: _Fetch) -> None:
        """Count the errors of a finished fetch, once, whoever was waiting for it."""
        login_counted = False
        failures: list[tuple[str, str, str]] = []  # endpoint, reason, message
        for endpoint, fut in fetch.futures.items():
            if BY_NAME[endpoint].side:
                ok = not fut.cancelled() and fut.exception() is None
                self._side.store(fetch.portal, endpoint, ok, fut.result() if ok else None)
            exc = fut.exception() if not fut.cancelled() else None
            if exc is None:
                task = fut.result()
                if isinstance(task, Task) and task.failed and log.isEnabledFor(logging.DEBUG):
                    # The API's error text may name paths or storage details: debug only,
                    # truncated by the parser.
                    log.debug("task failed", extra={"portal": fetch.portal.name,
                                                    "endpoint": endpoint,
                                                    "error": task.error_text})
                continue
            err = _as_fetch_error(exc, fetch.portal.name, endpoint)
            if err.endpoint == "login":
                if not login_counted:
                    self._count(fetch.portal.name, "login", err.reason)
                    failures.append(("login", err.reason, str(err)))
                    login_counted = True
                continue
            self._count(fetch.portal.name, endpoint, err.reason)
            failures.append((endpoint, err.reason, str(err)))
        name = fetch.portal.name
        level = self.failure_log.level(name, frozenset((e, r) for e, r, _ in failures))
        if level == logging.INFO:
            log.info("portal answers again", extra={"portal": name})
        elif level is not None:
            for endpoint, reason, text in failures:
                if endpoint == "login":
                    log.log(level, "login failed", extra={
                        "portal": name, "reason": reason, "err": text})
                else:
                    log.log(level, "API call failed", extra={
                        "portal": name, "endpoint": endpoint, "reason": reason, "err": text})

    def scrape(self, portals: list[PortalConfig], scrape_timeout: float | None = None
               ) -> list[PortalData]:
        """Query every portal concurrently. With `scrape_timeout` (seconds, already minus
        the offset), the answer is ready by then whatever the portals do."""
        start = self._timer()
        end = start + scrape_timeout if scrape_timeout is not None else None
        fetches: list[_Fetch] = []
        with self._scrape_cond:
            self._scrapes += 1
        try:
            paced = self._pace(portals)
            side_budget = [max(SIDE_MIN, self._max_workers // SIDE_SPREAD)]
            for p in portals:
                deadline = start + p.timeout
                if end is not None:
                    deadline = min(deadline, end - CALL_MARGIN)
                fetches.append(self._start_or_fail(p, start, deadline, paced, side_budget))
            return self._wait(fetches, portals, start, end)
        finally:
            with self._scrape_cond:
                self._scrapes -= 1
                self._scrape_cond.notify_all()

    def _pace(self, portals: list[PortalConfig]) -> bool:
        """Pace this scrape when its calls that have no open connection are more than
        max_concurrency runs at once (a start or reload with many portals): each such
        portal then makes them in turn on one new connection, so 1000 HTTPS portals cost
        1000 TLS handshakes in the first scrape instead of 4000 (CPU-bound here: ~2.5 ms
        each, plus as much in the server), and their calls still fit in the slots."""
        with self._lock:  # no client yet (a start, a changed portal): nothing open
            clients = [self._clients.get(p.name) for p in portals]
        missing = 0
        for p, client in zip(portals, clients, strict=True):
            open_now = 0 if client is None or client.portal != p else _idle(client)
            if open_now is not None:
                missing += max(0, (4 if p.history else 3) - open_now)
        return missing > self._max_workers

    def _start_or_fail(self, p: PortalConfig, start: float, deadline: float,
                       paced: bool, side_budget: list[int]) -> _Fetch:
        try:
            return self._start(p, deadline, paced, side_budget)
        except Exception:  # noqa: BLE001 - never raise out of a scrape
            log.exception("could not start fetch", extra={"portal": p.name})
            broken = _Fetch(p, start)
            broken.finished = start
            broken.done.set()
            return broken

    def _wait(self, fetches: list[_Fetch], portals: list[PortalConfig], start: float,
              end: float | None) -> list[PortalData]:
        wait_until = max((start + p.timeout for p in portals), default=start)
        if end is not None:
            wait_until = min(wait_until, end)
        # Wait for each fetch's `done`, not for its futures: a future counts as done before
        # its callbacks run, and the last callback is what records the fetch's errors, so
        # waiting on futures let this scrape render the error counter before its own
        # failures were in it. A small grace lets calls that hit their own deadline report
        # it as timeout.
        for fe in fetches:
            fe.done.wait(max(0.0, wait_until + 0.02 - self._timer()))
        now = self._timer()
        return [self._portal_data(fe, start, now) for fe in fetches]

    def _portal_data(self, fetch: _Fetch, start: float, now: float) -> PortalData:
        p = fetch.portal
        data = PortalData(name=p.name, url=p.url, duration=0.0)
        for endpoint, fut in fetch.futures.items():
            if not fut.done():
                data.fail(endpoint, "timeout")
                continue
            exc = fut.exception() if not fut.cancelled() else None
            if exc is None:
                data.answer(endpoint, fut.result())
            else:
                data.fail(endpoint, _as_fetch_error(exc, p.name, endpoint).reason)
        if not fetch.futures:
            data.fail("schedule", "connection")
        # Settings and tariff not read in this fetch come from the hourly cache (the one
        # documented cache); one whose read failed in this fetch is left out.
        for e in TABLE:
            if e.side and e.name not in fetch.futures and fetch.futures:
                cached = self._side.value(p, e.name)
                if cached is not None:
                    data.answer(e.name, cached)
        data.zone = self._zone(p, data)
        finished = fetch.finished if fetch.done.is_set() and fetch.finished else now
        # A scrape that joined a fetch another one started reports the fetch's duration.
        data.duration = max(0.0, min(finished, now) - fetch.started)
        return data

    def _zone(self, p: PortalConfig, data: PortalData) -> str | None:
        """The zone DocSpace's scheduler uses for this portal: the config's `timezone`, else
        UTC for a dump schedule (tenant -1 has no zone in its row; inferred), else the
        portal's settings (the last successful read, also when a refresh just failed)."""
        if p.timezone:
            return p.timezone
        if p.dump:
            return "UTC"
        settings = value(data.settings) or self._side.value(p, "settings")
        if isinstance(settings, PortalSettings) and zone(settings.timezone) is not None:
            return settings.timezone
        return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a portal URL, the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # the config refuses such URLs; never raise here
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def _after(futures: list[Future[Any]], then: Callable[[], None]) -> None:
    """Call `then` once every one of `futures` is done (in the thread that finishes the
    last)."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    for fut in futures:
        fut.add_done_callback(one_done)


def _idle(client: Any) -> int | None:
    """Open connections of a client's pool; None for a client that cannot tell (a double)."""
    idle = getattr(client, "idle_connections", None)
    return None if idle is None else int(idle())


def _as_fetch_error(exc: BaseException, portal: str, endpoint: str) -> FetchError:
    if isinstance(exc, FetchError):
        return exc
    # A bug of ours must not take the scrape down; it shows as invalid_response.
    log.error("unexpected error", extra={"portal": portal, "endpoint": endpoint,
                                         "err": type(exc).__name__})
    return FetchError("invalid_response", f"unexpected {type(exc).__name__}")


class DocSpaceCollector(Collector):
    """A prometheus_client collector that queries the portals when it is collected.

    One is made per HTTP request (like prometheus-pve-exporter's /pve?target=), so each
    scrape carries its own deadline and its own portal selection.

    Sample output:
        docspace_up{portal="main"} 1.0
        docspace_backup_schedule_last_backup_age_seconds{portal="main"} 86412.0
        docspace_backup_status{portal="main",status="completed"} 1.0
    """

    def __init__(self, scraper: Scraper, portals: list[PortalConfig], *,
                 scrape_timeout: float | None = None, include_errors_for_all: bool = True,
                 clock: Callable[[], float] | None = None,
                 on_result: Callable[[list[PortalData], list[Any], float], None] | None = None
                 ) -> None:
        self._scraper = scraper
        self._on_result = on_result  # the status page keeps each scrape's results
        self._portals = portals
        self._timeout = scrape_timeout
        self._all_errors = include_errors_for_all
        self._clock = clock or wall_clock

    def collect(self) -> Iterator[Any]:
        try:
            data = self._scraper.scrape(self._portals, self._timeout)
            now = self._clock()
            families = metrics.portal_families(data, now)
            if self._on_result is not None:
                self._on_result(data, families, now)
            yield from families
            names = None if self._all_errors else [p.name for p in self._portals]
            yield metrics.error_family(self._scraper.errors(), names)
        except Exception:  # noqa: BLE001 - a scrape must never fail
            log.exception("collector failed")


class ExporterCollector(Collector):
    """The exporter's own metrics: build info and config reload state."""

    def __init__(self, state: Callable[[], tuple[bool, float | None, Config | None]]) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        ok, ts, cfg = self._state()
        yield from metrics.exporter_families(__version__, ok, ts,
                                             len(cfg.portals) if cfg else 0)
