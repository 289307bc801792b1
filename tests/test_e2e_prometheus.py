"""End to end: `exporter --demo` scraped by a real Prometheus with the shipped rules, alerts
routed by a real Alertmanager with the shipped config (inhibition included)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import deploy_helpers as dh

pytestmark = pytest.mark.e2e

# Every `for:` of the shipped rules is cut to dh.SHORT_FOR in the copy the test loads
# (dh.fast_rules), so that alerts with `for: 15m`..`1h` fire within seconds. Everything else
# in the rules is unchanged (test_copies_only_shorten_for).


# --- config copies ----------------------------------------------------------------------


def fast_alertmanager_config(dest: Path, webhook: str) -> Path:
    """The shipped alertmanager.yml with every webhook sent to the test's server and short
    group timers; routes and inhibit_rules are unchanged."""
    doc = yaml.safe_load(dh.ALERTMANAGER_CONFIG.read_text())
    doc["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook}/{receiver['name']}"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


# --- webhook receiver -------------------------------------------------------------------


@dataclass
class Webhook:
    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Accept headers of Prometheus's scrapes of this server (job ACCEPT_JOB).
    accepts: list[str] = field(default_factory=list)

    def alerts(self, receiver: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """(status, labels) of every alert in every notification received so far."""
        with self.lock:
            return [(a["status"], a["labels"]) for n in self.notifications
                    if receiver is None or n["receiver"] == receiver for a in n["alerts"]]


def serve_webhook(hook: Webhook) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook.lock:
                hook.notifications.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            """A scrape target that records what Prometheus asks for."""
            with hook.lock:
                hook.accepts.append(self.headers.get("Accept", ""))
            body = b"accept_recorder 1\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


ACCEPT_JOB = "accept-recorder"


def add_accept_recorder(config: Path, address: str) -> None:
    """One more scrape job, at the webhook server, to learn the Accept header this Prometheus
    release sends (the shipped jobs are unchanged)."""
    doc = yaml.safe_load(config.read_text())
    doc["scrape_configs"].append({"job_name": ACCEPT_JOB, "scrape_interval": "1s",
                                  "scrape_timeout": "1s",
                                  "static_configs": [{"targets": [address]}]})
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


# --- the stack --------------------------------------------------------------------------


@dataclass
class Stack:
    exporter: str
    prometheus: str
    alertmanager: str
    webhook: Webhook
    release: dh.PromRelease


@pytest.fixture(scope="module")
def stack(prom: dh.PromRelease, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack on one Prometheus release (2.x and 3.x in turn, see the `prom` fixture)."""
    work = tmp_path_factory.mktemp(f"e2e-prometheus{prom.major}")
    hook = Webhook()
    server = serve_webhook(hook)
    try:
        with dh.children() as started:
            exporter = dh.start_exporter(started, work)
            am_config = fast_alertmanager_config(
                work / "alertmanager.yml", f"http://127.0.0.1:{server.server_address[1]}")
            alertmanager = dh.start_alertmanager(started, work, am_config, release=prom)
            prom_config = dh.fast_prometheus_config(
                work / "prometheus.yml", dh.fast_rules(work / "rules.yml"), exporter,
                alertmanager.removeprefix("http://"))
            add_accept_recorder(prom_config, f"127.0.0.1:{server.server_address[1]}")
            prometheus = dh.start_prometheus(started, work, prom_config, release=prom)
            yield Stack(exporter, prometheus, alertmanager, hook, prom)
    finally:
        server.shutdown()
        server.server_close()


def am_alerts(stack: Stack) -> list[dict[str, Any]]:
    return list(dh.http_json(stack.alertmanager + "/api/v2/alerts"))


def am_alert(stack: Stack, alertname: str, portal: str,
             state: str | None = None) -> dict[str, Any] | None:
    """An Alertmanager alert with these labels (any job/instance), in `state` if given."""
    for alert in am_alerts(stack):
        labels = alert["labels"]
        if labels.get("alertname") == alertname and labels.get("portal") == portal and (
                state is None or alert["status"]["state"] == state):
            return alert
    return None


