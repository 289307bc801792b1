"""CPU of turning scrape results into families and text: portal_families + generate_latest.

    python benchmarks/families.py [--portals 3000] [--runs 15] [--exporter-src DIR]

Builds N portals that answered every endpoint (schedule, tasks, history, settings, tariff,
a known zone, so next-due is computed too) and prints the median and the best of `runs`
timings. `--exporter-src` times another revision's exporter/ (e.g. `main` via
`git archive main exporter | tar -x -C DIR`); both PortalData shapes are understood.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--portals", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--exporter-src", type=Path, metavar="DIR")
    args = ap.parse_args()
    if args.exporter_src:
        sys.path.insert(0, str(args.exporter_src.resolve()))
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter import metrics
    from exporter.model import History, PortalSettings, Schedule, Tariff, Task

    answers: dict[str, Any] = {
        "schedule": Schedule(period="daily", hour=2, day=0, storage_type="documents",
                             backups_stored=5, last_backup_time=1_700_000_000.0, dump=False),
        "backup_progress": Task(is_completed=True, progress=100.0, has_error=False,
                                status="completed"),
        "restore_progress": None,
        "history": History(backups=3, last_created=1_700_000_000.0),
        "settings": PortalSettings(timezone="Europe/Berlin", version="3.7", tenant_status=0),
        "tariff": Tariff(state="paid", due=1_800_000_000.0),
    }
    portals = []
    for i in range(args.portals):
        p = metrics.PortalData(name=f"p{i:05d}", url=f"https://p{i:05d}.example", duration=0.2,
                               zone="Europe/Berlin")
        for endpoint, value in answers.items():
            if hasattr(p, "answer"):
                p.answer(endpoint, value)
            else:  # the shape before the endpoint table: a dict of answers
                p.ok[endpoint] = value
        portals.append(p)

    class Fixed:
        def __init__(self, families: list[Any]) -> None:
            self.families = families

        def collect(self) -> Any:
            return self.families

    fam_times, total_times = [], []
    size, text = 0, b""
    for _ in range(args.runs):
        t0 = time.process_time()
        families = metrics.portal_families(portals, 1_700_100_000.0)
        t1 = time.process_time()
        reg = CollectorRegistry(auto_describe=False)
        reg.register(Fixed(families))  # type: ignore[arg-type]
        text = generate_latest(reg)
        size = len(text)
        t2 = time.process_time()
        fam_times.append(t1 - t0)
        total_times.append(t2 - t0)
    print(f"{metrics.__file__}: {args.portals} portals, {args.runs} runs, "
          f"{size} bytes of exposition, sha256 {hashlib.sha256(text).hexdigest()[:16]}")
    print(f"portal_families CPU: median {statistics.median(fam_times) * 1000:.1f} ms, "
          f"best {min(fam_times) * 1000:.1f} ms")
    print(f"families + text CPU: median {statistics.median(total_times) * 1000:.1f} ms, "
          f"best {min(total_times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
