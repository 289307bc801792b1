"""The real server against the simulator over loopback: auth, /probe, reload, web config."""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from freezegun import freeze_time

from docspace_simulator import Simulator, render_config
from exporter.config import Config, load_config
from exporter.webconfig import load_web_config
from tests.harness import (
    ExporterProcess,
    Running,
    assert_complete,
    closed_port,
    portal_config,
    run_cli,
    start_cli,
    value,
    wait_for,
)

ExporterFactory = Callable[..., Running]


def test_api_key_is_sent_as_bearer(sim: Simulator, exporter: ExporterFactory) -> None:
    sp = sim.add_portal("main", "healthy")
    run = exporter(Config(portals=(portal_config(sim, sp, history=True),)))
    s = run.samples()
    assert value(s, "docspace_up", portal="main") == 1
    assert value(s, "docspace_backup_history_backups", portal="main") == 3
    assert set(sim.auth_headers("main")) == {"Bearer " + sp.api_key}
    # One call per endpoint per scrape, no retries (settings and tariff: the first scrape
    # of the hour).
    assert sim.request_count("main") == 6
    assert sim.request_count("main", "settings") == sim.request_count("main", "tariff") == 1


def test_token_is_sent_bare(sim: Simulator, exporter: ExporterFactory) -> None:
    sp = sim.add_portal("tok", "healthy", token="personal-access-token-1234")
    run = exporter(Config(portals=(portal_config(sim, sp, auth="token"),)))
    assert value(run.samples(), "docspace_up", portal="tok") == 1
    assert set(sim.auth_headers("tok")) == {"personal-access-token-1234"}


def test_password_login_is_cached_and_renewed_once_after_revocation(
        sim: Simulator, exporter: ExporterFactory) -> None:
    sp = sim.add_portal("pw", "healthy", username="admin@example.com", password="pw-secret-1")
    run = exporter(Config(portals=(portal_config(sim, sp, auth="password"),)))
    for _ in range(3):
        assert value(run.samples(), "docspace_up", portal="pw") == 1
    assert sim.request_count("pw", "login") == 1  # the token is reused across scrapes
    # DocSpace's login also sets asc_auth_key, which would outvote the header: none is kept.
    client = run.app.scraper._clients["pw"]
    assert len(client._session.cookies) == 0
    sim.revoke_tokens("pw")
    s = run.samples()
    assert value(s, "docspace_up", portal="pw") == 1
    assert sim.request_count("pw", "login") == 2  # one re-login after the 401
    assert value(s, "docspace_scrape_errors_total", portal="pw", endpoint="login",
                 reason="unauthorized") is None


def test_login_token_expiry_renews_before_use(exporter: ExporterFactory) -> None:
    with freeze_time("2026-03-01 12:00:00", tick=True) as frozen, \
            Simulator("127.0.0.1", 0, clock=lambda: time.time()) as sim:
        sp = sim.add_portal("pw", "healthy", username="u@example.com", password="pw-2",
                            token_lifetime=3600)
        run = exporter(Config(portals=(portal_config(sim, sp, auth="password"),)))
        assert value(run.samples(), "docspace_up", portal="pw") == 1
        frozen.tick(7200)  # the token's expires has passed for both sides
        assert value(run.samples(), "docspace_up", portal="pw") == 1
        assert sim.request_count("pw", "login") == 2
        # Renewed before use: the portal never had to answer 401.
        assert sim.request_count("pw", "schedule") == 2


def test_failed_login_counts_login_errors(sim: Simulator, exporter: ExporterFactory) -> None:
    sp = sim.add_portal("pw", "healthy", username="u@example.com", password="right")
    cfg = portal_config(sim, sp, auth="password")
    from dataclasses import replace

    from exporter.config import PasswordAuth, Secret

    cfg = replace(cfg, auth=PasswordAuth("u@example.com", Secret("wrong")))
    run = exporter(Config(portals=(cfg,)))
    s = run.samples()
    assert value(s, "docspace_up", portal="pw") == 0
    assert value(s, "docspace_scrape_errors_total", portal="pw", endpoint="login",
                 reason="unauthorized") == 1
    # Login failures are counted once, not once per endpoint that needed the token.
    assert value(s, "docspace_scrape_errors_total", portal="pw", endpoint="schedule",
                 reason="unauthorized") is None


