"""The status page at `/`: what the most recent scrape found for each portal.

No API call is made for the page: every scrape (/metrics or /probe) hands its per-portal
results to `LastScrape.record` (a small hook in the collector), and the page renders those.
A portal that no scrape has reached yet says so. Plain HTML and CSS: no script, no external
asset, every value escaped; nothing from the config but portal names and URLs (which
/metrics publishes in docspace_portal_info too), and from the API only states and times,
never an error text.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from prometheus_client.metrics_core import Metric

from exporter.config import PortalConfig
from exporter.results import PortalData

HEALTHY, WARNING, FAILING, UNKNOWN = "healthy", "warning", "failing", "unknown"
# The alert rules' thresholds (deploy/prometheus/rules): stale above 1.5 x the schedule's
# interval, overdue 1 h after the due time.
STALE_FACTOR = 1.5
OVERDUE_AFTER = 3600.0
BLOCKING_TARIFFS = {"delay", "not_paid"}

_KEEP = {
    "docspace_backup_schedule_configured", "docspace_backup_schedule_last_backup_timestamp_seconds",
    "docspace_backup_schedule_expected_interval_seconds",
    "docspace_backup_schedule_next_due_timestamp_seconds", "docspace_backup_status",
    "docspace_restore_status", "docspace_portal_tariff_state", "docspace_backup_progress_ratio",
    "docspace_restore_progress_ratio",
}


@dataclass
class PortalResult:
    """One portal as its most recent scrape left it."""

    name: str
    scraped_at: float
    up: bool
    failed: dict[str, str]
    # metric name -> [(labels, value)]
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        found = self.samples.get(metric)
        return found[0][1] if found else None

    def state(self, metric: str, label: str) -> str | None:
        """The label value of a state set's sample that is 1 (None when none is)."""
        for labels, v in self.samples.get(metric, ()):
            if v == 1:
                return labels.get(label)
        return None


class LastScrape:
    """Per-portal results of the most recent scrape that included each portal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_portal: dict[str, PortalResult] = {}

    def record(self, data: Sequence[PortalData], families: Iterable[Metric], now: float) -> None:
        results = {d.name: PortalResult(d.name, now, d.up, dict(d.failed)) for d in data}
        for family in families:
            if family.name not in _KEEP:
                continue
            for s in family.samples:
                # the sample's own labels dict (portal included), not a copy: fresh per scrape
                r = results.get(s.labels.get("portal", ""))
                if r is not None:
                    r.samples.setdefault(family.name, []).append((s.labels, s.value))
        with self._lock:
            self._by_portal.update(results)

    def get(self, name: str) -> PortalResult | None:
        with self._lock:
            return self._by_portal.get(name)

    def retain(self, names: Iterable[str]) -> None:
        keep = set(names)
        with self._lock:
            for name in [n for n in self._by_portal if n not in keep]:
                del self._by_portal[name]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@dataclass
class Row:
    health: str
    cells: list[str]  # already escaped HTML
    problems: list[str]


def assess(r: PortalResult, now: float) -> Row:
    """Health (colour) and the cells of one portal's row."""
    e = html.escape
    failing: list[str] = []
    warning: list[str] = []
    restoring = r.state("docspace_restore_status", "status") == "running"
    if r.up:
        up = '<span class="ok">up</span>'
    else:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.failed.items()))
        up = f'<span class="bad">down</span> <small>{e(reasons)}</small>'
        if restoring and set(r.failed.values()) == {"forbidden"}:
            # DocSpace answers 403 on purpose while it restores (the alert is inhibited).
            warning.append("API closed during the restore")
        else:
            failing.append("API not answering")
    last = r.value("docspace_backup_schedule_last_backup_timestamp_seconds")
    configured = r.value("docspace_backup_schedule_configured")
    interval = r.value("docspace_backup_schedule_expected_interval_seconds")
    if last is not None:
        age = now - last
        last_cell = f"{e(_when(last))}<br><small>{e(_span(age))} ago</small>"
        if interval and age > STALE_FACTOR * interval:
            failing.append("last scheduled backup is stale")
        elif interval and age > interval:
            warning.append("last scheduled backup is older than its interval")
    elif configured == 0:
        last_cell = "no schedule"
        warning.append("no backup schedule")
    elif configured == 1:
        last_cell = "never ran"
        warning.append("schedule never ran")
    else:
        last_cell = "unknown"
    due = r.value("docspace_backup_schedule_next_due_timestamp_seconds")
    if due is None:
        due_cell = "&ndash;"
    elif due >= now:
        due_cell = f"{e(_when(due))}<br><small>in {e(_span(due - now))}</small>"
    else:
        due_cell = f"{e(_when(due))}<br><small>{e(_span(now - due))} ago</small>"
        if now - due > OVERDUE_AFTER:
            failing.append("scheduled backup overdue")
    tasks = []
    for kind, metric in (("backup", "docspace_backup_status"),
                         ("restore", "docspace_restore_status")):
        st = r.state(metric, "status")
        if st is None:
            continue
        tasks.append(f"{kind}: {e(st)}")
        if st == "failed":
            failing.append(f"last {kind} failed")
        elif st in ("running", "created"):
            warning.append(f"{kind} {st}")
    tariff = r.state("docspace_portal_tariff_state", "state")
    if tariff in BLOCKING_TARIFFS:
        failing.append(f"tariff {tariff}: scheduled backups are skipped")
    health = FAILING if failing else WARNING if warning else HEALTHY
    cells = [up, last_cell, due_cell, "<br>".join(tasks) or "no task",
             e(tariff) if tariff else "&ndash;"]
    return Row(health, cells, failing + warning)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
