#!/usr/bin/env python3
"""The floor under the warm-scrape figure: how fast the simulator answers a minimal client.

The same simulator as benchmarks/run.py (N HTTPS portals on ports of their own, 200 ms before
every answer, verified against the 151-CA bundle), and a client that does nothing but the
HTTP: one thread sends the 3 GETs of every portal on kept-alive connections (raw http.client,
no requests, no JSON, no metrics), then reads every answer. The time of such a round is what
the simulator itself needs to answer 3 x N calls at once on these 2 cores; the exporter's warm
scrape (run.py) can only be slower by its own work.

    python benchmarks/floor.py [--portals 100] [--rounds 15]
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402 - the benchmark's own simulator and certificates

ENDPOINTS = ("getbackupschedule", "getbackupprogress", "getrestoreprogress")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--portals", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="docspace-floor-") as tmp:
        work = Path(tmp)
        run.make_tls(work)
        sim, _, sim_cfg = run.start_simulator(args.portals, work, "https")
        try:
            ctx = ssl.create_default_context(cafile=str(run.TLS["bundle"]))
            calls = []
            for p in yaml.safe_load(sim_cfg.read_text(encoding="utf-8"))["portals"]:
                url = urlsplit(p["url"])
                for ep in ENDPOINTS:
                    conn = http.client.HTTPSConnection("127.0.0.1", url.port, context=ctx,
                                                       timeout=30)
                    conn.connect()
                    calls.append((conn, f"{url.path}/api/2.0/backup/{ep}",
                                  {"Authorization": "Bearer " + p["api_key"]}))
            times = []
            for i in range(args.rounds + 1):
                t0 = time.perf_counter()
                for conn, path, headers in calls:
                    conn.request("GET", path, headers=headers)
                for conn, _, _ in calls:
                    resp = conn.getresponse()
                    resp.read()
                    assert resp.status == 200, resp.status
                if i:  # the first round is a warm-up
                    times.append(time.perf_counter() - t0)
                time.sleep(0.3)
            print(f"{args.portals} HTTPS portals, {len(calls)} calls of 200 ms at once, "
                  f"{args.rounds} rounds: median {statistics.median(times):.3f} s, "
                  f"min {min(times):.3f} s, max {max(times):.3f} s "
                  f"(x {statistics.median(times) / run.LATENCY:.2f} one round trip)")
        finally:
            sim.stop()


if __name__ == "__main__":
    main()
