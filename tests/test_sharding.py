"""Scaling past one exporter: two exporter processes behind one real Prometheus whose
multi-target /probe job splits the portals between them with `hashmod` relabelling.

Every portal must be scraped by exactly one exporter (the one its hash picks), and every
portal must arrive. Both exporters load the same config (all portals) and a simulator
serves the portals. The Prometheus config is a sped-up copy of the shipped
deploy/prometheus/prometheus-sharded.yml when it exists, else an equivalent one built here.

Outside CI a missing Prometheus binary skips; with CI=true it fails. Only 127.0.0.1; every
wait is bounded; every child process is stopped at the end.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from docspace_simulator import Simulator, render_config
from tests import deploy_helpers as dh

pytestmark = pytest.mark.e2e

PORTALS = 24
REPLICAS = 2
# The shipped sharded config names its replicas like this (docker-compose host names).
REPLICA_HOST = "docspace-backup-exporter-{}:10057"
WAIT = 90.0
MIN_SCRAPES = 5  # per portal, before the counts are compared


def hashmod(value: str, modulus: int) -> int:
    """Prometheus's hashmod relabel action: md5, low 8 bytes big-endian, modulo."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus  # noqa: S324


def shard_rules(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The job's hashmod rule and its shard -> __address__ rules (shard number as text)."""
    relabel = job["relabel_configs"]
    (mod,) = [r for r in relabel if r.get("action") == "hashmod"]
    rules = {r["regex"]: r for r in relabel
             if r.get("source_labels") == [mod["target_label"]]
             and r.get("target_label") == "__address__"}
    return mod, rules


def built_config() -> dict[str, Any]:
    """What deploy/prometheus/prometheus-sharded.yml holds, for a tree without it."""
    rules = [{"source_labels": ["__tmp_shard"], "regex": str(i), "target_label": "__address__",
              "replacement": REPLICA_HOST.format(i)} for i in range(REPLICAS)]
    return {
        "global": {"scrape_interval": "1m"},
        "scrape_configs": [{
            "job_name": "docspace-probe",
            "metrics_path": "/probe",
            "static_configs": [{"targets": ["portal-a", "portal-b"]}],
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"source_labels": ["__param_target"], "modulus": REPLICAS,
                 "target_label": "__tmp_shard", "action": "hashmod"},
                *rules,
            ],
        }],
    }


