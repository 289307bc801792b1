"""Every key of exporter-toolkit's web-configuration.md, one row each: applied (and the row
shows its effect on a real TLS/HTTP connection over loopback) or refused with a message that
names the key. Nothing accepted and ignored (issue 8, items 1 and 5)."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from exporter.config import Config, ConfigError
from exporter.webconfig import EXTRA_HTTP_HEADERS, load_web_config
from tests.harness import (
    ROOT,
    RunningExporter,
)

EMPTY = Config(portals=())


# --- certificates (openssl CLI; CI installs it) ------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path  # RSA, SANs 127.0.0.1 and localhost, signed by ca
    server_key: Path
    allowed_cert: Path  # client, SANs DNS:prometheus.example and IP:::1, signed by ca
    allowed_key: Path
    other_cert: Path  # client, SANs 127.0.0.1 and localhost, signed by ca
    other_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=web config test CA")
    (d / "ext.cnf").write_text(
        "[server]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "[allowed]\nsubjectAltName=DNS:prometheus.example,IP:::1\n"
        "extendedKeyUsage=clientAuth\n"
        "[other]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=clientAuth\n")
    for stem in ("server", "allowed", "other"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key", "-out",
            f"{stem}.csr", "-subj", f"/CN={stem}")
        run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{stem}.crt", "-days", "2", "-extfile", "ext.cnf",
            "-extensions", stem)
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "allowed.crt",
               d / "allowed.key", d / "other.crt", d / "other.key")


def client(pki: Pki, cert: str | None = None, *, max_tls: ssl.TLSVersion | None = None,
           ciphers: str | None = None, curve: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(pki.dir / f"{cert}.crt", pki.dir / f"{cert}.key")
    if max_tls is not None:
        ctx.maximum_version = max_tls
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    return ctx


def tls_yaml(pki: Pki, **extra: str) -> str:
    lines = [f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def mtls_yaml(pki: Pki, **extra: str) -> str:
    return tls_yaml(pki, client_ca_file=str(pki.ca),
                    client_auth_type="RequireAndVerifyClientCert", **extra)


Start = Callable[[str], RunningExporter]


@pytest.fixture
def start(tmp_path: Path, exporters: Callable[..., RunningExporter]) -> Start:
    def make(text: str) -> RunningExporter:
        path = tmp_path / "web.yml"
        path.write_text(text, encoding="utf-8")
        return exporters(EMPTY, web=load_web_config(str(path)))
    return make


def refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    return "\n".join(info.value.problems)


def healthy(ex: RunningExporter, ctx: ssl.SSLContext) -> int:
    return ex.get("/-/healthy", context=ctx, timeout=10).status


def fails(ex: RunningExporter, ctx: ssl.SSLContext) -> bool:
    try:
        ex.get("/-/healthy", context=ctx, timeout=10)
    except OSError:  # ssl.SSLError, a reset, or a close before any HTTP answer
        return True
    return False


def negotiated(ex: RunningExporter, ctx: ssl.SSLContext) -> tuple[str, str]:
    """(TLS version, cipher name) of a handshake with the running exporter."""
    import socket

    with socket.create_connection(("127.0.0.1", ex.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        cipher = s.cipher()
        assert cipher is not None
        return str(s.version()), cipher[0]


# --- one row per key ---------------------------------------------------------------------------


def row_cert_file_key_file(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start(tls_yaml(pki))
    assert healthy(ex, client(pki)) == 200
    assert "cert_file" in refused(tmp_path, "tls_server_config:\n  cert_file: /nonexistent\n"
                                            f"  key_file: {pki.server_key}\n")


def row_cert_key_inline(pki: Pki, start: Start, tmp_path: Path) -> None:
    def block(path: Path) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in path.read_text().splitlines())

    ex = start(f"tls_server_config:\n  cert: {block(pki.server_cert)}"
               f"  key: {block(pki.server_key)}")
    assert healthy(ex, client(pki)) == 200
    text = refused(tmp_path, f"tls_server_config:\n  cert: {block(pki.server_cert)}"
                             f"  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n")
    assert "cert or cert_file, not both" in text
    key_text = pki.server_key.read_text()
    assert key_text.splitlines()[1] not in text  # the key is never echoed


def row_client_ca_file_and_auth_type(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start(mtls_yaml(pki))
    assert fails(ex, client(pki))  # no client certificate
    assert healthy(ex, client(pki, "other")) == 200
    ex = start(tls_yaml(pki, client_ca_file=str(pki.ca),
                        client_auth_type="VerifyClientCertIfGiven"))
    assert healthy(ex, client(pki)) == 200
    assert healthy(ex, client(pki, "other")) == 200
    for unverified in ("RequestClientCert", "RequireAnyClientCert"):
        text = refused(tmp_path, tls_yaml(pki, client_ca_file=str(pki.ca),
                                          client_auth_type=unverified))
        assert f"client_auth_type: {unverified}" in text and "not supported" in text
    # As in the toolkit: a client CA without a policy is an error, not a silent default.
    assert "client_auth_type" in refused(tmp_path, tls_yaml(pki, client_ca_file=str(pki.ca)))


def row_client_ca_inline(pki: Pki, start: Start, tmp_path: Path) -> None:
    ca = "|\n" + "".join(f"    {line}\n" for line in pki.ca.read_text().splitlines())
    ex = start(tls_yaml(pki, client_auth_type="RequireAndVerifyClientCert") + f"  client_ca: {ca}")
    assert fails(ex, client(pki))
    assert healthy(ex, client(pki, "allowed")) == 200
    assert "client_ca: must be PEM" in refused(
        tmp_path, mtls_yaml(pki).replace(f"client_ca_file: {pki.ca}", "client_ca: nonsense"))


def row_client_allowed_sans(pki: Pki, start: Start, tmp_path: Path) -> None:
    # The issue's case: SANs 127.0.0.1/localhost, only another name allowed -> refused.
    ex = start(mtls_yaml(pki) + "  client_allowed_sans: [only-this-name.invalid]\n")
    assert fails(ex, client(pki, "other"))
    assert fails(ex, client(pki, "allowed"))
    # A DNS SAN and an IPv6 SAN (written as Go writes it) match.
    for allowed in ("prometheus.example", "'::1'"):
        ex = start(mtls_yaml(pki) + f"  client_allowed_sans: [x.invalid, {allowed}]\n")
        assert healthy(ex, client(pki, "allowed")) == 200
        assert fails(ex, client(pki, "other"))
    # VerifyClientCertIfGiven + SANs: a client without a certificate has no SAN either.
    ex = start(tls_yaml(pki, client_ca_file=str(pki.ca),
                        client_auth_type="VerifyClientCertIfGiven")
               + "  client_allowed_sans: [prometheus.example]\n")
    assert fails(ex, client(pki))
    assert healthy(ex, client(pki, "allowed")) == 200
    # Without verification the SANs prove nothing: refused.
    text = refused(tmp_path, tls_yaml(pki) + "  client_allowed_sans: [prometheus.example]\n")
    assert "client_allowed_sans" in text


def row_min_max_version(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start(tls_yaml(pki))  # defaults TLS12..TLS13, as in the toolkit
    assert negotiated(ex, client(pki))[0] == "TLSv1.3"
    assert negotiated(ex, client(pki, max_tls=ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
    ex = start(tls_yaml(pki, max_version="TLS12"))
    assert negotiated(ex, client(pki))[0] == "TLSv1.2"
    ex = start(tls_yaml(pki, min_version="TLS13"))
    assert fails(ex, client(pki, max_tls=ssl.TLSVersion.TLSv1_2))
    assert negotiated(ex, client(pki))[0] == "TLSv1.3"
    for key in ("min_version", "max_version"):
        text = refused(tmp_path, tls_yaml(pki, **{key: "TLS10"}))
        assert f"{key}: TLS10 is not offered" in text
        assert f"{key}: must be one of" in refused(tmp_path, tls_yaml(pki, **{key: "SSL3"}))
    assert "min_version is above max_version" in refused(
        tmp_path, tls_yaml(pki, min_version="TLS13", max_version="TLS12"))


def row_cipher_suites(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start(tls_yaml(pki, cipher_suites="[TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]"))
    tls12 = ssl.TLSVersion.TLSv1_2
    assert fails(ex, client(pki, max_tls=tls12, ciphers="ECDHE-RSA-AES256-GCM-SHA384"))
    assert negotiated(ex, client(pki, max_tls=tls12)) == (
        "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    assert negotiated(ex, client(pki))[0] == "TLSv1.3"  # TLS 1.3 suites are not configurable
    assert "unknown cipher TLS_RSA_WITH_RC4_128_SHA" in refused(
        tmp_path, tls_yaml(pki, cipher_suites="[TLS_RSA_WITH_RC4_128_SHA]"))
    assert "only TLS 1.3 suites" in refused(
        tmp_path, tls_yaml(pki, cipher_suites="[TLS_AES_128_GCM_SHA256]"))


def row_prefer_server_cipher_suites(pki: Pki, start: Start, tmp_path: Path) -> None:
    suites = "[TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]"
    # The client prefers AES128; the server's list puts AES256 first.
    ctx = client(pki, max_tls=ssl.TLSVersion.TLSv1_2,
                 ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    ex = start(tls_yaml(pki, cipher_suites=suites))  # default true
    assert negotiated(ex, ctx)[1] == "ECDHE-RSA-AES256-GCM-SHA384"
    ex = start(tls_yaml(pki, cipher_suites=suites, prefer_server_cipher_suites="false"))
    assert negotiated(ex, ctx)[1] == "ECDHE-RSA-AES128-GCM-SHA256"
    assert "prefer_server_cipher_suites" in refused(
        tmp_path, tls_yaml(pki, prefer_server_cipher_suites="sometimes"))


def row_curve_preferences(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start(tls_yaml(pki, curve_preferences="[CurveP384]"))
    for max_tls in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert fails(ex, client(pki, max_tls=max_tls, curve="prime256v1"))
        assert negotiated(ex, client(pki, max_tls=max_tls, curve="secp384r1"))
    text = refused(tmp_path, tls_yaml(pki, curve_preferences="[X25519, CurveP256]"))
    assert "curve_preferences: only one curve" in text
    assert "unknown curve CurveP224" in refused(
        tmp_path, tls_yaml(pki, curve_preferences="[CurveP224]"))


def row_http2(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start("http_server_config:\n  http2: false\n")
    assert ex.get("/-/healthy").status == 200
    text = refused(tmp_path, "http_server_config:\n  http2: true\n")
    assert "http_server_config.http2: HTTP/2 is not supported" in text


def row_headers(pki: Pki, start: Start, tmp_path: Path) -> None:
    values = {"Strict-Transport-Security": "max-age=31536000",
              "X-Content-Type-Options": "nosniff", "X-Frame-Options": "sameorigin",
              "X-XSS-Protection": "1; mode=block", "Content-Security-Policy": "default-src 'none'"}
    assert set(values) == set(EXTRA_HTTP_HEADERS)
    ex = start("http_server_config:\n  headers:\n"
               + "".join(f"    {k}: \"{v}\"\n" for k, v in values.items()))
    for path in ("/-/healthy", "/nope"):
        answer = ex.get(path)
        for k, v in values.items():
            assert answer.headers[k.lower()] == v, (path, k)
    for header in ("X-Powered-By", "Set-Cookie", "Access-Control-Allow-Origin", "Server"):
        text = refused(tmp_path, f"http_server_config:\n  headers:\n    {header}: x\n")
        assert f"http_server_config.headers.{header}: this header can not be configured" in text
    assert "X-Frame-Options: must be one of deny, sameorigin" in refused(
        tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: allow-from x\n")
    assert "X-Content-Type-Options: must be one of nosniff" in refused(
        tmp_path, "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n")


def row_basic_auth_users(pki: Pki, start: Start, tmp_path: Path) -> None:
    import base64

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    ex = start(f"basic_auth_users:\n  prom: '{hashed}'\n")
    good = {"Authorization": "Basic " + base64.b64encode(b"prom:pw").decode()}
    assert ex.get("/metrics").status == 401
    assert ex.get("/metrics", good).status == 200
    assert "basic_auth_users.prom: must be a bcrypt hash" in refused(
        tmp_path, "basic_auth_users:\n  prom: '$2b$10$tooshort'\n")


def row_rate_limit(pki: Pki, start: Start, tmp_path: Path) -> None:
    ex = start("rate_limit:\n  interval: 1h\n  burst: 2\n")
    assert [ex.get("/-/healthy").status for _ in range(3)] == [200, 200, 429]
    ex = start("rate_limit:\n  interval: 0\n  burst: 0\n")  # 0 disables it
    assert {ex.get("/-/healthy").status for _ in range(5)} == {200}
    assert "rate_limit.burst: must be at least 1" in refused(
        tmp_path, "rate_limit:\n  interval: 1s\n  burst: 0\n")
    assert "rate_limit.interval: must be a duration" in refused(
        tmp_path, "rate_limit:\n  interval: fast\n  burst: 1\n")


# Every key of exporter-toolkit docs/web-configuration.md -> the row that proves it.
ROWS: dict[str, Callable[[Pki, Start, Path], None]] = {
    "tls_server_config.cert": row_cert_key_inline,
    "tls_server_config.key": row_cert_key_inline,
    "tls_server_config.client_ca": row_client_ca_inline,
    "tls_server_config.cert_file": row_cert_file_key_file,
    "tls_server_config.key_file": row_cert_file_key_file,
    "tls_server_config.client_auth_type": row_client_ca_file_and_auth_type,
    "tls_server_config.client_ca_file": row_client_ca_file_and_auth_type,
    "tls_server_config.client_allowed_sans": row_client_allowed_sans,
    "tls_server_config.min_version": row_min_max_version,
    "tls_server_config.max_version": row_min_max_version,
    "tls_server_config.cipher_suites": row_cipher_suites,
    "tls_server_config.prefer_server_cipher_suites": row_prefer_server_cipher_suites,
    "tls_server_config.curve_preferences": row_curve_preferences,
    "http_server_config.http2": row_http2,
    "http_server_config.headers": row_headers,
    "basic_auth_users": row_basic_auth_users,
    "rate_limit.interval": row_rate_limit,
    "rate_limit.burst": row_rate_limit,
}


@pytest.mark.parametrize("key", sorted(ROWS))
def test_web_config_key(key: str, pki: Pki, start: Start, tmp_path: Path) -> None:
    ROWS[key](pki, start, tmp_path)


def test_readme_lists_every_key() -> None:
    """The README's table of web config keys names exactly the keys tested here."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Web config keys", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_0-9.]+)`", section, re.M))
    assert listed == set(ROWS)


