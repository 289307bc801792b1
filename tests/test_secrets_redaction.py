"""Secrets: drive every error path with debug logging, then scan every
log line, metric, HTTP answer and `--config.check` output for the configured API keys,
tokens and passwords, the login tokens the portals issued, and what the contract keeps out
of labels and logs (storageParams, task ids, download links, API error texts above debug).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from docspace_simulator import SimPortal, Simulator
from exporter import logs
from exporter.app import ExporterApp
from exporter.auth import BasicAuth
from exporter.client import DocSpaceClient
from exporter.config import ConfigError, load_config
from exporter.webconfig import load_web_config
from tests.harness import (
    ROOT,
    ExporterProcess,
    RawServer,
    RunningExporter,
    closed_port,
    make_certs,
    portal_entry,
    start_cli,
    wait_for,
    write_config,
)

# Every scenario that makes an error path, plus the healthy ones whose answers carry task
# ids, links and storageParams.
API_KEY_SCENARIOS = ["healthy", "backup_failed", "restore_failed", "hang", "drip", "huge",
                     "truncated", "wrong_types", "html", "down", "auth_failure", "unpaid",
                     "forbidden", "restore_running", "not_found", "rate_limited", "redirect"]
WEB_USER = "prometheus"
WEB_PASSWORD = "web-" + secrets.token_hex(12)
# A short scrape timeout: the hanging and dripping portals cost 1.5 s per scrape, not 2.5.
SCRAPE_HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}
API_ERROR_TEXTS = ["No space left on device", "Unable to restore: the backup file is damaged"]


def secret_pieces(value: str) -> list[str]:
    """The secret, and pieces of it a truncating log line could still leak."""
    body = value[3:] if value.startswith("sk-") else value
    pieces = [value]
    if len(body) >= 24:
        pieces += [body[:12], body[len(body) // 2: len(body) // 2 + 12], body[-12:]]
    return pieces


class World:
    """A simulator full of hostile portals, each with its own distinct credentials."""

    def __init__(self, sim: Simulator, tmp: Path) -> None:
        self.sim = sim
        self.tmp = tmp
        self.entries: list[dict[str, Any]] = []
        self.secrets: list[str] = [WEB_PASSWORD]
        for sc in API_KEY_SCENARIOS:
            sp = sim.add_portal(f"key-{sc}", sc, api_key="sk-" + secrets.token_hex(32),
                                slow_seconds=60, storage_type=5 if sc == "healthy" else 0)
            self.add(sp, history=True)
        # A static token, right and wrong.
        sp = sim.add_portal("token-ok", "healthy", token="tok-" + secrets.token_hex(20))
        self.add(sp)
        sp = sim.add_portal("token-bad", "healthy", token="tok-" + secrets.token_hex(20))
        self.add(sp, token="tok-" + secrets.token_hex(20))
        # Password logins: working (then revoked), wrong password, portal refusing all.
        for name, scenario in (("pw-ok", "healthy"), ("pw-wrong", "healthy"),
                               ("pw-auth-failure", "auth_failure"), ("pw-drip", "drip")):
            sp = sim.add_portal(name, scenario, username=f"{name}@example.com",
                                password="pw-" + secrets.token_hex(16), token_lifetime=3600)
            kw = {"password": "pw-" + secrets.token_hex(16)} if name == "pw-wrong" else {}
            self.add(sp, **kw)
        # Not the simulator: nobody listening; a TLS server no CA vouches for.
        self.entries.append({"name": "refused", "url": f"http://127.0.0.1:{closed_port()}",
                             "api_key": self.new_key(), "timeout": "10s"})
        self.tls_server: RawServer | None = None

    def new_key(self) -> str:
        key = "sk-" + secrets.token_hex(32)
        self.secrets.append(key)
        return key

    def add(self, sp: SimPortal, **kw: Any) -> None:
        entry = portal_entry(self.sim, sp, **kw)
        for k in ("api_key", "token", "password"):
            if k in entry:
                self.secrets.append(entry[k])
        for v in (sp.api_key, sp.token, sp.password):
            if v:
                self.secrets.append(v)
        self.entries.append(entry)

    def with_tls(self, certs_dir: Path) -> RawServer:
        certs = make_certs(certs_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.rogue_cert, certs.rogue_key)
        self.tls_server = RawServer(lambda s, h, stop: None, context=ctx)
        self.entries.append({"name": "tls-bad", "url": self.tls_server.url("https"),
                             "api_key": self.new_key(), "timeout": "10s"})
        return self.tls_server

    def issued_tokens(self) -> list[str]:
        """Login tokens the simulator handed out, as seen in the Authorization headers."""
        out = []
        for sp in self.sim.portals:
            for header in self.sim.auth_headers(sp.name):
                token = header[7:] if header.startswith("Bearer ") else header
                if token and not token.startswith("sk-"):
                    out.append(token)
        return out

    def wire_facts(self) -> list[str]:
        """Task ids, download links and storageParams values of the portals' own answers."""
        facts: list[str] = []
        for name in ("key-healthy", "key-backup_failed", "key-restore_failed"):
            sp = self.sim.portal(name)
            for ep in ("getbackupschedule", "getbackupprogress", "getrestoreprogress"):
                conn = http.client.HTTPConnection("127.0.0.1", self.sim.port, timeout=10)
                conn.request("GET", f"/{name}/api/2.0/backup/{ep}",
                             headers={"Authorization": f"Bearer {sp.api_key}"})
                doc = json.loads(conn.getresponse().read())
                conn.close()
                resp = doc.get("response") or {}
                facts += [v for k, v in resp.items() if k in ("taskId", "link") and v]
                for v in (resp.get("storageParams") or {}).values():
                    if isinstance(v, str) and len(v) > 3:
                        facts.append(v)
        assert any("storage/backup" in f for f in facts)  # the healthy DataStore link
        return facts