# --- tests ------------------------------------------------------------------------------


def test_copies_only_shorten_for(tmp_path: Path) -> None:
    original = yaml.safe_load(dh.RULES_FILE.read_text())
    fast = yaml.safe_load(dh.fast_rules(tmp_path / "rules.yml").read_text())
    for group, fast_group in zip(original["groups"], fast["groups"], strict=True):
        for rule, fast_rule in zip(group["rules"], fast_group["rules"], strict=True):
            assert {k: v for k, v in fast_rule.items() if k != "for"} == {
                k: v for k, v in rule.items() if k != "for"}
            assert fast_rule.get("for") == (dh.SHORT_FOR if "for" in rule else None)


# The media types (and their `version`s) a Prometheus 3 scrape accepts without a
# `fallback_scrape_protocol`: anything else fails the scrape ("unsupported Content-Type").
PROM3_CONTENT_TYPES = {("text/plain", "0.0.4"), ("text/plain", "1.0.0"),
                       ("application/openmetrics-text", "0.0.1"),
                       ("application/openmetrics-text", "1.0.0")}


def _media_type(content_type: str) -> tuple[str, str]:
    kind, *params = (p.strip() for p in content_type.split(";"))
    values = dict(p.split("=", 1) for p in params if "=" in p)
    return kind.lower(), values.get("version", "")


