"""Alert rules (promtool check + unit tests, labels, runbooks) and the Alertmanager and
Prometheus configs shipped in deploy/."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import deploy_helpers as dh


def _rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(dh.RULES_FILE.read_text())["groups"])


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _rule_groups() for r in g["rules"] if "alert" in r]


ALERTS = _alert_rules()
ALERT_NAMES = [r["alert"] for r in ALERTS]


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _readme_section(heading: str) -> str:
    """A `## ` section of the README, from its heading to the next `## ` heading."""
    text = dh.README.read_text()
    m = re.search(rf"^{re.escape(heading)}\s*$", text, re.M)
    assert m, f"README has no {heading!r}"
    nxt = re.search(r"^## ", text[m.end():], re.M)
    return text[m.start():m.end() + nxt.start() if nxt else len(text)]


# --- promtool -------------------------------------------------------------------------


def test_promtool_check_rules(prom: dh.PromRelease) -> None:
    promtool = prom.promtool
    result = dh.run([promtool, "check", "rules", str(dh.RULES_FILE)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    n_rules = sum(len(g["rules"]) for g in _rule_groups())
    assert f"SUCCESS: {n_rules} rules found" in output, output


def test_promtool_unit_tests_pass(prom: dh.PromRelease) -> None:
    promtool = prom.promtool
    files = sorted(dh.RULE_TESTS_DIR.glob("*.yml"))
    assert len(files) >= 3, files
    result = dh.run([promtool, "test", "rules", *map(str, files)], cwd=dh.RULE_TESTS_DIR)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "FAILED" not in output
    assert output.count("SUCCESS") == len(files), output


def test_promtool_unit_tests_can_fail(prom: dh.PromRelease, tmp_path: Path) -> None:
    """The unit tests pin the thresholds: a rule file with a different staleness factor fails."""
    promtool = prom.promtool
    text = dh.RULES_FILE.read_text()
    assert text.count("> 1.5 * last_over_time") == 1
    (tmp_path / "docspace-backup.rules.yml").write_text(
        text.replace("> 1.5 * last_over_time", "> 1.4 * last_over_time"))
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "schedule.yml").write_text((dh.RULE_TESTS_DIR / "schedule.yml").read_text())
    result = dh.run([promtool, "test", "rules", "schedule.yml"], cwd=tests)
    assert result.returncode != 0
    assert "DocSpaceBackupStale" in result.stdout + result.stderr


def test_schedule_rule_tests_are_generated_from_the_schedule_module() -> None:
    """overdue.yml and time_to_detect.yml hold due times computed by exporter.schedule for
    real dates; regenerating them must give the committed files (and the README's table)."""
    import subprocess
    import sys

    script = dh.RULE_TESTS_DIR / "generate.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    readme = dh.README.read_text()

    def shown(text: str) -> str:  # "3d 12h 36m 0s" -> "3 d 12 h 36 min", as in the README
        text = re.sub(r"(\d+)d ", r"\1 d ", text.strip())
        return re.sub(r"(\d+)h (\d+)m 0s", r"\1 h \2 min", text)

    lines = [ln for ln in result.stdout.splitlines() if ": before " in ln]
    assert len(lines) == 4, result.stdout
    for line in lines:
        before, after = line.split(": before ", 1)[1].split(", after ")
        assert shown(before) in readme and shown(after) in readme, line


def test_overdue_fires_between_45_minutes_and_2_hours() -> None:
    rule = ALERTS[ALERT_NAMES.index("DocSpaceBackupOverdue")]
    expr = rule["expr"]
    threshold = int(re.search(r">\s*(\d+)\s*\)", expr).group(1))  # type: ignore[union-attr]
    assert threshold + _duration(rule["for"]) >= 45 * 60
    # + one evaluation interval and one scrape interval (1m each in deploy/prometheus).
    assert threshold + _duration(rule["for"]) + 120 <= 2 * 3600


def test_new_alerts_link_the_dashboard() -> None:
    for name in ("DocSpaceBackupOverdue", "DocSpaceTariffBlocksBackups",
                 "DocSpaceTariffDueSoon", "DocSpaceBackupLeftNoCopy"):
        ann = ALERTS[ALERT_NAMES.index(name)]["annotations"]
        assert ann["dashboard_url"] == (
            "https://grafana.example.com/d/docspace-backups/docspace-backups"
            "?var-job={{ $labels.job }}&var-portal={{ $labels.portal }}")


# --- names, labels, annotations -------------------------------------------------------


def test_contract_alert_names_exist() -> None:
    missing = [name for name in dh.CONTRACT_ALERTS if name not in ALERT_NAMES]
    assert not missing, f"contract alerts missing from the rules file: {missing}"


def test_additional_alerts_exist() -> None:
    for name in ("DocSpaceBackupStuck", "DocSpaceBackupNeverRan", "DocSpaceBackupNoRecentSuccess",
                 "DocSpaceExporterDown", "DocSpaceExporterMissing",
                 "DocSpaceAuthenticationFailing", "DocSpaceRestoreInProgress",
                 "DocSpaceTariffDueSoon", "DocSpaceBackupLeftNoCopy"):
        assert name in ALERT_NAMES


def test_alert_names_are_unique() -> None:
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES))


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    ann = rule["annotations"]
    assert set(ann) >= {"summary", "description", "runbook_url"}
    assert ann["summary"].strip() and ann["description"].strip()
    assert ann["runbook_url"] == dh.RUNBOOK_BASE + name.lower()
    assert "$value" in ann["description"], "description should give the value"
    portal_level = re.search(r"\bdocspace_(?!exporter_)\w+", rule["expr"]) is not None
    if portal_level:
        assert "{{ $labels.portal }}" in ann["description"]
        assert "{{ $labels.portal }}" in ann["summary"]
    elif name != "DocSpaceExporterMissing":  # absent() output has no target labels
        assert "{{ $labels.instance }}" in ann["description"]
    if "for" in rule:
        _duration(rule["for"])


