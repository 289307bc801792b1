"""The running exporter: the current config and its reloads (one worker thread, last
request wins), the scraper, and a fresh registry per request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import status
from exporter.clock import wall_clock
from exporter.collector import DocSpaceCollector, ExporterCollector, Scraper
from exporter.config import DEFAULT_MAX_CONCURRENCY, Config, ConfigError

# The name server.py logged under before the split: log lines ("logger") stay the same.
log = logging.getLogger("exporter.server")


class ExporterApp:
    """The running exporter: current config, reload state, scraper, self metrics."""

    # How long POST /-/reload waits for its reload before answering 503.
    RELOAD_WAIT = 60.0

    def __init__(self, config: Config | None, *, loader: Callable[[], Config] | None = None,
                 scraper: Scraper | None = None, clock: Callable[[], float] | None = None,
                 telemetry_path: str = "/metrics", on_config: Callable[[Config], None] | None
                 = None) -> None:
        self._clock = clock = clock or wall_clock
        self._loader = loader
        self._lock = threading.Lock()
        self._config = config
        self._reload_ok = config is not None
        self._reload_ts: float | None = clock() if config is not None else None
        self._on_config = on_config
        # Reloads: requests are numbered; one worker thread at a time runs the loader for
        # the newest request and answers every request up to it (last request wins). An
        # RLock, because SIGHUP's handler may interrupt the main thread anywhere.
        self._reload_cond = threading.Condition(threading.RLock())
        self._reload_requested = 0
        self._reload_done = 0
        self._reload_result: list[str] = []
        self._reload_worker: threading.Thread | None = None
        self.telemetry_path = telemetry_path
        self.last_scrape = status.LastScrape()  # what `/` shows
        self.scraper = scraper or Scraper(
            max_workers=config.max_concurrency if config else DEFAULT_MAX_CONCURRENCY,
            max_requests_per_host=config.max_requests_per_host if config else 8)
        # Built once in a scratch registry and added to each request's registry.
        scratch = CollectorRegistry()
        self._process = [ProcessCollector(registry=scratch), PlatformCollector(registry=scratch),
                         GCCollector(registry=scratch)]
        if config is not None and on_config is not None:
            on_config(config)

    @property
    def config(self) -> Config | None:
        with self._lock:
            return self._config

    def state(self) -> tuple[bool, float | None, Config | None]:
        with self._lock:
            return self._reload_ok, self._reload_ts, self._config

    # -- reloads ------------------------------------------------------------------------------

    def request_reload(self) -> int:
        """Ask for a reload (SIGHUP, POST /-/reload); returns a ticket for wait_reload().
        Never blocks on a running reload: safe in a signal handler."""
        with self._reload_cond:
            self._reload_requested += 1
            ticket = self._reload_requested
            if self._reload_worker is None:
                self._reload_worker = threading.Thread(target=self._reload_loop,
                                                       name="reload", daemon=True)
                self._reload_worker.start()
            return ticket

    def wait_reload(self, ticket: int, timeout: float | None = None) -> list[str] | None:
        """The problems of the reload that served `ticket` (empty: success), or None if it
        has not finished within `timeout`."""
        with self._reload_cond:
            if not self._reload_cond.wait_for(lambda: self._reload_done >= ticket, timeout):
                return None
            return list(self._reload_result)

    def reload(self) -> list[str]:
        """Reload and wait for it. Returns the problems (empty on success); on failure the
        old config keeps serving."""
        result = self.wait_reload(self.request_reload())
        assert result is not None  # no timeout
        return result

    def _reload_loop(self) -> None:
        while True:
            with self._reload_cond:
                if self._reload_done >= self._reload_requested:
                    self._reload_worker = None
                    return
                target = self._reload_requested
            problems = self._reload_now()
            with self._reload_cond:
                self._reload_done = target
                self._reload_result = problems
                self._reload_cond.notify_all()

    def _reload_now(self) -> list[str]:
        """The loader and the swap; only ever run by the reload worker, one at a time."""
        if self._loader is None:
            return ["this exporter runs without a config file (--demo); nothing to reload"]
        try:
            cfg = self._loader()
        except ConfigError as exc:
            with self._lock:
                self._reload_ok = False
            log.error("config reload failed; keeping the previous config",
                      extra={"problems": len(exc.problems)})
            for p in exc.problems:
                log.error("config problem", extra={"problem": p})
            return list(exc.problems)
        except Exception as exc:  # noqa: BLE001 - a reload must not kill the exporter
            with self._lock:
                self._reload_ok = False
            log.exception("config reload failed")
            return [f"unexpected error: {type(exc).__name__}"]
        with self._lock:
            self._config = cfg
            self._reload_ok = True
            self._reload_ts = self._clock()
        self.scraper.retain(cfg.portals)
        self.last_scrape.retain(p.name for p in cfg.portals)
        if self._on_config is not None:
            self._on_config(cfg)
        log.info("config reloaded", extra={"portals": len(cfg.portals)})
        return []

    def registry(self, target: str | None, scrape_timeout: float | None) -> CollectorRegistry:
        """A fresh registry per request: the portals are queried when it is collected."""
        cfg = self.config
        reg = CollectorRegistry(auto_describe=False)
        if target is None:
            portals = list(cfg.portals) if cfg else []
            reg.register(DocSpaceCollector(self.scraper, portals, scrape_timeout=scrape_timeout,
                                           clock=self._clock,
                                           on_result=self.last_scrape.record))
            reg.register(ExporterCollector(self.state))
            for c in self._process:
                reg.register(c)
        else:
            portal = cfg.portal(target) if cfg else None
            portals = [portal] if portal else []
            reg.register(DocSpaceCollector(self.scraper, portals, scrape_timeout=scrape_timeout,
                                           include_errors_for_all=False, clock=self._clock,
                                           on_result=self.last_scrape.record))
        return reg