def sharded_config(dest: Path, portals: list[str], replicas: list[str]) -> Path:
    """The sharded Prometheus config with the test's portals and replica addresses, a 1 s
    scrape interval, and an `exporter` label recording which replica scraped a portal.

    Only the /probe job is kept: a /metrics job queries every portal from every replica,
    which would blur "each portal is scraped by exactly one exporter"."""
    shipped = dh.PROMETHEUS_SHARDED_CONFIG
    doc = yaml.safe_load(shipped.read_text()) if shipped.is_file() else built_config()
    doc["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                     "evaluation_interval": "1s"}
    doc.pop("rule_files", None)
    doc.pop("alerting", None)
    jobs = [j for j in doc["scrape_configs"] if j.get("metrics_path") == "/probe"]
    assert len(jobs) == 1, "the sharded config has one multi-target /probe job"
    job = copy.deepcopy(jobs[0])
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": portals}]
    mod, rules = shard_rules(job)
    assert mod["source_labels"] == ["__param_target"], "shard by portal name"
    assert mod["modulus"] == len(replicas) == len(rules)
    for shard, rule in rules.items():
        rule["replacement"] = replicas[int(shard)]
    job["relabel_configs"].append(
        {"source_labels": ["__address__"], "target_label": "exporter"})
    doc["scrape_configs"] = [job]
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


@dataclass
class Setup:
    sim: Simulator
    portals: list[str]
    replicas: list[str]
    prometheus: str


@pytest.fixture(scope="module")
def setup(prom: dh.PromRelease, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Once per Prometheus release (`prom` skips outside CI, fails in CI when missing)."""
    work = tmp_path_factory.mktemp(f"sharding-prometheus{prom.major}")
    sim = Simulator("127.0.0.1", 0, latency=0.02)
    portals = [f"shard-{i:02d}" for i in range(PORTALS)]
    for name in portals:
        sim.add_portal(name, "healthy")
    sim.start()
    try:
        config = work / "exporter.yaml"
        config.write_text(render_config(sim, history=False))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = str(dh.REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with dh.children() as started:
            replicas = []
            for i in range(REPLICAS):
                port = dh.free_port()
                child = dh.Child(f"exporter-{i}", [
                    sys.executable, "-m", "exporter", "--config.file", str(config),
                    "--web.listen-address", f"127.0.0.1:{port}"],
                    work / f"exporter-{i}.log", cwd=work, env=env)
                started.append(child)
                child.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=WAIT)
                replicas.append(f"127.0.0.1:{port}")
            prom_config = sharded_config(work / "prometheus.yml", portals, replicas)
            prometheus = dh.start_prometheus(started, work, prom_config, release=prom)
            yield Setup(sim, portals, replicas, prometheus)
    finally:
        sim.stop()


def probe_targets(s: Setup) -> list[dict[str, Any]] | None:
    active = dh.http_json(s.prometheus + "/api/v1/targets")["data"]["activeTargets"]
    probes = [t for t in active if t["labels"]["job"] == "docspace-probe"]
    if len(probes) == len(s.portals) and all(t["health"] == "up" for t in probes):
        return probes
    return None


def test_each_portal_goes_to_the_replica_its_hash_picks(setup: Setup) -> None:
    probes = dh.wait_until(lambda: probe_targets(setup), timeout=WAIT,
                           what="every /probe target up")
    seen = {}
    for target in probes:
        url = urllib.parse.urlsplit(target["scrapeUrl"])
        (portal,) = urllib.parse.parse_qs(url.query)["target"]
        assert target["labels"]["instance"] == portal
        assert url.netloc == target["labels"]["exporter"]
        assert url.netloc == setup.replicas[hashmod(portal, REPLICAS)], portal
        seen[portal] = url.netloc
    assert sorted(seen) == setup.portals  # one target per portal, no duplicates
    assert set(seen.values()) == set(setup.replicas), "one replica got every portal"


def test_every_portal_arrives_from_exactly_one_exporter(setup: Setup) -> None:
    dh.wait_until(lambda: probe_targets(setup), timeout=WAIT, what="every /probe target up")

    def ups() -> list[dict[str, Any]] | None:
        found = dh.prom_query(setup.prometheus, "count by (portal) (docspace_up == 1)")
        return found if len(found) == len(setup.portals) else None

    dh.wait_until(ups, timeout=WAIT, what=f"docspace_up == 1 for all {PORTALS} portals")
    # Over every job and the whole run: how many exporters a portal's series came from.
    per_portal = dh.prom_query(
        setup.prometheus,
        "count by (portal) (count by (portal, exporter) "
        "(count_over_time(docspace_up[10m])))")
    assert sorted(s["metric"]["portal"] for s in per_portal) == setup.portals
    assert all(s["value"][1] == "1" for s in per_portal), per_portal
    owners = {s["metric"]["portal"]: s["metric"]["exporter"] for s in dh.prom_query(
        setup.prometheus, "docspace_up")}
    assert owners == {p: setup.replicas[hashmod(p, REPLICAS)] for p in setup.portals}


def test_no_portal_is_queried_twice(setup: Setup) -> None:
    """The simulator saw one call per endpoint per Prometheus scrape of a portal: had both
    replicas scraped a portal, it would have seen twice as many."""
    dh.wait_until(lambda: probe_targets(setup), timeout=WAIT, what="every /probe target up")
    scrapes_query = 'count_over_time(up{job="docspace-probe"}[10m])'

    def enough() -> bool:
        counts = dh.prom_query(setup.prometheus, scrapes_query)
        return len(counts) == len(setup.portals) and min(
            int(s["value"][1]) for s in counts) >= MIN_SCRAPES

    dh.wait_until(enough, timeout=WAIT, what=f"{MIN_SCRAPES} scrapes of every portal")
    # A call is counted by the simulator when it arrives, a scrape by Prometheus when it
    # ends: calls(before) <= scrapes + 1 and scrapes <= calls(after). (A scrape that a
    # starved machine lets time out may find no call of its own: a little slack below.)
    before = {p: setup.sim.request_count(p, "schedule") for p in setup.portals}
    scrapes = {s["metric"]["instance"]: int(s["value"][1])
               for s in dh.prom_query(setup.prometheus, scrapes_query)}
    after = {p: setup.sim.request_count(p, "schedule") for p in setup.portals}
    for p in setup.portals:
        assert before[p] <= scrapes[p] + 1, (p, before[p], scrapes[p])
        assert scrapes[p] <= after[p] + 2, (p, scrapes[p], after[p])
        for endpoint in ("backup_progress", "restore_progress"):
            assert abs(setup.sim.request_count(p, endpoint) - after[p]) <= 1, (p, endpoint)
        assert setup.sim.request_count(p, "history") == 0