def test_restore_in_progress_is_info_and_immediate() -> None:
    rule = ALERTS[ALERT_NAMES.index("DocSpaceRestoreInProgress")]
    assert rule["labels"]["severity"] == "info"
    assert _duration(rule.get("for", "0s")) == 0


def test_staleness_follows_each_portal_interval() -> None:
    """No fixed age threshold: compared with 1.5 x the portal's own expected interval."""
    expr = ALERTS[ALERT_NAMES.index("DocSpaceBackupStale")]["expr"]
    assert "1.5 * last_over_time(docspace_backup_schedule_expected_interval_seconds" in expr
    assert "docspace_backup_schedule_last_backup_timestamp_seconds" in expr
    never = ALERTS[ALERT_NAMES.index("DocSpaceBackupNeverRan")]["expr"]
    assert "docspace_backup_schedule_expected_interval_seconds" in never
    history = ALERTS[ALERT_NAMES.index("DocSpaceBackupNoRecentSuccess")]["expr"]
    assert "2 * last_over_time(docspace_backup_schedule_expected_interval_seconds" in history


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in dh.RULE_TESTS_DIR.glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../docspace-backup.rules.yml"], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert not set(ALERT_NAMES) - fires, f"no firing case: {set(ALERT_NAMES) - fires}"
    assert not set(ALERT_NAMES) - quiet, f"no must-not-fire case: {set(ALERT_NAMES) - quiet}"


# --- runbooks in README ---------------------------------------------------------------


def test_every_runbook_anchor_has_a_readme_heading() -> None:
    section = _readme_section("## Alerts")
    headings = re.findall(r"^### (\S+)\s*$", section, re.M)
    assert sorted(headings) == sorted(ALERT_NAMES)
    # GitHub's anchor of "### DocSpaceBackupStale" is "#docspacebackupstale".
    anchors = {h.lower() for h in headings}
    for rule in ALERTS:
        assert rule["annotations"]["runbook_url"].rsplit("#", 1)[1] in anchors
    bodies = re.split(r"^### \S+\s*$", section, flags=re.M)[1:]
    for heading, body in zip(headings, bodies, strict=True):
        assert len(body.strip()) > 200, f"runbook of {heading} is too thin"


# --- Alertmanager ---------------------------------------------------------------------


