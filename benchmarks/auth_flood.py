#!/usr/bin/env python3
"""Basic auth under a flood of wrong passwords, and the user-name oracle (issue 8, items 2-3).

Starts the exporter (`--demo`, with a web config holding one bcrypt user of cost 10, the
htpasswd default) and prints, as medians:

  * the authorised client's scrape (`/probe?target=healthy`) alone, then while 50 clients
    send wrong passwords as fast as they can: the same wrong password over and over, and a
    new wrong password on every request (what a password-guessing client does);
  * the answer time for an unknown user and for a known user with a wrong password (a new
    password each time, so nothing is cached): equal times leave no oracle.

    python benchmarks/auth_flood.py
    python benchmarks/auth_flood.py --tree /path/to/other/checkout   # e.g. main: "before"
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
from _exporter import ROOT, Exporter, ms, timed

USER, PASSWORD, COST = "prometheus", "the-right-password", 10
SCRAPE = "/probe?target=healthy"


def auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def flooder(ex: Exporter, stop: threading.Event, unique: bool, n: int, sent: list[int]) -> None:
    counter = itertools.count()
    conn = ex.connect()
    while not stop.is_set():
        password = f"wrong-{n}-{next(counter)}" if unique else f"wrong-{n}"
        try:
            timed(conn, SCRAPE, auth(USER, password))
            sent[n] += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = ex.connect()
    conn.close()


def authorised(ex: Exporter, samples: int) -> float:
    conn = ex.connect()  # kept alive, as Prometheus does
    times = []
    for _ in range(samples):
        t, status = timed(conn, SCRAPE, auth(USER, PASSWORD))
        assert status == 200, status
        times.append(t)
        time.sleep(0.05)
    conn.close()
    return statistics.median(times)


def under_flood(ex: Exporter, clients: int, unique: bool, samples: int) -> tuple[float, int]:
    stop = threading.Event()
    sent = [0] * clients
    threads = [threading.Thread(target=flooder, args=(ex, stop, unique, i, sent), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let the flood build up
    start_sent = sum(sent)
    start = time.monotonic()
    median = authorised(ex, samples)
    rate = (sum(sent) - start_sent) / (time.monotonic() - start)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return median, int(rate)


def oracle(ex: Exporter, samples: int) -> tuple[float, float]:
    """A fresh connection per request: a kept-alive one would add the delayed-ACK wait of
    trees that write an answer in two sends (benchmarks/keepalive.py) to both columns."""
    unknown, known = [], []
    for i in range(samples):
        for times, user in ((unknown, f"nobody{i}"), (known, USER)):
            conn = ex.connect()
            times.append(timed(conn, SCRAPE, auth(user, f"guess{i}"))[0])
            conn.close()
    return statistics.median(unknown), statistics.median(known)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT, help="source tree to run")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        web = Path(tmp) / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=COST)).decode()
        web.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
        with Exporter(args.tree, "--demo", "--web.config.file", str(web)) as ex:
            authorised(ex, 3)  # warm-up: first bcrypt, logins, pools
            print(f"tree: {args.tree}   bcrypt cost {COST}   (median ms, loopback)")
            print(f"authorised scrape {SCRAPE}")
            print(f"  alone                                   {ms(authorised(ex, args.samples))}")
            for unique, what in ((False, "same wrong password"),
                                 (True, "new wrong password each time")):
                median, rate = under_flood(ex, args.clients, unique, args.samples)
                print(f"  {args.clients} clients, {what:28} {ms(median)}   "
                      f"(flood answered {rate}/s)")
            unknown, known = oracle(ex, args.samples)
            print("401 answer time")
            print(f"  unknown user                            {ms(unknown)}")
            print(f"  known user, wrong password              {ms(known)}")


if __name__ == "__main__":
    main()