def test_scraped_without_fallback_scrape_protocol(stack: Stack) -> None:
    """Prometheus 2 and 3 scrape /metrics and /probe with the shipped jobs as they are (no
    `fallback_scrape_protocol`), and the exporter answers the Accept header each release
    really sends with a Content-Type Prometheus 3 accepts."""
    print(f"ran with {stack.release.label}")
    shipped = dh.PROMETHEUS_CONFIG.read_text()
    assert "fallback_scrape_protocol" not in shipped
    loaded = dh.http_json(stack.prometheus + "/api/v1/status/config")["data"]["yaml"]
    assert "fallback_scrape_protocol" not in loaded

    def targets_up() -> list[dict[str, Any]] | None:
        active = dh.http_json(stack.prometheus + "/api/v1/targets")["data"]["activeTargets"]
        ours = [t for t in active if t["labels"]["job"] in ("docspace", "docspace-probe")]
        return ours if ours and all(t["health"] == "up" for t in ours) else None

    ours = dh.wait_until(targets_up, what="the shipped jobs' targets up")
    assert all(t["lastError"] == "" for t in ours), [t["lastError"] for t in ours]
    assert dh.prom_query(stack.prometheus, 'scrape_samples_scraped{job="docspace"} > 100')
    accept = dh.wait_until(lambda: list(stack.webhook.accepts),
                           what="a scrape of the Accept recorder")[-1]
    for path in ("/metrics", "/probe?target=healthy"):
        req = urllib.request.Request(f"http://{stack.exporter}{path}", headers={
            "Accept": accept, "X-Prometheus-Scrape-Timeout-Seconds": "1"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            content_type = resp.headers["Content-Type"]
            assert resp.status == 200
        assert _media_type(content_type) in PROM3_CONTENT_TYPES, (accept, content_type)


def test_stale_and_failed_backups_reach_alertmanager(stack: Stack) -> None:
    stale = dh.wait_until(lambda: am_alert(stack, "DocSpaceBackupStale", "stale", "active"),
                          what="DocSpaceBackupStale{portal=stale} in Alertmanager")
    assert stale["labels"]["severity"] == "critical"
    assert stale["annotations"]["runbook_url"].endswith("#docspacebackupstale")
    assert "stale" in stale["annotations"]["description"]
    failed = dh.wait_until(
        lambda: am_alert(stack, "DocSpaceBackupFailed", "backup-failed", "active"),
        what="DocSpaceBackupFailed{portal=backup-failed} in Alertmanager")
    assert failed["labels"]["severity"] == "warning"
    # ...and were delivered: critical to the oncall receiver, warning to default.
    dh.wait_until(lambda: any(
        labels["alertname"] == "DocSpaceBackupStale" and labels["portal"] == "stale"
        for _, labels in stack.webhook.alerts("oncall")),
        what="webhook notification of DocSpaceBackupStale to oncall")
    dh.wait_until(lambda: any(
        labels["alertname"] == "DocSpaceBackupFailed" and labels["portal"] == "backup-failed"
        for _, labels in stack.webhook.alerts("default")),
        what="webhook notification of DocSpaceBackupFailed to default")
    # A failed backup with a fresh schedule time is not stale.
    assert am_alert(stack, "DocSpaceBackupStale", "backup-failed") is None


def test_healthy_portal_raises_no_backup_alert(stack: Stack) -> None:
    # Once the stale portal's alert fired (same rules, same `for:`), a healthy portal's alert
    # would have fired too; ALERTS covers pending ones over the whole run.
    dh.wait_until(lambda: am_alert(stack, "DocSpaceBackupStale", "stale", "active"),
                  what="DocSpaceBackupStale{portal=stale}")
    dh.wait_until(lambda: dh.prom_query(stack.prometheus, 'docspace_up{portal="healthy"} == 1'),
                  what="healthy portal scraped")
    # (DocSpacePortalDown is left out: with the test's 1 s scrape timeout a loaded machine can
    # make a healthy portal miss the exporter's 0.5 s deadline.)
    backup = "DocSpace(Backup|Restore).*"
    for portal in ("healthy", "healthy-login"):
        seen = dh.prom_query(
            stack.prometheus,
            f'count_over_time(ALERTS{{portal="{portal}",alertname=~"{backup}"}}[10m])')
        assert seen == [], f"alerts for {portal}: {[s['metric'] for s in seen]}"
        assert not [labels for _, labels in stack.webhook.alerts()
                    if labels.get("portal") == portal and re.fullmatch(backup,
                                                                         labels["alertname"])]
    # The rules did evaluate the healthy portal's data (not vacuously quiet).
    assert dh.prom_query(stack.prometheus,
                         'docspace_backup_schedule_last_backup_timestamp_seconds'
                         '{portal="healthy"}')


def test_restore_in_progress_inhibits_portal_down(stack: Stack) -> None:
    down = dh.wait_until(lambda: am_alert(stack, "DocSpacePortalDown", "down", "active"),
                         what="DocSpacePortalDown{portal=down} active")
    assert down["status"]["inhibitedBy"] == []
    source = dh.wait_until(
        lambda: am_alert(stack, "DocSpaceRestoreInProgress", "restore-running", "active"),
        what="DocSpaceRestoreInProgress{portal=restore-running}")
    assert source["labels"]["severity"] == "info"
    inhibited = dh.wait_until(
        lambda: am_alert(stack, "DocSpacePortalDown", "restore-running", "suppressed"),
        what="DocSpacePortalDown{portal=restore-running} suppressed")
    assert inhibited["status"]["inhibitedBy"], inhibited["status"]
    # Prometheus does fire it: the suppression is Alertmanager's inhibition, not the rules.
    assert dh.prom_query(stack.prometheus,
                         'ALERTS{alertname="DocSpacePortalDown",portal="restore-running",'
                         'alertstate="firing"}')
    # Delivered for `down`, never for `restore-running`; info alerts go nowhere visible.
    dh.wait_until(lambda: any(
        labels["alertname"] == "DocSpacePortalDown" and labels["portal"] == "down"
        for _, labels in stack.webhook.alerts("default")),
        what="webhook notification of DocSpacePortalDown{portal=down}")
    assert not any(labels["portal"] == "restore-running"
                   and labels["alertname"] == "DocSpacePortalDown"
                   for _, labels in stack.webhook.alerts())
    assert not any(labels["alertname"] == "DocSpaceRestoreInProgress"
                   for _, labels in stack.webhook.alerts())


def test_authentication_failure_alert_replaces_portal_down(stack: Stack) -> None:
    auth = dh.wait_until(
        lambda: am_alert(stack, "DocSpaceAuthenticationFailing", "auth-failure", "active"),
        what="DocSpaceAuthenticationFailing{portal=auth-failure}")
    assert auth["labels"]["reason"] == "unauthorized"
    dh.wait_until(lambda: am_alert(stack, "DocSpacePortalDown", "auth-failure", "suppressed"),
                  what="DocSpacePortalDown{portal=auth-failure} inhibited")


def test_other_demo_states_alert(stack: Stack) -> None:
    for alertname, portal in (("DocSpaceBackupNotScheduled", "no-schedule"),
                              ("DocSpaceRestoreFailed", "restore-failed"),
                              ("DocSpaceBackupNoRecentSuccess", "stale")):
        dh.wait_until(functools.partial(am_alert, stack, alertname, portal, "active"),
                      what=f"{alertname}{{portal={portal}}}")
    # never-ran has a daily schedule: not alerting before it was watched for a day.
    assert not dh.prom_query(stack.prometheus,
                             'ALERTS{alertname="DocSpaceBackupNeverRan",portal="never-ran"}')
    assert dh.prom_query(stack.prometheus,
                         'docspace:backup_schedule_never_ran{portal="never-ran"}')


def test_overdue_and_tariff_blocked_portals_reach_alertmanager(stack: Stack) -> None:
    """The demo's `overdue` portal (Asia/Kolkata, daily; the simulator put today's slot 2-3 h
    before the demo started and no run after it) raises DocSpaceBackupOverdue; the
    `tariff-delay` portal (tariff Delay) raises DocSpaceTariffBlocksBackups; both are critical
    and reach the oncall receiver. The healthy portals ran on time and stay quiet. (`for:` is
    shortened in the copy of the rules; the 45 min-2 h window is pinned by promtool tests.)"""
    overdue = dh.wait_until(
        lambda: am_alert(stack, "DocSpaceBackupOverdue", "overdue", "active"),
        what="DocSpaceBackupOverdue{portal=overdue} in Alertmanager")
    assert overdue["labels"]["severity"] == "critical"
    assert overdue["annotations"]["runbook_url"].endswith("#docspacebackupoverdue")
    assert overdue["annotations"]["dashboard_url"].endswith("var-portal=overdue")
    blocked = dh.wait_until(
        lambda: am_alert(stack, "DocSpaceTariffBlocksBackups", "tariff-delay", "active"),
        what="DocSpaceTariffBlocksBackups{portal=tariff-delay} in Alertmanager")
    assert blocked["annotations"]["runbook_url"].endswith("#docspacetariffblocksbackups")
    for name, portal in (("DocSpaceBackupOverdue", "overdue"),
                         ("DocSpaceTariffBlocksBackups", "tariff-delay")):
        def notified(n: str = name, p: str = portal) -> bool:
            return any(labels["alertname"] == n and labels["portal"] == p
                       for _, labels in stack.webhook.alerts("oncall"))

        dh.wait_until(notified,
            what=f"webhook notification of {name}{{portal={portal}}} to oncall")
    # The due times Prometheus holds: an hour and more in the past for `overdue`, in the
    # future for the portals whose schedule ran.
    late = dh.prom_query(stack.prometheus, 'time() - docspace_backup_schedule_next_due_'
                         'timestamp_seconds{job="docspace",portal="overdue"}')
    assert late and float(late[0]["value"][1]) > 3600
    for portal in ("healthy", "healthy-login"):
        ahead = dh.prom_query(stack.prometheus, 'docspace_backup_schedule_next_due_timestamp_'
                              f'seconds{{job="docspace",portal="{portal}"}} - time()')
        assert ahead and float(ahead[0]["value"][1]) > 0, portal
        seen = dh.prom_query(
            stack.prometheus, 'count_over_time(ALERTS{alertname=~"DocSpaceBackupOverdue|'
            f'DocSpaceTariff.*",portal="{portal}"}}[10m])')
        assert seen == [], portal
    # Zones come from the portals' settings.
    zones = {s["metric"]["portal"]: s["metric"].get("timezone") for s in dh.prom_query(
        stack.prometheus, 'docspace_portal_settings_info{job="docspace"}')}
    assert zones["overdue"] == "Asia/Kolkata" and zones["healthy"] == "Europe/Berlin"


def test_probe_job_relabelling_scrapes_each_portal(stack: Stack) -> None:
    targets = yaml.safe_load(dh.PROMETHEUS_CONFIG.read_text())
    probe_job = {j["job_name"]: j for j in targets["scrape_configs"]}["docspace-probe"]
    portals = set(probe_job["static_configs"][0]["targets"])

    def all_up() -> list[dict[str, Any]] | None:
        up = dh.prom_query(stack.prometheus, 'up{job="docspace-probe"} == 1')
        return up if {s["metric"]["instance"] for s in up} == portals else None

    dh.wait_until(all_up, what="every /probe target up")
    down = dh.prom_query(stack.prometheus, 'docspace_up{job="docspace-probe",instance="down"}')
    assert [(s["metric"]["portal"], s["value"][1]) for s in down] == [("down", "0")]
    only = dh.prom_query(stack.prometheus,
                         'count by (portal) (docspace_portal_info{job="docspace-probe",'
                         'instance="stale"})')
    assert [s["metric"]["portal"] for s in only] == ["stale"]


def _hashmod(value: str, modulus: int) -> int:
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus  # noqa: S324


def test_sharded_config_spreads_probes_over_two_exporters(prom: dh.PromRelease,
                                                         tmp_path: Path) -> None:
    """prometheus-sharded.yml against two real exporters: each portal goes to the replica its
    hashmod picks, and both replicas get work."""
    doc = yaml.safe_load(dh.PROMETHEUS_SHARDED_CONFIG.read_text())
    portals = ["healthy", "healthy-login", "stale", "never-ran", "no-schedule",
               "backup-running", "backup-failed", "restore-failed"]
    with dh.children() as started:
        replicas = [dh.start_exporter(started, tmp_path), dh.start_exporter(started, tmp_path)]
        names = {f"docspace-backup-exporter-{i}:10057": addr for i, addr in enumerate(replicas)}
        doc["global"].update(scrape_interval="1s", evaluation_interval="1s")
        del doc["rule_files"], doc["alerting"]
        for job in doc["scrape_configs"]:
            job["scrape_interval"] = "1s"
            job["scrape_timeout"] = "1s"
            for sc in job["static_configs"]:
                sc["targets"] = [names.get(t, t) for t in sc["targets"]]
            if job["job_name"] == "docspace-probe":
                job["static_configs"][0]["targets"] = portals
                for rc in job["relabel_configs"]:
                    if rc.get("replacement") in names:
                        rc["replacement"] = names[rc["replacement"]]
        config = tmp_path / "prometheus-sharded.yml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        prometheus = dh.start_prometheus(started, tmp_path, config, release=prom)

        def probe_targets() -> list[dict[str, Any]] | None:
            active = dh.http_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
            probes = [t for t in active if t["labels"]["job"] == "docspace-probe"]
            ok = len(probes) == len(portals) and all(t["health"] == "up" for t in probes)
            return probes if ok else None

        probes = dh.wait_until(probe_targets, what="all sharded /probe targets up")
        used = set()
        for target in probes:
            url = urllib.parse.urlsplit(target["scrapeUrl"])
            portal = urllib.parse.parse_qs(url.query)["target"][0]
            assert target["labels"]["instance"] == portal
            assert url.netloc == replicas[_hashmod(portal, 2)], portal
            used.add(url.netloc)
        assert used == set(replicas)
        def self_metrics() -> set[str] | None:
            found = {s["metric"]["instance"]
                     for s in dh.prom_query(prometheus, "docspace_exporter_build_info")}
            return found if found == set(replicas) else None

        dh.wait_until(self_metrics, what="both replicas' own metrics")
        # metric_relabel_configs kept only the exporter's own series from /metrics
        assert not dh.prom_query(prometheus, 'docspace_up{job="docspace-exporter"}')