def scan(what: str, text: str, forbidden: list[str], *, pieces: bool = True) -> None:
    """No forbidden string in `text`; credentials (pieces=True) not even in part."""
    for s in forbidden:
        for piece in secret_pieces(s) if pieces else [s]:
            assert piece not in text, f"{what} contains a secret ({piece[:4]}...)"


def scan_api_texts(what: str, text: str, *, logs_at_debug: bool) -> None:
    """API error texts: in logs at debug level only; never in metrics or answers."""
    for line in text.splitlines():
        for t in API_ERROR_TEXTS:
            if t in line:
                assert logs_at_debug and ("level=debug" in line or '"level": "debug"' in line), (
                    f"{what}: API error text outside a debug log line: {line[:120]}")


@pytest.fixture
def world(simulator: Simulator, tmp_path: Path) -> Iterator[World]:
    w = World(simulator, tmp_path)
    with w.with_tls(tmp_path / "certs"):
        yield w


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(
        f"{WEB_USER}:{password}".encode()).decode()}


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_no_secret_in_logs_metrics_answers_or_config_check(
        log_format: str, world: World, tmp_path: Path,
        cli_processes: list[ExporterProcess]) -> None:
    sim = world.sim
    # Every portal on one simulator host: lift the per-host limit, or the hanging portals
    # would hold every slot and the others would never reach their own error paths.
    cfg = write_config(tmp_path / "config.yaml", world.entries, max_requests_per_host=256)
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  {WEB_USER}: '{hashed}'\n", encoding="utf-8")
    log_path = tmp_path / "exporter.log"
    ex = start_cli(cfg, log_path, "--log.level", "debug", "--log.format", log_format,
                   "--web.config.file", str(web))
    cli_processes.append(ex)
    auth = basic(WEB_PASSWORD)
    answers: list[bytes] = []

    def get(path: str, headers: dict[str, str] | None = None, **kw: Any) -> int:
        a = ex.get(path, headers, **kw)
        answers.append(a.body)
        answers.append("\n".join(f"{k}: {v}" for k, v in a.headers.items()).encode())
        return a.status

    # Every portal's error path, twice (the second time: cached tokens, login backoff).
    for _ in range(2):
        assert get("/metrics", dict(auth, **SCRAPE_HEADERS)) == 200
    sim.revoke_tokens("pw-ok")  # a re-login on the 401s
    threads = [threading.Thread(target=get, args=(f"/probe?target={e['name']}",
                                                 dict(auth, **SCRAPE_HEADERS)))
               for e in world.entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Hostile clients.
    for path in ("/probe?target=" + world.entries[0]["url"], "/probe?target=nope",
                 "/probe?target=a&target=b", "/nope", "/"):
        get(path, auth)
    for bad in ("", "Basic !!!", "Basic " + base64.b64encode(b"x").decode()):
        get("/metrics", {"Authorization": bad} if bad else {})
    get("/metrics", basic(WEB_PASSWORD + "x"))
    get("/metrics", auth, method="POST")
    # Reload with a broken config that has secrets in every wrong place, then a good one.
    leaked_in_bad = "sk-" + secrets.token_hex(32)
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(broken_config(world, leaked_in_bad), encoding="utf-8")
    good_text = cfg.read_text(encoding="utf-8")
    cfg.write_text(bad_cfg.read_text(encoding="utf-8"), encoding="utf-8")
    assert get("/-/reload", auth, method="POST") == 500
    ex.signal(signal.SIGHUP)
    assert wait_for(lambda: log_path.read_text().count("config reload failed") >= 2)
    cfg.write_text(good_text, encoding="utf-8")
    assert get("/-/reload", auth, method="POST") == 200
    assert ex.stop() == 0

    # --config.check: the good config, the broken one, and a web config with a plain password.
    checks = [run_cli("--config.check", "--config.file", str(cfg)),
              run_cli("--config.check", "--config.file", str(bad_cfg)),
              run_cli("--config.check", "--config.file", str(tmp_path / "missing.yaml"))]
    plain_web = tmp_path / "plain-web.yml"
    plain_web.write_text(f"basic_auth_users:\n  {WEB_USER}: '{WEB_PASSWORD}'\n")
    checks.append(run_cli("--config.file", str(cfg), "--web.config.file", str(plain_web),
                          "--web.listen-address", "127.0.0.1:0"))
    assert [c[0] for c in checks] == [0, 1, 1, 1]
    assert "portals[0]" in checks[1][1]  # the broken config's problems are all listed

    issued = world.issued_tokens()
    assert issued, "no login happened: the password paths were not driven"
    forbidden = [*world.secrets, *issued, leaked_in_bad]
    log_text = log_path.read_text(encoding="utf-8")
    assert "level=debug" in log_text or '"level": "debug"' in log_text
    assert "login failed" in log_text and "API call failed" in log_text
    scan("the exporter's log", log_text, forbidden)
    # The mask is a last line of defence; nothing should even try to log a secret.
    assert "<redacted>" not in log_text
    scan_api_texts("the exporter's log", log_text, logs_at_debug=True)
    answers_text = b"\n".join(answers).decode("utf-8", "replace")
    scan("the HTTP answers", answers_text, forbidden)
    scan("the HTTP answers", answers_text, world.wire_facts(), pieces=False)
    scan_api_texts("the HTTP answers", answers_text, logs_at_debug=False)
    for _code, out in checks:
        scan("--config.check output", out, forbidden)
    # Task ids, links and storageParams stay out of the log at every level too.
    scan("the exporter's log", log_text, world.wire_facts(), pieces=False)
    assert sim.leaked_requests == 0


def broken_config(world: World, leaked: str) -> str:
    url = world.sim.portal_url("key-healthy")
    return (
        "portals:\n"
        f"  - name: a\n    url: ftp://{leaked}@example.com\n    api_key: {leaked}\n"
        f"  - name: b\n    url: {url}\n    api_key: not-sk-{leaked}\n"
        f"  - name: c\n    url: https://admin:{leaked}@example.com\n    token: {leaked}\n"
        f"  - name: d\n    url: {url}\n    username: u\n    password: {leaked}\n"
        f"    token: {leaked}\n"
        f"  - name: e\n    url: {url}\n    pasword: {leaked}\n    api_key_file: /nonexistent\n"
        f"  - name: e\n    url: {url}?key={leaked}\n    token: ${{UNSET_SECRET_VAR}}\n"
        f"  - {leaked}\n"
    )


def run_cli(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "exporter", "--log.level", "debug", *args],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_yaml_syntax_error_does_not_echo_the_line(tmp_path: Path) -> None:
    leaked = "sk-" + secrets.token_hex(32)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f'portals:\n  - name: a\n    api_key: "{leaked}\n    url: [\n', "utf-8")
    code, out = run_cli("--config.check", "--config.file", str(cfg))
    assert code == 1 and "invalid YAML" in out
    scan("--config.check output", out, [leaked])