def test_amtool_check_config(prom: dh.PromRelease) -> None:
    amtool = prom.amtool
    result = dh.run([amtool, "check-config", str(dh.ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=DocSpaceBackupStale", "portal=p"], "oncall"),
    (["severity=warning", "alertname=DocSpaceBackupFailed", "portal=p"], "default"),
    (["severity=info", "alertname=DocSpaceRestoreInProgress", "portal=p"], "blackhole"),
    (["alertname=SomethingElse"], "default"),
])
def test_alertmanager_routes_by_severity(prom: dh.PromRelease, labels: list[str],
                                        receiver: str) -> None:
    amtool = prom.amtool
    result = dh.run([amtool, "config", "routes", "test",
                     f"--config.file={dh.ALERTMANAGER_CONFIG}", *labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def _matcher(text: str) -> tuple[str, str, str]:
    m = re.fullmatch(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*', text)
    assert m, text
    return m.group(1), m.group(2), m.group(3)


def test_restore_in_progress_inhibits_portal_down_and_backup_alerts() -> None:
    config = yaml.safe_load(dh.ALERTMANAGER_CONFIG.read_text())
    (rule,) = [r for r in config["inhibit_rules"]
               if _matcher(r["source_matchers"][0]) == ("alertname", "=",
                                                        "DocSpaceRestoreInProgress")]
    assert rule["equal"] == ["portal"]
    (target,) = rule["target_matchers"]
    label, op, pattern = _matcher(target)
    assert (label, op) == ("alertname", "=~")
    inhibited = {n for n in ALERT_NAMES if re.fullmatch(pattern, n)}  # anchored, as in AM
    assert "DocSpacePortalDown" in inhibited
    assert {n for n in ALERT_NAMES if n.startswith("DocSpaceBackup")} <= inhibited
    assert not inhibited & {"DocSpaceRestoreFailed", "DocSpaceRestoreInProgress",
                            "DocSpaceExporterDown", "DocSpaceExporterConfigReloadFailed"}
    # every receiver referenced by a route exists
    names = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {r["receiver"] for r in routes} <= names
    assert "portal" in config["route"]["group_by"]


def test_example_receivers_are_loopback() -> None:
    config = yaml.safe_load(dh.ALERTMANAGER_CONFIG.read_text())
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and all(u.startswith("http://127.0.0.1:") for u in urls)


# --- Prometheus -----------------------------------------------------------------------


@pytest.mark.parametrize("config", [dh.PROMETHEUS_CONFIG, dh.PROMETHEUS_SHARDED_CONFIG],
                         ids=lambda p: p.name)
def test_promtool_check_config(prom: dh.PromRelease, config: Path) -> None:
    promtool = prom.promtool
    result = dh.run([promtool, "check", "config", str(config)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "is valid prometheus config file syntax" in output
    assert "SUCCESS: 1 rule files found" in output


def _jobs(path: Path) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(path.read_text())
    return {j["job_name"]: j for j in config["scrape_configs"]}


def test_prometheus_config_jobs() -> None:
    config = yaml.safe_load(dh.PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["rules/docspace-backup.rules.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    jobs = _jobs(dh.PROMETHEUS_CONFIG)
    assert jobs["docspace"].get("metrics_path", "/metrics") == "/metrics"
    probe = jobs["docspace-probe"]
    assert probe["metrics_path"] == "/probe"
    relabel = probe["relabel_configs"]
    assert {"source_labels": ["__address__"], "target_label": "__param_target"} in relabel
    assert {"source_labels": ["__param_target"], "target_label": "instance"} in relabel
    (address,) = [r for r in relabel if r["target_label"] == "__address__"]
    assert address["replacement"] == jobs["docspace"]["static_configs"][0]["targets"][0]
    # The alert rules' exporter-down regex covers both jobs.
    for job in jobs:
        assert re.fullmatch(".*docspace.*", job)


@pytest.mark.parametrize("config", [dh.PROMETHEUS_CONFIG, dh.PROMETHEUS_SHARDED_CONFIG],
                         ids=lambda p: p.name)
def test_scrape_timeout_fits_the_exporter_deadline(config: Path) -> None:
    """The exporter answers within scrape_timeout - 0.5 s; that must exceed the per-portal
    default timeout (10 s) and scrape_timeout must not exceed the interval."""
    glob = yaml.safe_load(config.read_text())["global"]
    for job in _jobs(config).values():
        interval = _duration(job.get("scrape_interval", glob["scrape_interval"]))
        timeout = _duration(job.get("scrape_timeout", glob.get("scrape_timeout", "10s")))
        assert timeout <= interval
        assert timeout - 0.5 > 10


def _hashmod(value: str, modulus: int) -> int:
    """Prometheus's hashmod: md5, low 8 bytes big-endian, modulo."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus  # noqa: S324


def test_sharded_config_spreads_portals_over_both_exporters() -> None:
    probe = _jobs(dh.PROMETHEUS_SHARDED_CONFIG)["docspace-probe"]
    relabel = probe["relabel_configs"]
    (hashmod,) = [r for r in relabel if r.get("action") == "hashmod"]
    assert hashmod["source_labels"] == ["__param_target"]
    modulus = hashmod["modulus"]
    shard_rules = {r["regex"]: r["replacement"] for r in relabel
                   if r.get("source_labels") == [hashmod["target_label"]]
                   and r.get("target_label") == "__address__"}
    assert sorted(shard_rules) == [str(i) for i in range(modulus)]
    assert len(set(shard_rules.values())) == modulus
    portals = probe["static_configs"][0]["targets"]
    used = {shard_rules[str(_hashmod(p, modulus))] for p in portals}
    assert used == set(shard_rules.values()), "the example portals all land on one exporter"


# --- the skip-or-fail rule of the deploy tests ------------------------------------------


def test_missing_binary_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "docspace-no-such-tool-xyz"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        dh.binary(missing)
    with pytest.raises(pytest.skip.Exception):  # optional tools only ever skip
        dh.binary(missing, optional=True)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        dh.binary(missing)
    assert dh.binary("sh").endswith("/sh")


def test_missing_or_wrong_prometheus3_fails_in_ci(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """The `prom` fixture's prometheus3 half: a missing 3.x fails with CI=true and skips
    elsewhere; a 2.x binary offered as 3.x is refused."""
    monkeypatch.setenv("PROMETHEUS3_BIN", str(tmp_path / "no-such-prometheus"))
    found = dh._find_release(3)
    assert isinstance(found, str) and "prometheus" in found, found
    monkeypatch.setitem(dh._RELEASES, 3, found)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        dh.prom_release(3)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Prometheus 3.x"):
        dh.prom_release(3)
    two = dh.prom_release(2)  # Debian's 2.x (skips outside CI when missing)
    for tool in ("prometheus", "promtool", "alertmanager", "amtool"):
        monkeypatch.setenv(f"{tool.upper()}3_BIN", getattr(two, tool))
    refused = dh._find_release(3)
    assert isinstance(refused, str) and "is version 2." in refused, refused
