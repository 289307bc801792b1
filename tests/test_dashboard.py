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
    # contract.md section 5, schedule due time and tariff (served once issue 10 lands)
    "docspace_backup_schedule_next_due_timestamp_seconds", "docspace_portal_tariff_state",
    "docspace_portal_tariff_due_timestamp_seconds",
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
    # follows the job variable: only the portals of the selected job(s) are offered
    assert definition == 'label_values(docspace_portal_info{job=~"$job"}, portal)'

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
    dh.wait_until(lambda: dh.prom_query(prometheus, 'docspace_portal_info{portal="healthy"}'),
                  what="the demo portals scraped")
    served = set(dh.http_json(prometheus + "/api/v1/label/__name__/values")["data"])
    checked = 0
    for title, t in targets():
        expr = substitute(t["expr"])

        def answer(expr: str = expr, instant: bool = t.get("instant", False)) -> Any:
            if instant:
                return dh.prom_query(prometheus, expr)
            now = time.time()
            return dh.prom_query(prometheus, expr, start=str(now - 60), end=str(now), step="1")

        names = set(re.findall(r"\b(docspace_[a-z_]+)\b", expr))
        if names and not names & served:
            # A contract metric this exporter does not serve yet: the query must still parse.
            answer()
            continue
        result = dh.wait_until(answer, timeout=30, what=f"data for {title!r}: {expr}")
        assert all(s.get("value") or s.get("values") for s in result)
        checked += 1
    assert checked >= 20, (checked, sorted(served))


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


# --- lint, in the spirit of grafana/dashboard-linter -----------------------------------

# Every series selector that must carry the job matcher: the exporter's metrics, ALERTS and
# the scrape metrics of the exporter's own targets.
SELECTOR = re.compile(r"\b(docspace_[a-z_]+|ALERTS|up|scrape_duration_seconds)\b(\{[^}]*\})?")
DASHBOARD_URL = ("https://grafana.example.com/d/docspace-backups/docspace-backups"
                 "?var-job={{ $labels.job }}")