def test_dead_portal_beside_healthy_ones(sim: Simulator, exporter: ExporterFactory) -> None:
    a = sim.add_portal("a", "healthy")
    b = sim.add_portal("b", "stale")
    from dataclasses import replace

    dead = replace(portal_config(sim, a, timeout=3.0), name="dead",
                   url=f"http://127.0.0.1:{closed_port()}")
    run = exporter(Config(portals=(portal_config(sim, a), dead, portal_config(sim, b))))
    s = run.samples()
    assert value(s, "docspace_up", portal="a") == 1
    assert value(s, "docspace_up", portal="b") == 1
    assert value(s, "docspace_up", portal="dead") == 0
    assert value(s, "docspace_scrape_errors_total", portal="dead", endpoint="schedule",
                 reason="connection") == 1
    assert value(s, "docspace_portal_info", portal="dead",
                 url=dead.url) == 1  # every configured portal is listed
    assert value(s, "docspace_backup_schedule_configured", portal="dead") is None  # not stale


@pytest.mark.parametrize(
    ("scenario", "reason", "endpoints"),
    [
        ("auth_failure", "unauthorized", ("schedule", "backup_progress")),
        ("restore_running", "forbidden", ("schedule", "backup_progress")),
        ("forbidden", "forbidden", ("schedule",)),
        ("unpaid", "payment_required", ("schedule",)),
        ("down", "http_error", ("schedule", "restore_progress")),
        ("html", "invalid_response", ("schedule",)),
        ("truncated", "invalid_response", ("schedule",)),
        ("wrong_types", "invalid_response", ("schedule", "backup_progress")),
        ("redirect", "http_error", ("schedule",)),
    ],
)
def test_failure_reasons(sim: Simulator, exporter: ExporterFactory, scenario: str,
                         reason: str, endpoints: tuple[str, ...]) -> None:
    sp = sim.add_portal("p", scenario)
    ok = sim.add_portal("ok", "healthy")
    run = exporter(Config(portals=(portal_config(sim, sp), portal_config(sim, ok))))
    s = run.samples()
    assert value(s, "docspace_up", portal="p") == 0
    assert value(s, "docspace_up", portal="ok") == 1
    for endpoint in endpoints:
        assert value(s, "docspace_scrape_errors_total", portal="p", endpoint=endpoint,
                     reason=reason) == 1, (endpoint, s)
    assert sim.leaked_requests == 0  # a redirect is never followed


def test_restore_running_still_reports_restore_progress(
        sim: Simulator, exporter: ExporterFactory) -> None:
    sp = sim.add_portal("r", "restore_running")
    run = exporter(Config(portals=(portal_config(sim, sp),)))
    s = run.samples()
    assert value(s, "docspace_restore_status", portal="r", status="running") == 1
    assert value(s, "docspace_restore_progress_ratio", portal="r") == 0.42
    assert value(s, "docspace_backup_status", portal="r", status="completed") is None


def test_dump_is_sent_when_configured(sim: Simulator, exporter: ExporterFactory) -> None:
    # A SaaS-like portal refuses Dump=true with 403: seeing 403 proves the query was sent.
    sp = sim.add_portal("saas", "healthy", dump_allowed=False)
    plain = exporter(Config(portals=(portal_config(sim, sp),)))
    assert value(plain.samples(), "docspace_up", portal="saas") == 1
    dumped = exporter(Config(portals=(portal_config(sim, sp, dump=True),)))
    s = dumped.samples()
    assert value(s, "docspace_up", portal="saas") == 0
    assert value(s, "docspace_scrape_errors_total", portal="saas", endpoint="schedule",
                 reason="forbidden") == 1


