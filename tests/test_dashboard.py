"""The Grafana dashboard: structure, provisioning files, and (e2e) every panel query answered
with data by a real Prometheus scraping `exporter --demo`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

try:
    import deploy_helpers as dh
except ImportError:  # tests/ imported as a package
    from tests import deploy_helpers as dh

DS_REF = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONING = dh.DEPLOY / "grafana" / "provisioning"

# contract.md section 5 (plus docspace_endpoint_up, served by the exporter beyond the contract).
KNOWN_METRICS = {
    "docspace_up", "docspace_scrape_duration_seconds", "docspace_scrape_errors_total",
    "docspace_portal_info", "docspace_backup_schedule_configured",
    "docspace_backup_schedule_info", "docspace_backup_schedule_expected_interval_seconds",
    "docspace_backup_schedule_backups_stored",
    "docspace_backup_schedule_last_backup_timestamp_seconds",
    "docspace_backup_schedule_last_backup_age_seconds", "docspace_backup_progress_ratio",
    "docspace_backup_completed", "docspace_backup_failed", "docspace_backup_status",
    "docspace_restore_progress_ratio", "docspace_restore_completed", "docspace_restore_failed",
    "docspace_restore_status", "docspace_backup_history_backups",
    "docspace_backup_last_success_timestamp_seconds", "docspace_exporter_build_info",
    "docspace_exporter_config_last_reload_successful",
    "docspace_exporter_config_last_reload_success_timestamp_seconds", "docspace_endpoint_up",
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(dh.DASHBOARD.read_text()))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))  # collapsed rows nest their panels


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard()["panels"]) if p["type"] != "row"]


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in query_panels() for t in p["targets"]]


def variable(name: str) -> dict[str, Any]:
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    return dict(var)


# --- structure --------------------------------------------------------------------------


def test_no_inputs_and_no_ds_placeholders() -> None:
    text = dh.DASHBOARD.read_text()
    assert "__inputs" not in dashboard()
    assert "__inputs" not in text and "${DS_" not in text and "__requires" not in text


def test_datasource_variable() -> None:
    ds = variable("datasource")
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"


def test_portal_variable() -> None:
    portal = variable("portal")
    assert portal["type"] == "query"
    definition = portal["query"]["query"] if isinstance(portal["query"], dict) else portal["query"]
    assert definition == "label_values(docspace_portal_info, portal)"
    assert portal["multi"] is True and portal["includeAll"] is True
    assert portal["datasource"] == DS_REF


def test_panel_ids_unique_and_layout_fits() -> None:
    panels = list(all_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    assert query_panels()
    for panel in query_panels():
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == DS_REF, panel["title"]
            assert t["expr"].strip()
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DS_REF, var["name"]


def test_queries_use_known_metrics_and_filter_by_portal() -> None:
    for title, t in targets():
        expr = t["expr"]
        for name in re.findall(r"\b(docspace_[a-z_]+)\b", expr):
            assert name in KNOWN_METRICS, f"{title}: unknown metric {name}"
        # every selector of a per-portal series honours the portal variable
        for selector in re.findall(r"\bdocspace_(?!exporter_)[a-z_]+(\{[^}]*\})?", expr):
            assert 'portal=~"$portal"' in selector, f"{title}: {expr}"


def test_required_panels_exist() -> None:
    panels = query_panels()
    kinds = {p["type"] for p in panels}
    assert {"table", "stat", "timeseries", "state-timeline"} <= kinds
    exprs = " ".join(t["expr"] for _, t in targets())
    for metric in ("docspace_up", "docspace_backup_schedule_configured",
                   "docspace_backup_schedule_last_backup_timestamp_seconds",
                   "docspace_backup_schedule_expected_interval_seconds",
                   "docspace_backup_status", "docspace_restore_status",
                   "docspace_backup_progress_ratio", "docspace_restore_progress_ratio",
                   "docspace_backup_failed", "docspace_restore_failed",
                   "docspace_scrape_errors_total", "docspace_scrape_duration_seconds"):
        assert metric in exprs, metric
    overview = [p for p in panels if p["type"] == "table" and p["title"] == "Portal overview"]
    assert overview and len(overview[0]["targets"]) >= 5
    assert "$__rate_interval" in exprs


def test_provisioning_files() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://")
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "docspace.yml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# --- e2e: every panel query returns data -------------------------------------------------


def substitute(expr: str) -> str:
    """What Grafana would send with All selected and a short time range."""
    for var, value in (("$__rate_interval", "30s"), ("$__interval", "5s"),
                       ("$__range", "5m"), ("$portal", ".*"), ("$job", ".*")):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("dashboard")
    with dh.children() as started:
        exporter = dh.start_exporter(started, work)
        config = dh.fast_prometheus_config(work / "prometheus.yml",
                                           dh.fast_rules(work / "rules.yml"), exporter, None)
        url = dh.start_prometheus(started, work, config)
        yield url


@pytest.mark.e2e
def test_every_panel_query_returns_data(prometheus: str) -> None:
    # a few scrapes first, so that rate() has two samples and ALERTS exists
    dh.wait_until(lambda: dh.prom_query(prometheus, 'ALERTS{alertstate="firing"}'),
                  what="first alerts evaluated")
    checked = 0
    for title, t in targets():
        expr = substitute(t["expr"])

        def answer(expr: str = expr, instant: bool = t.get("instant", False)) -> Any:
            if instant:
                return dh.prom_query(prometheus, expr)
            now = time.time()
            return dh.prom_query(prometheus, expr, start=str(now - 60), end=str(now), step="1")

        result = dh.wait_until(answer, timeout=30, what=f"data for {title!r}: {expr}")
        assert all(s.get("value") or s.get("values") for s in result)
        checked += 1
    assert checked == len(targets()) >= 20


@pytest.mark.e2e
def test_overview_shows_demo_states(prometheus: str) -> None:
    """Spot-check that the table's queries mean what the columns say."""
    (table,) = [p for p in query_panels() if p["title"] == "Portal overview"]
    by_ref = {t["refId"]: substitute(t["expr"]) for t in table["targets"]}
    up = {s["metric"]["portal"]: s["value"][1]
          for s in dh.wait_until(lambda: dh.prom_query(prometheus, by_ref["A"]), what="up")}
    assert up["healthy"] == "1" and up["down"] == "0"
    ratio = {s["metric"]["portal"]: float(s["value"][1])
             for s in dh.prom_query(prometheus, by_ref["E"])}
    assert ratio["stale"] > 1.5 > ratio["healthy"]
    state = {s["metric"]["portal"]: s["value"][1] for s in dh.prom_query(prometheus, by_ref["F"])}
    mapping: dict[str, Any] = {}
    for override in table["fieldConfig"]["overrides"]:
        if override["matcher"]["options"] == "Last backup task":
            (mapping,) = [p["value"][0]["options"] for p in override["properties"]
                          if p["id"] == "mappings"]
    assert mapping[state["backup-failed"]]["text"] == "failed"
    assert mapping[state["backup-running"]]["text"] == "running"
    assert mapping[state["healthy"]]["text"] == "completed"