def all_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel target, annotation and query variable."""
    out = [(title, t["expr"]) for title, t in targets()]
    for ann in dashboard()["annotations"]["list"]:
        if ann.get("expr"):
            out.append((f"annotation {ann['name']}", ann["expr"]))
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", q))
    return out


def lint(board: dict[str, Any]) -> list[str]:
    """The dashboard-linter rules that matter here; returns the problems found."""
    problems = []
    if "__inputs" in board or "__requires" in board:
        problems.append("dashboard has __inputs/__requires (a sharing export)")
    names = {v["name"]: v for v in board["templating"]["list"]}
    if names.get("datasource", {}).get("type") != "datasource":
        problems.append("no datasource variable")
    if names.get("job", {}).get("type") != "query":
        problems.append("no job variable")
    if board.get("editable") is not False:
        problems.append("editable must be false for a provisioned dashboard")
    for panel in all_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        if panel.get("datasource") != DS_REF:
            problems.append(f"{panel['title']}: datasource is not ${{datasource}}")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{panel['title']}: no unit")
        for t in panel.get("targets", []):
            problems += [f"{panel['title']}: {m.group(1)} without job=~\"$job\""
                         for m in SELECTOR.finditer(t["expr"])
                         if 'job=~"$job"' not in (m.group(2) or "")]
    for ann in board["annotations"]["list"]:
        if ann.get("expr"):
            problems += [f"annotation {ann['name']}: {m.group(1)} without job=~\"$job\""
                         for m in SELECTOR.finditer(ann["expr"])
                         if 'job=~"$job"' not in (m.group(2) or "")]
    return problems


def test_dashboard_lint_is_clean() -> None:
    assert lint(dashboard()) == []


def test_lint_catches_each_rule() -> None:
    board = dashboard()
    broken = json.loads(json.dumps(board))
    broken["__inputs"] = []
    broken["editable"] = True
    panel = next(p for p in all_panels(broken["panels"]) if p["type"] == "stat")
    del panel["fieldConfig"]["defaults"]["unit"]
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace('job=~"$job",', "")
    ann = next(a for a in broken["annotations"]["list"] if a.get("expr"))
    ann["expr"] = ann["expr"].replace(',job=~"$job"', "")
    problems = lint(broken)
    assert any("__inputs" in p for p in problems)
    assert any("editable" in p for p in problems)
    assert any(p.endswith("no unit") for p in problems)
    assert any("annotation" in p and "ALERTS" in p for p in problems)
    assert sum("without job" in p for p in problems) >= 2, problems


def test_job_matcher_on_every_query_including_alerts() -> None:
    for where, expr in all_queries():
        for m in SELECTOR.finditer(expr):
            if where == "variable job":
                continue  # the job variable lists the jobs
            assert 'job=~"$job"' in (m.group(2) or ""), f"{where}: {expr}"
    assert any("ALERTS" in expr for _, expr in all_queries())


def test_default_range_shows_a_monthly_schedule() -> None:
    board = dashboard()
    m = re.fullmatch(r"now-(\d+)d", board["time"]["from"])
    assert m and int(m.group(1)) >= 35, board["time"]
    assert board["editable"] is False


def test_annotations_from_alerts() -> None:
    (ann,) = [a for a in dashboard()["annotations"]["list"] if a.get("expr")]
    assert ann["datasource"] == DS_REF and ann["enable"] is True
    assert ann["expr"].startswith("ALERTS{")
    assert 'alertname=~"DocSpace.*"' in ann["expr"] and 'alertstate="firing"' in ann["expr"]
    assert "{{alertname}}" in ann["titleFormat"]


def panel_titled(title: str) -> dict[str, Any]:
    (panel,) = [p for p in query_panels() if p["title"] == title]
    return panel


def links_of(panel: dict[str, Any], column: str) -> list[dict[str, Any]]:
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"]["options"] == column:
            for prop in override["properties"]:
                if prop["id"] == "links":
                    return list(prop["value"])
    return []


def test_table_data_links() -> None:
    overview = panel_titled("Portal overview")
    (filter_link,) = links_of(overview, "Portal")
    assert filter_link["url"].startswith("/d/docspace-backups/")
    assert "var-portal=${__value.raw}" in filter_link["url"]
    assert "${job:queryparam}" in filter_link["url"]
    (open_link,) = links_of(overview, "URL")
    assert open_link["url"] == "${__value.raw}"
    # the URL column comes from docspace_portal_info's url label
    (info,) = [t for t in overview["targets"] if "docspace_portal_info" in t["expr"]]
    assert "by (portal, url)" in info["expr"]
    org = overview["transformations"][-1]["options"]
    assert org["renameByName"]["url"] == "URL"
    alerts = panel_titled("Alerts firing now")
    (runbook,) = links_of(alerts, "Alert")
    assert runbook["url"] == "${__data.fields.runbook}"
    assert links_of(alerts, "Portal")


def runbook_by_alert() -> dict[str, str]:
    """What the firing-alerts table's label_replace chain maps each alert name to."""
    expr = panel_titled("Alerts firing now")["targets"][0]["expr"]
    return dict((name, url) for url, name in re.findall(
        r'"runbook", "([^"]+)", "alertname", "(\w+)"', expr))


def test_firing_alerts_table_links_every_alert_to_its_runbook() -> None:
    rules = yaml.safe_load(dh.RULES_FILE.read_text())
    mapped = runbook_by_alert()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and rule["alert"] in mapped:
                assert mapped[rule["alert"]] == rule["annotations"]["runbook_url"]
    assert set(dh.CONTRACT_ALERTS) <= set(mapped)
    # an alert added later without a mapping still links to the README's Alerts section
    expr = panel_titled("Alerts firing now")["targets"][0]["expr"]
    assert f'"runbook", "{dh.RUNBOOK_BASE}alerts", "alertname", ".*"' in expr


def test_new_panels_for_due_time_overdue_and_tariff() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in query_panels()}
    due = exprs["Next scheduled backup"]
    assert "docspace_backup_schedule_next_due_timestamp_seconds" in due
    assert "> 3600" in exprs["Overdue (due > 1 h ago)"]
    assert "docspace_portal_tariff_state" in exprs["Tariff"]
    assert 'state=~"delay|not_paid"' in exprs["Tariff blocks backups"]
    units = {o["matcher"]["options"]: p["value"]
             for o in panel_titled("Next scheduled backup")["fieldConfig"]["overrides"]
             for p in o["properties"] if p["id"] == "unit"}
    assert units["Next due"] == "dateTimeAsIso" and "* 1000" in due