tr.healthy td.health{background:#c8f0c8}
tr.warning td.health{background:#ffe8a8}
tr.failing td.health{background:#f8c0c0}
tr.unknown td.health{background:#e4e4e4}
.ok{color:#17661d;font-weight:bold}.bad{color:#a01010;font-weight:bold}
small{color:#555}nav span{margin-right:1.5em}
"""


def render(portals: Sequence[PortalConfig], last: LastScrape, *, version: str,
           telemetry_path: str, now: float) -> bytes:
    e = html.escape
    rows = []
    counts = {HEALTHY: 0, WARNING: 0, FAILING: 0, UNKNOWN: 0}
    for p in portals:
        r = last.get(p.name)
        probe = f"/probe?target={quote(p.name, safe='')}"
        name_cell = (f'<a href="{e(probe)}">{e(p.name)}</a><br><small>{e(p.url)}</small>')
        if r is None:
            row = Row(UNKNOWN, ["not scraped yet", "", "", "", ""], [])
            scraped = "&ndash;"
        else:
            row = assess(r, r.scraped_at)
            ago = _span(now - r.scraped_at)
            scraped = f"{e(_when(r.scraped_at))}<br><small>{e(ago)} ago</small>"
        counts[row.health] += 1
        problems = e("; ".join(row.problems)) or "&ndash;"
        rows.append(
            f'<tr class="{row.health}" data-portal="{e(p.name)}">'
            f'<td class="health">{row.health}</td><td>{name_cell}</td>'
            + "".join(f"<td>{c}</td>" for c in row.cells)
            + f"<td>{problems}</td><td>{scraped}</td></tr>")
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>DocSpace Backup Exporter</title>
<style>{CSS}</style></head>
<body>
<h1>DocSpace Backup Exporter</h1>
<p>Version {e(version)} &middot; {len(portals)} portals: {e(summary) or "none"} &middot;
page made {e(_when(now))}. Each row shows the most recent scrape of that portal; this
page makes no API calls.</p>
<nav><span><a href="{e(telemetry_path)}">Metrics</a> (all portals)</span>
<span><a href="/sd">Service discovery</a> (Prometheus http_sd)</span>
<span><a href="/-/healthy">Health</a></span> <span><a href="/-/ready">Readiness</a></span></nav>
<h2>Portals</h2>
<table id="portals">
<thead><tr><th>Health</th><th>Portal (probe)</th><th>API</th><th>Last scheduled backup</th>
<th>Next due</th><th>Tasks</th><th>Tariff</th><th>Problems</th><th>Scraped</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
    return page.encode()
