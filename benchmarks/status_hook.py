#!/usr/bin/env python3
"""Cost of the status page's hook (exporter/status.py) on a /metrics scrape.

Every scrape hands its per-portal results to LastScrape.record, which walks the scrape's
metric families once. This measures the CPU time of building and rendering /metrics for N
simulated portals in-process, with the hook and with a no-op in its place, alternating, and
prints the medians and the cost of rendering `/` from the kept results:

    python benchmarks/status_hook.py            # N = 100, 1000
    python benchmarks/status_hook.py --n 300 --rounds 21

The simulator runs in the same process and answers at once, so "process CPU" includes its
work; "inside the hook" is the thread CPU time spent in LastScrape.record alone, the number
that matters. Nothing is asserted; the machine may be shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.exposition import choose_encoder  # noqa: E402

from docspace_simulator import Simulator  # noqa: E402
from exporter import exposition, status  # noqa: E402
from exporter.app import ExporterApp  # noqa: E402
from exporter.config import ApiKeyAuth, Config, PortalConfig, Secret  # noqa: E402


class NoHook:
    def record(self, *_: Any) -> None:
        pass


class TimedHook:
    """The real hook, timing itself (thread CPU time spent inside record)."""

    def __init__(self, real: status.LastScrape) -> None:
        self.real = real
        self.spent: list[float] = []

    def record(self, *args: Any) -> None:
        start = time.thread_time()
        self.real.record(*args)
        self.spent.append(time.thread_time() - start)


def scrape_cpu(app: ExporterApp) -> float:
    encoder, _ = choose_encoder("")
    start = time.process_time()
    exposition.encode(app.registry(None, None), encoder)
    return time.process_time() - start


def measure(n: int, rounds: int) -> None:
    sim = Simulator("127.0.0.1", 0, latency=0.0)
    scenarios = ["healthy", "backup_failed", "stale", "no_schedule"]
    for i in range(n):
        sim.add_portal(f"p{i:05d}", scenarios[i % len(scenarios)])
    sim.start()
    try:
        portals = tuple(PortalConfig(name=p.name, url=sim.portal_url(p.name),
                                     auth=ApiKeyAuth(Secret(p.api_key)), timeout=30.0)
                        for p in sim.portals)
        app = ExporterApp(Config(portals=portals))
        hooked, plain = [], []
        real = app.last_scrape
        timed = TimedHook(real)
        scrape_cpu(app)  # warm-up: logins, connections
        for _ in range(rounds):
            app.last_scrape = timed  # type: ignore[assignment]
            hooked.append(scrape_cpu(app))
            app.last_scrape = NoHook()  # type: ignore[assignment]
            plain.append(scrape_cpu(app))
        app.last_scrape = real
        page = []
        for _ in range(rounds):
            start = time.process_time()
            body = status.render(portals, real, version="bench", telemetry_path="/metrics",
                                 now=time.time())
            page.append(time.process_time() - start)
        app.scraper.close()
        h, p = statistics.median(hooked), statistics.median(plain)
        inside = statistics.median(timed.spent)
        print(f"N={n:5d}  process CPU per /metrics scrape (simulator included): "
              f"with hook {h * 1000:7.1f} ms, without {p * 1000:7.1f} ms  |  "
              f"inside the hook {inside * 1000:5.2f} ms  |  "
              f"render / {statistics.median(page) * 1000:5.1f} ms ({len(body) // 1024} KiB)")
    finally:
        sim.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append")
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    for n in args.n or [100, 1000]:
        measure(n, args.rounds)


if __name__ == "__main__":
    main()
