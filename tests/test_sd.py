"""GET /sd (Prometheus HTTP service discovery) and the shipped http_sd configs.

In-process: the document, the Host header as target address, auth, reloads, no secrets.
With a real Prometheus (sped-up copies of deploy/prometheus/prometheus-http-sd.yml and
prometheus-sharded-http-sd.yml): the portals appear as /probe targets, a reload that adds
a portal adds a target, and two exporters split the portals by hashmod from /sd alone.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from docspace_simulator import Simulator, render_config
from exporter.config import Config, load_config
from exporter.webconfig import WebConfig
from tests import deploy_helpers as dh
from tests.harness import Running, portal_config
from tests.test_sharding import hashmod

HTTP_SD = dh.DEPLOY / "prometheus" / "prometheus-http-sd.yml"
SHARDED_HTTP_SD = dh.DEPLOY / "prometheus" / "prometheus-sharded-http-sd.yml"
WAIT = 90.0


def sd(run: Running, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, hdrs, body = run.get("/sd", headers)
    if status == 200:
        assert hdrs["Content-Type"] == "application/json"
        return status, json.loads(body)
    return status, body


def test_sd_lists_every_portal_as_a_probe_target(
        sim: Simulator, exporter: Callable[..., Running]) -> None:
    sims = [sim.add_portal(n, "healthy") for n in ("main", "branch-office", "odd")]
    # a config name may be any text: the document is JSON, so it needs no escaping
    portals = [portal_config(sim, sims[0]), portal_config(sim, sims[1]),
               dataclasses.replace(portal_config(sim, sims[2]), name='a&b "c"')]
    run = exporter(Config(portals=tuple(portals)))
    port = run.server.server_address[1]
    status, groups = sd(run)
    assert status == 200
    assert groups == [{"targets": [f"127.0.0.1:{port}"],
                       "labels": {"__metrics_path__": "/probe", "__param_target": p.name,
                                  "portal": p.name, "instance": p.name}} for p in portals]
    # the target is the exporter's address as the client named it
    _, groups = sd(run, {"Host": "exporter.example:9999"})
    assert {g["targets"][0] for g in groups} == {"exporter.example:9999"}
    _, groups = sd(run, {"Host": "exporter.example"})
    assert {g["targets"][0] for g in groups} == {f"exporter.example:{port}"}
    _, groups = sd(run, {"Host": "[::1]:10057"})
    assert {g["targets"][0] for g in groups} == {"[::1]:10057"}
    for bad in ("", "a b", "x/y", "u@h:1", "h:99999", "h:"):
        status, body = sd(run, {"Host": bad})
        assert status == 400 and "Host" in body, bad
    assert sim.request_count() == 0  # the document makes no API call
    # every /probe target named by /sd is served
    status, _, body = run.get("/probe?target=" + urllib.parse.quote('a&b "c"'))
    assert status == 200 and 'portal="a&b \\"c\\""' in body, body


def test_sd_needs_the_same_auth_and_leaks_nothing(
        sim: Simulator, exporter: Callable[..., Running]) -> None:
    p = sim.add_portal("main", "healthy")
    users = {"prom": bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=4))}
    run = exporter(Config(portals=(portal_config(sim, p),)), web=WebConfig(users=users))
    status, _ = sd(run)
    assert status == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret-pw").decode()}
    status, groups = sd(run, auth)
    assert status == 200 and groups[0]["labels"]["portal"] == "main"
    text = json.dumps(groups)
    assert p.api_key not in text and sim.portal_url("main") not in text
    assert run.get("/sd", auth, method="POST")[0] == 405


def test_sd_follows_reloads(sim: Simulator, exporter: Callable[..., Running]) -> None:
    a, b = sim.add_portal("a", "healthy"), sim.add_portal("b", "healthy")
    configs = [Config(portals=(portal_config(sim, a),)),
               Config(portals=(portal_config(sim, a), portal_config(sim, b)))]
    run = exporter(configs[0], loader=lambda: configs[1])
    assert [g["labels"]["portal"] for g in sd(run)[1]] == ["a"]
    assert run.app.reload() == []
    assert [g["labels"]["portal"] for g in sd(run)[1]] == ["a", "b"]


# --- real Prometheus ------------------------------------------------------------------------


def start_exporter(started: list[dh.Child], work: Path, config: Path, name: str) -> str:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = str(dh.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    port = dh.free_port()
    child = dh.Child(name, [sys.executable, "-m", "exporter", "--config.file", str(config),
                            "--web.listen-address", f"127.0.0.1:{port}"],
                     work / f"{name}.log", cwd=work, env=env)
    started.append(child)
    child.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=WAIT)
    return f"127.0.0.1:{port}"


def fast(doc: dict[str, Any], sd_hosts: dict[str, str]) -> dict[str, Any]:
    """The shipped config at 1 s, its /sd URLs and replica addresses pointed at 127.0.0.1,
    only the discovered /probe job (the exporters' own /metrics job is not under test)."""
    doc = copy.deepcopy(doc)
    doc["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                     "evaluation_interval": "1s"}
    doc.pop("rule_files", None)
    doc.pop("alerting", None)
    (job,) = [j for j in doc["scrape_configs"] if "http_sd_configs" in j]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    replaced = 0
    for c in job["http_sd_configs"]:
        url = urllib.parse.urlsplit(c["url"])
        assert url.path == "/sd"
        c["url"] = url._replace(netloc=sd_hosts[url.netloc]).geturl()
        c["refresh_interval"] = "1s"
        replaced += 1
    for rule in job.get("relabel_configs", []):
        if rule.get("target_label") == "__address__":
            rule["replacement"] = sd_hosts[rule["replacement"]]
    assert replaced == len(sd_hosts)
    job.setdefault("relabel_configs", []).append(
        {"source_labels": ["__address__"], "target_label": "exporter"})
    doc["scrape_configs"] = [job]
    return doc


def probe_targets(prometheus: str, count: int) -> list[dict[str, Any]] | None:
    active = dh.http_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
    probes = [t for t in active if t["labels"]["job"] == "docspace-probe"]
    if len(probes) == count and all(t["health"] == "up" for t in probes):
        return probes
    return None


def target_portal(target: dict[str, Any]) -> str:
    (portal,) = urllib.parse.parse_qs(urllib.parse.urlsplit(target["scrapeUrl"]).query)["target"]
    return portal


@pytest.mark.e2e
def test_prometheus_discovers_the_portals_and_follows_a_reload(tmp_path: Path) -> None:
    dh.binary("prometheus")
    sim = Simulator("127.0.0.1", 0)
    first = [sim.add_portal(n, "healthy") for n in ("p-one", "p-two", "p-three")]
    sim.start()
    try:
        config = tmp_path / "exporter.yaml"
        config.write_text(render_config(sim, first, history=False))
        assert len(load_config(str(config)).portals) == 3
        with dh.children() as started:
            exporter = start_exporter(started, tmp_path, config, "exporter")
            doc = fast(yaml.safe_load(HTTP_SD.read_text()),
                       {"docspace-backup-exporter:10057": exporter})
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
            prometheus = dh.start_prometheus(started, tmp_path, tmp_path / "prometheus.yml")
            probes = dh.wait_until(lambda: probe_targets(prometheus, 3), timeout=WAIT,
                                   what="three discovered /probe targets up")
            assert sorted(target_portal(t) for t in probes) == ["p-one", "p-three", "p-two"]
            for t in probes:
                assert t["labels"]["instance"] == t["labels"]["portal"] == target_portal(t)
                assert urllib.parse.urlsplit(t["scrapeUrl"]).path == "/probe"
            # the exporter's portal label is kept as is (honor_labels), not exported_portal
            ups = dh.wait_until(lambda: dh.prom_query(prometheus, "docspace_up"),
                                what="docspace_up")
            assert all("exported_portal" not in s["metric"] for s in ups), ups

            # a reload that adds a portal adds a target
            added = sim.add_portal("p-four", "healthy")
            config.write_text(render_config(sim, [*first, added], history=False))
            status, body = _post(f"http://{exporter}/-/reload")
            assert status == 200, body
            probes = dh.wait_until(lambda: probe_targets(prometheus, 4), timeout=WAIT,
                                   what="the added portal discovered and up")
            assert "p-four" in {target_portal(t) for t in probes}
            dh.wait_until(lambda: dh.prom_query(prometheus, 'docspace_up{portal="p-four"} == 1'),
                          what="the added portal's series")
    finally:
        sim.stop()


def _post(url: str) -> tuple[int, bytes]:
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"
    req = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.e2e
def test_hashmod_sharding_from_sd(tmp_path: Path) -> None:
    dh.binary("prometheus")
    sim = Simulator("127.0.0.1", 0)
    portals = [f"sd-shard-{i:02d}" for i in range(12)]
    for name in portals:
        sim.add_portal(name, "healthy")
    sim.start()
    try:
        config = tmp_path / "exporter.yaml"
        config.write_text(render_config(sim, history=False))
        with dh.children() as started:
            replicas = [start_exporter(started, tmp_path, config, f"exporter-{i}")
                        for i in range(2)]
            doc = fast(yaml.safe_load(SHARDED_HTTP_SD.read_text()),
                       {f"docspace-backup-exporter-{i}:10057": r
                        for i, r in enumerate(replicas)})
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
            prometheus = dh.start_prometheus(started, tmp_path, tmp_path / "prometheus.yml")
            probes = dh.wait_until(lambda: probe_targets(prometheus, len(portals)),
                                   timeout=WAIT, what="every portal discovered once and up")
            seen = {}
            for t in probes:
                portal = target_portal(t)
                netloc = urllib.parse.urlsplit(t["scrapeUrl"]).netloc
                assert netloc == replicas[hashmod(portal, 2)], portal
                seen[portal] = netloc
            assert sorted(seen) == portals  # both /sd lists, one target per portal
            assert set(seen.values()) == set(replicas)

            def owners() -> dict[str, str] | None:
                found = {s["metric"]["portal"]: s["metric"]["exporter"]
                         for s in dh.prom_query(prometheus, "docspace_up == 1")}
                return found if len(found) == len(portals) else None

            found = dh.wait_until(owners, timeout=WAIT, what="every portal's series")
            assert found == {p: replicas[hashmod(p, 2)] for p in portals}
    finally:
        sim.stop()