def test_scrape_deadline_from_prometheus_header(sim: Simulator, exporter: ExporterFactory
                                                ) -> None:
    slow = sim.add_portal("slow", "slow", slow_seconds=20)
    ok = sim.add_portal("ok", "healthy")
    run = exporter(Config(portals=(portal_config(sim, slow, timeout=30.0),
                                   portal_config(sim, ok, timeout=30.0))))
    t0 = time.monotonic()
    s = run.samples(headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
    elapsed = time.monotonic() - t0
    # The contract: answered within the scrape timeout, whatever the portals do.
    assert elapsed < 2.0, elapsed
    assert value(s, "docspace_up", portal="slow") == 0
    assert value(s, "docspace_up", portal="ok") == 1
    assert value(s, "docspace_backup_schedule_configured", portal="slow") is None


def test_portal_timeout_bounds_a_slow_portal(sim: Simulator, exporter: ExporterFactory) -> None:
    slow = sim.add_portal("slow", "slow", slow_seconds=20)
    run = exporter(Config(portals=(portal_config(sim, slow, timeout=1.0),)))
    t0 = time.monotonic()
    s = run.samples()
    assert time.monotonic() - t0 < 5.0  # bounded by the 1 s timeout, not the portal's 20 s
    assert value(s, "docspace_up", portal="slow") == 0
    assert value(s, "docspace_scrape_errors_total", portal="slow", endpoint="schedule",
                 reason="timeout") == 1


def test_probe_serves_one_configured_portal(sim: Simulator, exporter: ExporterFactory) -> None:
    a, b = sim.add_portal("a", "healthy"), sim.add_portal("b", "backup_failed")
    run = exporter(Config(portals=(portal_config(sim, a), portal_config(sim, b))))
    s = run.samples("/probe?target=b")
    assert value(s, "docspace_backup_failed", portal="b") == 1
    assert value(s, "docspace_up", portal="a") is None
    assert not any(k[0].startswith("docspace_exporter_") for k in s)
    assert sim.request_count("a") == 0


@pytest.mark.parametrize("query", ["", "?target=", "?target=nope", "?target=a&target=a",
                                   "?target=http://127.0.0.1:1/a", "?module=a"])
def test_probe_rejects_anything_but_one_configured_name(
        sim: Simulator, exporter: ExporterFactory, query: str) -> None:
    a = sim.add_portal("a", "healthy")
    run = exporter(Config(portals=(portal_config(sim, a),)))
    status, _, body = run.get("/probe" + query)
    assert status == 400, body
    assert sim.request_count() == 0  # no request left the exporter


def test_landing_health_ready_and_methods(sim: Simulator, exporter: ExporterFactory) -> None:
    a = sim.add_portal("a<b", "healthy") if False else sim.add_portal("main", "healthy")
    run = exporter(Config(portals=(portal_config(sim, a),)))
    status, headers, body = run.get("/")
    assert status == 200 and "text/html" in headers["Content-Type"]
    assert "main" in body and "/metrics" in body and "0.1.0" in body
    assert run.get("/-/healthy")[0] == 200
    assert run.get("/-/ready")[0] == 200
    assert run.get("/nope")[0] == 404
    assert run.get("/metrics", method="DELETE")[0] == 405
    assert run.get("/nope", method="PUT")[0] == 404
    assert run.get("/-/reload")[0] == 405  # GET on a POST endpoint
    assert sim.request_count() == 0


def test_not_ready_without_config(exporter: ExporterFactory) -> None:
    run = exporter(None)
    assert run.get("/-/healthy")[0] == 200
    assert run.get("/-/ready")[0] == 503


def test_openmetrics_and_gzip(sim: Simulator, exporter: ExporterFactory) -> None:
    a = sim.add_portal("a", "healthy")
    run = exporter(Config(portals=(portal_config(sim, a),)))
    req = urllib.request.Request(run.url + "/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        import gzip

        body = gzip.decompress(r.read()).decode()
    assert body.endswith("# EOF\n")
    assert 'docspace_up{portal="a"} 1.0' in body


def _write_config(path: Path, sim: Simulator, names: list[str]) -> None:
    path.write_text(render_config(sim, [sim.portal(n) for n in names]))


def test_reload_over_http_and_invalid_config_keeps_the_old(
        sim: Simulator, exporter: ExporterFactory, tmp_path: Path) -> None:
    sim.add_portal("a", "healthy")
    sim.add_portal("b", "healthy")
    cfg_file = tmp_path / "config.yaml"
    _write_config(cfg_file, sim, ["a"])
    run = exporter(load_config(cfg_file), loader=lambda: load_config(cfg_file))
    s = run.samples()
    assert value(s, "docspace_up", portal="a") == 1 and value(s, "docspace_up", portal="b") is None
    assert value(s, "docspace_exporter_config_last_reload_successful") == 1
    first_ts = value(s, "docspace_exporter_config_last_reload_success_timestamp_seconds")
    assert first_ts is not None

    _write_config(cfg_file, sim, ["a", "b"])
    time.sleep(0.01)
    status, _, body = run.get("/-/reload", method="POST")
    assert status == 200, body
    s = run.samples()
    assert value(s, "docspace_up", portal="b") == 1
    ts = value(s, "docspace_exporter_config_last_reload_success_timestamp_seconds")
    assert ts is not None and ts > first_ts

    cfg_file.write_text("portals:\n  - name: a\n    url: ftp://nope\n")
    status, _, body = run.get("/-/reload", method="POST")
    assert status == 500 and "portals[0].url" in body
    s = run.samples()
    assert value(s, "docspace_exporter_config_last_reload_successful") == 0
    assert value(s, "docspace_up", portal="a") == 1 and value(s, "docspace_up", portal="b") == 1


def test_basic_auth(sim: Simulator, exporter: ExporterFactory, tmp_path: Path) -> None:
    a = sim.add_portal("a", "healthy")
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    run = exporter(Config(portals=(portal_config(sim, a),)), web=load_web_config(str(web_file)))

    def auth(user: str, pw: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    status, headers, _ = run.get("/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert run.get("/metrics", auth("prometheus", "wrong"))[0] == 401
    assert run.get("/metrics", auth("nobody", "s3cret-pass"))[0] == 401
    assert run.get("/metrics", {"Authorization": "Basic !!!notbase64"})[0] == 401
    assert run.get("/-/reload", auth("prometheus", "wrong"), method="POST")[0] == 401
    assert sim.request_count() == 0
    status, _, body = run.get("/metrics", auth("prometheus", "s3cret-pass"))
    assert status == 200 and 'docspace_up{portal="a"} 1.0' in body
    assert run.get("/-/healthy")[0] == 200  # probes work without credentials
    # The scheme is case-insensitive.
    assert run.get("/metrics", {"Authorization": "basic " + auth("prometheus", "s3cret-pass")[
        "Authorization"].split(" ", 1)[1]})[0] == 200


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_and_client_certificates(sim: Simulator, exporter: ExporterFactory,
                                     tmp_path: Path) -> None:
    a = sim.add_portal("a", "healthy")
    cert, key = _self_signed(tmp_path, "server")
    ccert, ckey = _self_signed(tmp_path, "client")
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                        f"  client_ca_file: {ccert}\n"
                        "  client_auth_type: RequireAndVerifyClientCert\n")
    run = exporter(Config(portals=(portal_config(sim, a),)), web=load_web_config(str(web_file)))
    assert run.url.startswith("https://")

    ctx = ssl.create_default_context(cafile=str(cert))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        urllib.request.urlopen(run.url + "/metrics", context=ctx, timeout=10).read()
    ctx.load_cert_chain(str(ccert), str(ckey))
    with urllib.request.urlopen(run.url + "/metrics", context=ctx, timeout=30) as r:
        assert r.status == 200
        assert b'docspace_up{portal="a"} 1.0' in r.read()
    # Plain HTTP on the TLS port gets nowhere.
    with pytest.raises(OSError):
        urllib.request.urlopen(run.url.replace("https", "http") + "/metrics", timeout=10).read()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
         "cert_file: cannot read"),
        ("basic_auth_users:\n  admin: plain-text-password\n", "must be a bcrypt hash"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
         "client_auth_type"),
        ("unknown: 1\n", "unknown: unknown key"),
    ],
)
def test_web_config_errors(tmp_path: Path, content: str, problem: str) -> None:
    from exporter.config import ConfigError

    web_file = tmp_path / "web.yml"
    web_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web_file))
    text = "\n".join(info.value.problems)
    assert problem in text
    assert "plain-text-password" not in text