def test_every_alert_links_to_the_dashboard() -> None:
    rules = yaml.safe_load(dh.RULES_FILE.read_text())
    count = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            url = rule["annotations"]["dashboard_url"]
            if rule["alert"].startswith("DocSpaceExporter"):
                assert url == DASHBOARD_URL, rule["alert"]
            else:
                assert url == DASHBOARD_URL + "&var-portal={{ $labels.portal }}", rule["alert"]
            count += 1
    assert count >= len(dh.CONTRACT_ALERTS)
    # the link opens this dashboard, whose variables are job and portal
    assert "/d/" + dashboard()["uid"] + "/" in DASHBOARD_URL
    assert {"job", "portal"} <= {v["name"] for v in dashboard()["templating"]["list"]}


# --- schema round trip through grafana-foundation-sdk ------------------------------------


def sdk_round_trip(board: dict[str, Any]) -> dict[str, Any]:
    try:
        from grafana_foundation_sdk.cog import plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        dh.unavailable("grafana-foundation-sdk is not installed (pip install -e '.[test]')")
    plugins.register_default_plugins()

    def encode(obj: Any) -> Any:
        return obj.to_json()

    return dict(json.loads(json.dumps(Dashboard.from_json(board).to_json(), default=encode)))


# Options of Prometheus annotation queries that the SDK's generic AnnotationQuery does not
# model (Grafana's Prometheus data source reads them); everything else must survive.
PROMETHEUS_ANNOTATION_KEYS = {"step", "titleFormat", "textFormat", "tagKeys", "useValueForTime"}


def lost(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of `given` missing from, or changed in, `kept` (defaults the SDK adds are fine)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for k, v in given.items():
            if k not in kept:
                if not (path.startswith(".annotations") and k in PROMETHEUS_ANNOTATION_KEYS):
                    out.append(f"{path}.{k}")
            else:
                out += lost(v, kept[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=True))
                for p in lost(a, b, f"{path}[{i}]")]
    return [] if given == kept else [path]


def test_sdk_round_trip_keeps_every_field() -> None:
    board = dashboard()
    assert lost(board, sdk_round_trip(board)) == []


@pytest.mark.parametrize("path", [
    ("templating", "list", 1, "multi"),
    ("panels", 1, "gridPos"),
    ("panels", 8, "fieldConfig", "defaults", "unit"),
    ("annotations", "list", 1, "iconColor"),
])
def test_sdk_round_trip_drops_a_misspelled_field(path: tuple[Any, ...]) -> None:
    board = dashboard()
    node: Any = board
    for step in path[:-1]:
        node = node[step]
    node[path[-1] + "x"] = node.pop(path[-1])
    assert lost(board, sdk_round_trip(board)), path


@pytest.mark.e2e
def test_alert_table_and_annotations_against_firing_alerts(prometheus: str) -> None:
    """The table's runbook column equals each firing alert's runbook_url annotation, and
    the annotation query returns the firing DocSpace alerts."""
    def firing() -> list[dict[str, Any]]:
        body = dh.http_json(prometheus + "/api/v1/alerts")
        return [a for a in body["data"]["alerts"] if a["state"] == "firing"
                and a["labels"]["alertname"].startswith("DocSpace")]

    alerts = dh.wait_until(firing, what="firing DocSpace alerts")
    table = panel_titled("Alerts firing now")
    rows = dh.prom_query(prometheus, substitute(table["targets"][0]["expr"]))
    by_key = {(r["metric"]["alertname"], r["metric"].get("portal", "")): r["metric"]["runbook"]
              for r in rows}
    mapped = runbook_by_alert()
    for alert in alerts:
        key = (alert["labels"]["alertname"], alert["labels"].get("portal", ""))
        if key[0] in mapped and key in by_key:
            assert by_key[key] == alert["annotations"]["runbook_url"], key
    assert {k[0] for k in by_key} & set(mapped)
    (ann,) = [a for a in dashboard()["annotations"]["list"] if a.get("expr")]
    names = {s["metric"]["alertname"] for s in dh.prom_query(prometheus, substitute(ann["expr"]))}
    assert names and all(n.startswith("DocSpace") for n in names)