def test_config_check_validates_the_web_config(tmp_path: Path, pki: Pki) -> None:
    """--config.check refuses what start-up refuses, naming the key."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("portals:\n  - name: a\n    url: https://a.example\n    api_key: sk-test\n")
    web = tmp_path / "web.yml"
    web.write_text(tls_yaml(pki, curve_preferences="[X25519, CurveP256]"))
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file",
                          str(cfg), "--web.config.file", str(web)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 1
    assert "tls_server_config.curve_preferences: only one curve" in run.stderr
    web.write_text(tls_yaml(pki, curve_preferences="[X25519]"))
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file",
                          str(cfg), "--web.config.file", str(web)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"{web}: OK" in run.stdout


WRONG_VALUES: list[object] = [None, True, 0, 7, -1, 1.5, "", "x", [], {}, [[1]], [{"a": 1}],
                              {"a": [1]}, ["TLS12"], "TLS12"]


@pytest.mark.parametrize("key", sorted(ROWS))
def test_any_value_of_any_key_is_a_config_error_never_a_crash(
        key: str, tmp_path: Path, pki: Pki) -> None:
    import yaml

    for value in WRONG_VALUES:
        section, _, leaf = key.partition(".")
        doc: dict[str, object] = {section: {leaf: value} if leaf else value}
        if section == "tls_server_config" and leaf not in ("cert_file", "key_file", "cert",
                                                           "key"):
            doc[section] = {"cert_file": str(pki.server_cert),
                            "key_file": str(pki.server_key), leaf: value}
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        try:
            load_web_config(str(path))
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) for p in exc.problems)


def test_a_key_written_twice_is_refused_not_overwritten(tmp_path: Path, pki: Pki) -> None:
    """PyYAML keeps the second of two equal keys without a word: a client_auth_type written
    twice, or a second basic_auth_users block, silently dropped the first security setting.
    Refused instead, naming the key and both lines (exporter-toolkit's strict YAML refuses
    them too)."""
    path = tmp_path / "web.yml"
    path.write_text(mtls_yaml(pki) + "  client_auth_type: NoClientCert\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert any("tls_server_config.client_auth_type: duplicate key (line 6; first on line 5)"
               in p for p in info.value.problems), info.value.problems
    hashed = "$2b$04$" + "a" * 53
    path.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n"
                    f"basic_auth_users:\n  bob: '{hashed}'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert any("basic_auth_users: duplicate key" in p for p in info.value.problems)


def test_a_web_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_bytes(b"basic_auth_users:\n  \xff\xfe: x\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_web_config(str(path))


def test_start_up_refuses_a_web_config_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("portals:\n  - name: a\n    url: https://a.example\n    api_key: sk-test\n")
    web = tmp_path / "web.yml"
    web.write_text(mtls_yaml(pki).replace("RequireAndVerifyClientCert", "RequireAnyClientCert"))
    run = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(cfg),
                          "--web.config.file", str(web), "--web.listen-address",
                          "127.0.0.1:0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 1
    assert "tls_server_config.client_auth_type: RequireAnyClientCert" in run.stderr + run.stdout


# --- the web config is re-read when its files change (as the toolkit re-reads it) -------------


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[[str], RunningExporter]]:
    """An exporter that watches its web config file (checked on every connection and
    request: interval 0)."""
    import threading

    from exporter.app import ExporterApp
    from exporter.server import ExporterHTTPServer

    started: list[RunningExporter] = []

    def make(text: str) -> RunningExporter:
        path = tmp_path / "live-web.yml"
        path.write_text(text, encoding="utf-8")
        app = ExporterApp(EMPTY)
        server = ExporterHTTPServer(("127.0.0.1", 0), app, load_web_config(str(path)),
                                    web_path=str(path), web_check_interval=0)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        ex = RunningExporter(app, server, thread)
        started.append(ex)
        return ex

    yield make
    for ex in started:
        ex.stop()


def rewrite(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a new inode: seen even within one mtime tick


def test_changed_headers_and_users_apply_without_restart(
        live: Callable[[str], RunningExporter], tmp_path: Path) -> None:
    import base64
    import http.client

    ex = live("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    conn = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=10)  # kept alive
    conn.request("GET", "/-/healthy")
    resp = conn.getresponse()
    resp.read()
    assert resp.getheader("X-Frame-Options") == "deny"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    rewrite(tmp_path / "live-web.yml", "http_server_config:\n  headers:\n"
            f"    X-Frame-Options: sameorigin\nbasic_auth_users:\n  prom: '{hashed}'\n")
    conn.request("GET", "/metrics")  # the same connection sees the new file
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 401 and resp.getheader("X-Frame-Options") == "sameorigin"
    conn.close()
    good = {"Authorization": "Basic " + base64.b64encode(b"prom:pw").decode()}
    assert ex.get("/metrics", good).status == 200


def test_an_invalid_rewrite_fails_every_request_until_fixed(
        live: Callable[[str], RunningExporter], tmp_path: Path) -> None:
    ex = live("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    assert ex.get("/-/healthy").status == 200
    rewrite(tmp_path / "live-web.yml", "http_server_config:\n  headers:\n    X-Evil: 1\n")
    answer = ex.get("/-/healthy")
    assert answer.status == 500 and "web config is invalid" in answer.text
    rewrite(tmp_path / "live-web.yml",
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    assert ex.get("/-/healthy").status == 200


def test_a_rotated_certificate_is_served_to_new_connections(
        live: Callable[[str], RunningExporter], pki: Pki, tmp_path: Path) -> None:
    import shutil
    import socket

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    ex = live(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")

    def served_cert() -> bytes:
        ctx = client(pki)
        with socket.create_connection(("127.0.0.1", ex.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return der

    first = served_cert()
    # cert-manager style rotation: a new key and certificate for the same names.
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "new.key",
                    "-out", "new.csr", "-subj", "/CN=server"], cwd=pki.dir, check=True,
                   capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", "new.csr", "-CA", "ca.crt", "-CAkey",
                    "ca.key", "-CAcreateserial", "-out", "new.crt", "-days", "2", "-extfile",
                    "ext.cnf", "-extensions", "server"], cwd=pki.dir, check=True,
                   capture_output=True)
    rewrite(key, (pki.dir / "new.key").read_text())
    rewrite(cert, (pki.dir / "new.crt").read_text())
    second = served_cert()
    assert second != first
    assert second == ssl.PEM_cert_to_DER_cert((pki.dir / "new.crt").read_text())