# -- the CLI as a user runs it ------------------------------------------------------------

def test_demo_mode_serves_every_scenario(tmp_path: Path,
                                         cli_processes: list[ExporterProcess]) -> None:
    ex = run_cli(["--demo"], tmp_path / "exporter.log")
    cli_processes.append(ex)
    s = assert_complete(ex.get("/metrics"))
    code, err = ex.stop(), ex.log()
    assert code == 0, err
    ups = {dict(k[1])["portal"]: v for k, v in s.items() if k[0] == "docspace_up"}
    assert ups == {"healthy": 1, "healthy-login": 1, "stale": 1, "never-ran": 1,
                   "no-schedule": 1, "backup-running": 1, "backup-failed": 1,
                   "restore-running": 0, "restore-failed": 1, "auth-failure": 0, "down": 0,
                   "overdue": 1, "tariff-delay": 1}
    # The overdue portal's due time is in the past, the tariff-delay portal is blocked.
    overdue_due = value(s, "docspace_backup_schedule_next_due_timestamp_seconds",
                        portal="overdue")
    assert overdue_due is not None and overdue_due < time.time() - 3600
    assert value(s, "docspace_portal_tariff_state", portal="tariff-delay", state="delay") == 1
    healthy_due = value(s, "docspace_backup_schedule_next_due_timestamp_seconds",
                        portal="healthy")
    assert healthy_due is not None and healthy_due > time.time()
    assert value(s, "docspace_backup_schedule_configured", portal="no-schedule") == 0
    assert value(s, "docspace_backup_failed", portal="backup-failed") == 1
    assert value(s, "docspace_restore_failed", portal="restore-failed") == 1
    assert value(s, "docspace_backup_progress_ratio", portal="backup-running") == 0.36
    age = value(s, "docspace_backup_schedule_last_backup_age_seconds", portal="stale")
    assert age is not None and age > 1.5 * 86400
    assert "msg=listening" in err


