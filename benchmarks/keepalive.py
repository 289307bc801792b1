#!/usr/bin/env python3
"""Kept-alive vs fresh connections against `--demo` (issue 13 item 2).

Prometheus keeps its scrape connection alive. If an answer leaves in two small writes
(headers, then body), the second waits for the client's delayed ACK (~40 ms on Linux) unless
Nagle is off. This prints the median time of /-/healthy, /probe and /metrics on one kept-alive
connection and on a fresh connection per request.

    python benchmarks/keepalive.py                    # this tree
    python benchmarks/keepalive.py --tree /path/to/other/checkout   # e.g. main, for "before"
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _exporter import ROOT, Exporter, ms, timed

PATHS = ("/-/healthy", "/probe?target=healthy", "/metrics")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT, help="source tree to run")
    p.add_argument("-n", type=int, default=40, help="requests per path and mode")
    args = p.parse_args()
    print(f"tree: {args.tree}   requests per cell: {args.n}   (median ms, loopback)")
    print(f"{'path':24} {'kept-alive':>10} {'fresh':>10}")
    with Exporter(args.tree, "--demo") as ex:
        for path in PATHS:  # warm-up: logins, connection pools, first renders
            conn = ex.connect()
            for _ in range(3):
                timed(conn, path)
            conn.close()
        for path in PATHS:
            kept = ex.connect()
            alive = [timed(kept, path)[0] for _ in range(args.n)]
            kept.close()
            fresh = []
            for _ in range(args.n):
                conn = ex.connect()
                fresh.append(timed(conn, path)[0])
                conn.close()
            print(f"{path:24} {ms(statistics.median(alive)):>10} "
                  f"{ms(statistics.median(fresh)):>10}")


if __name__ == "__main__":
    main()