# --- in process: unmasked log records, DNS failure, repr() -------------------------------------


@pytest.fixture
def raw_debug_log() -> Iterator[io.StringIO]:
    """Every log record at debug, formatted like the CLI's but WITHOUT the secret mask, so a
    secret that some code path hands to the logger shows up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.LogfmtFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_unmasked_debug_records_hold_no_secret(
        world: World, tmp_path: Path, raw_debug_log: io.StringIO,
        exporters: Callable[..., RunningExporter],
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    entries = [*world.entries, {"name": "dns", "url": "https://docspace.example.invalid",
                                "api_key": world.new_key()}]
    cfg_path = write_config(tmp_path / "config.yaml", entries, max_requests_per_host=256)
    cfg = load_config(cfg_path)
    ex = exporters(cfg, loader=lambda: load_config(cfg_path))
    bodies = [ex.get("/metrics", SCRAPE_HEADERS).body for _ in range(2)]
    world.sim.revoke_tokens("pw-ok")
    bodies.append(ex.get("/probe?target=pw-ok", SCRAPE_HEADERS).body)
    cfg_path.write_text(broken_config(world, world.new_key()), encoding="utf-8")
    assert ex.get("/-/reload", method="POST").status == 500

    text = raw_debug_log.getvalue()
    assert "API call failed" in text and "login failed" in text
    assert "portal=dns" in text  # the DNS failure was logged, and is scanned below
    forbidden = [*world.secrets, *world.issued_tokens()]
    scan("an unmasked log record", text, forbidden)
    scan("the metrics", b"".join(bodies).decode(), forbidden)
    scan("the metrics", b"".join(bodies).decode(), world.wire_facts(), pieces=False)
    scan("an unmasked log record", text, world.wire_facts(), pieces=False)

    # repr() of everything that holds a credential.
    client = DocSpaceClient(cfg.portals[0])
    app = ExporterApp(cfg)
    try:
        reprs = [repr(cfg), str(cfg), repr(cfg.portals), repr(client), repr(app),
                 repr(ex.server.web), repr(BasicAuth({"u": b"$2b$04$x"}))]
        reprs += [repr(p) + repr(p.auth) + str(p.auth) for p in cfg.portals]
        reprs += [repr(sp) for sp in world.sim.portals]
        try:
            load_config(cfg_path)
        except ConfigError as exc:
            reprs += [repr(exc), str(exc), *exc.problems]
        scan("a repr()", "\n".join(reprs), forbidden)
    finally:
        client.close()
        app.scraper.close()


def test_web_config_errors_hold_no_password(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {WEB_USER}: {WEB_PASSWORD}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    problems = "\n".join(info.value.problems)
    assert "basic_auth_users.prometheus" in problems
    scan("a web config problem", problems + repr(info.value), [WEB_PASSWORD])