def test_demo_listens_on_loopback_unless_an_address_is_given() -> None:
    """`--demo` alone serves 127.0.0.1 only (the README says loopback); an explicit
    --web.listen-address still wins, and without --demo the default is every interface."""
    from exporter import cli

    def address(*argv: str) -> tuple[str, int]:
        return cli.listen_address(cli.build_parser().parse_args(list(argv)))

    assert address("--demo") == ("127.0.0.1", cli.DEFAULT_PORT)
    assert address("--demo", "--web.listen-address", ":9") == ("::", 9)
    assert address("--demo", "--web.listen-address", "[::1]:9") == ("::1", 9)
    assert address() == ("::", cli.DEFAULT_PORT)
    # The real demo, started as users do (no address), with the default port swapped for a
    # free one so that the test takes no fixed port: it binds loopback and serves there.
    code = "import exporter.cli as c; c.DEFAULT_PORT = 0; raise SystemExit(c.main(['--demo']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 30
        while "msg=listening" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the demo exited before listening"
        listening = dict(part.split("=", 1) for part in line.split() if "=" in part)
        host, _, port = listening["address"].rpartition(":")
        assert host == "127.0.0.1", line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err


def test_sighup_reloads_the_config_file(sim: Simulator, tmp_path: Path,
                                       cli_processes: list[ExporterProcess]) -> None:
    sim.add_portal("a", "healthy")
    sim.add_portal("b", "healthy")
    cfg_file = tmp_path / "config.yaml"
    _write_config(cfg_file, sim, ["a"])
    ex = start_cli(cfg_file, tmp_path / "exporter.log")
    cli_processes.append(ex)
    _write_config(cfg_file, sim, ["a", "b"])
    ex.signal(signal.SIGHUP)
    assert wait_for(lambda: value(assert_complete(ex.get("/metrics")), "docspace_up",
                                  portal="b") == 1, timeout=20, step=0.2)
    code, err = ex.stop(), ex.log()
    assert code == 0, err
    assert "config reloaded" in err


def test_log_format_json(sim: Simulator, tmp_path: Path,
                         cli_processes: list[ExporterProcess]) -> None:
    import json

    sim.add_portal("a", "auth_failure")
    cfg_file = tmp_path / "config.yaml"
    _write_config(cfg_file, sim, ["a"])
    ex = start_cli(cfg_file, tmp_path / "exporter.log", "--log.format", "json")
    cli_processes.append(ex)
    assert ex.get("/metrics").status == 200
    code, err = ex.stop(), ex.log()
    assert code == 0
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(rec.get("reason") == "unauthorized" and rec.get("portal") == "a" for rec in lines)
    assert sim.portal("a").api_key not in err


def test_version_flag() -> None:
    r = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ))
    assert r.returncode == 0 and "0.1.0" in r.stdout


def test_connection_cap_closes_extra_connections(sim: Simulator, exporter: ExporterFactory
                                                 ) -> None:
    a = sim.add_portal("a", "healthy")
    run = exporter(Config(portals=(portal_config(sim, a),)))
    run.server.max_connections = 2
    port = run.server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        # Wait (bounded) until the server has accepted both and counts them.
        deadline = time.monotonic() + 10
        while run.server._active < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run.server._active == 2
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        extra.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(100) == b""  # closed without an answer
        extra.close()
    finally:
        for s in idle:
            s.close()
    # The slots free up once the idle connections' threads see the close.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if run.get("/-/healthy")[0] == 200:
                break
        except OSError:  # still full: closed without an answer
            pass
        time.sleep(0.05)
    assert run.get("/-/healthy")[0] == 200  # the slots are free again


def test_a_portal_that_stays_down_warns_on_changes_and_then_every_few_minutes(
        sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    """One warn per failing endpoint when a portal goes down or its reason changes, a
    reminder once REMINDER_INTERVAL has passed, debug in between, info when it answers
    again. The clock is injected: no sleeps."""
    from exporter.collector import Scraper
    from exporter.logs import REMINDER_INTERVAL, FailureLog

    sim.add_portal("a", "down")
    sim.add_portal("ok", "healthy")
    portals = [portal_config(sim, sim.portal("a")), portal_config(sim, sim.portal("ok"))]
    now = [1000.0]
    scraper = Scraper(max_workers=8)
    scraper.failure_log = FailureLog(clock=lambda: now[0])
    assert 60 <= REMINDER_INTERVAL <= 900  # "every few minutes"

    def scrape_at(t: float) -> list[tuple[int, str, dict[str, str]]]:
        now[0] = 1000.0 + t
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="exporter.collector"):
            data = scraper.scrape(portals)
        assert {d.name: bool(d.failed) for d in data}["ok"] is False
        return [(r.levelno, r.getMessage(), {k: str(getattr(r, k, "")) for k in (
            "portal", "endpoint", "reason")}) for r in caplog.records
            if r.name == "exporter.collector"]

    def at(level: int, lines: list[tuple[int, str, dict[str, str]]]) -> list[tuple[str, str]]:
        return sorted((f["endpoint"], f["reason"]) for lv, _, f in lines if lv == level)

    try:
        first = scrape_at(0)
        down = at(logging.WARNING, first)  # one line per failing endpoint
        core = {("backup_progress", "http_error"), ("restore_progress", "http_error"),
                ("schedule", "http_error")}
        assert core <= set(down), down
        assert {reason for _, reason in down} == {"http_error"}
        assert all(f["portal"] == "a" for _, _, f in first)  # nothing about the healthy one
        for t in (60, 120, REMINDER_INTERVAL - 1):  # same state: detail at debug only
            lines = scrape_at(t)
            assert at(logging.WARNING, lines) == [], t
            assert at(logging.DEBUG, lines) == down, t
        assert at(logging.WARNING, scrape_at(REMINDER_INTERVAL)) == down  # the reminder
        assert at(logging.WARNING, scrape_at(REMINDER_INTERVAL + 60)) == []
        sim.set_scenario("a", "rate_limited")  # the reason changes: warn at once
        changed = scrape_at(REMINDER_INTERVAL + 120)
        assert {r for _, r in at(logging.WARNING, changed)} == {"rate_limited"}
        sim.set_scenario("a", "healthy")
        back = scrape_at(REMINDER_INTERVAL + 180)
        assert [(lv, msg) for lv, msg, _ in back] == [(logging.INFO, "portal answers again")]
        assert scrape_at(REMINDER_INTERVAL + 240) == []
        sim.set_scenario("a", "down")  # down again after recovering: a warn, not a debug
        assert core <= set(at(logging.WARNING, scrape_at(REMINDER_INTERVAL + 300)))
    finally:
        scraper.close()
