"""HTTPS portals at scale (issue 11) and the per-origin request limit (issue 13 item 1).

Against the simulator over real TLS on loopback, with certificates made by the openssl CLI:
one SSLContext per verification setting, verification as strict as before (unknown CA,
wrong host name, expired certificate all fail as `tls`), connections opened ahead at start
and after a reload, and portals on other ports of one host not starving each other.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from docspace_simulator import Simulator, render_config
from exporter.client import DocSpaceClient, FetchError
from exporter.collector import Scraper
from exporter.config import DEFAULT_MAX_PER_HOST, ApiKeyAuth, PortalConfig, Secret
from exporter.transport import tls_context
from tests.deploy_helpers import binary
from tests.harness import portal_config, start_cli, wait_for


@dataclass
class CertSet:
    ca: Path              # the CA every good certificate chains to
    other_ca: Path        # a CA that signed nothing here
    good: tuple[Path, Path]       # 127.0.0.1 + localhost
    wrong_host: tuple[Path, Path]  # only wrong.example.com
    expired: tuple[Path, Path]    # 127.0.0.1, but its notAfter has passed


def _make_certs(d: Path) -> CertSet:
    openssl = binary("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}")
    (d / "ext.cnf").write_text(
        "[good]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "[wrong]\nsubjectAltName=DNS:wrong.example.com\nextendedKeyUsage=serverAuth\n")
    for stem, section, days in (("good", "good", "2"), ("wrong", "wrong", "2"),
                                ("expired", "good", "-1")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", "/CN=127.0.0.1")
        run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{stem}.crt", "-days", days, "-extfile", "ext.cnf",
            "-extensions", section)
    return CertSet(d / "ca.crt", d / "other-ca.crt", (d / "good.crt", d / "good.key"),
                     (d / "wrong.crt", d / "wrong.key"), (d / "expired.crt", d / "expired.key"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    return _make_certs(tmp_path_factory.mktemp("certs"))


def _server_ctx(pair: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    return ctx


def _tls_sim(pair: tuple[Path, Path], **kw: Any) -> Simulator:
    return Simulator("127.0.0.1", 0, ssl_context=_server_ctx(pair), **kw)


def _fetch(sim: Simulator, name: str, **kw: Any) -> Any:
    c = DocSpaceClient(portal_config(sim, sim.portal(name), **kw))
    try:
        return c.schedule(time.monotonic() + 5)
    finally:
        c.close()


# --- verification: exactly as strict as before -------------------------------------------------


def test_good_certificate_with_ca_file_is_reached(certs: CertSet) -> None:
    with _tls_sim(certs.good) as sim:
        sim.add_portal("p1")
        assert sim.portal_url("p1").startswith("https://127.0.0.1:")
        assert _fetch(sim, "p1", ca_file=str(certs.ca)) is not None
        assert sim.request_count("p1", "schedule") == 1


@pytest.mark.parametrize("case", ["unknown_ca", "default_bundle", "wrong_host", "expired"])
def test_certificate_failures_are_tls(case: str, certs: CertSet) -> None:
    pair = {"wrong_host": certs.wrong_host, "expired": certs.expired}.get(case, certs.good)
    kw: dict[str, Any] = {}
    if case == "unknown_ca":
        kw["ca_file"] = str(certs.other_ca)  # a CA that did not sign the server's certificate
    elif case != "default_bundle":  # default_bundle: no ca_file, the test CA is in no bundle
        kw["ca_file"] = str(certs.ca)
    with _tls_sim(pair) as sim:
        sim.add_portal("p1")
        for _ in range(2):  # the second call goes through the shared context too
            with pytest.raises(FetchError) as err:
                _fetch(sim, "p1", **kw)
            assert err.value.reason == "tls"
        assert sim.request_count() == 0  # no request (nor credential) crossed


def test_insecure_skip_verify_still_connects_to_anything(certs: CertSet) -> None:
    with _tls_sim(certs.wrong_host) as sim:
        sim.add_portal("p1")
        assert _fetch(sim, "p1", insecure_skip_verify=True) is not None


# --- one context per verification setting ------------------------------------------------------


def test_one_context_per_setting_and_the_ca_loaded_once(
        certs: CertSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pool with the same setting shares one SSLContext, and a scrape of 6 portals
    (18 new connections: 3 backup calls at once; the job that reads settings then tariff
    follows on one of them) loads the CA file once: urllib3 alone loads it per connection."""
    ca = tmp_path / "ca-copy.pem"  # a path no other test used: no cached context
    ca.write_bytes(certs.ca.read_bytes())
    loads: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kw: Any) -> None:
        loads.append(args or kw)
        real(self, *args, **kw)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    # 0.3 s per answer: the 18 backup calls overlap, so each needs a connection of its own.
    with _tls_sim(certs.good, port_per_portal=True, latency=0.3) as sim:
        sps = [sim.add_portal(f"p{i}") for i in range(6)]
        portals = [portal_config(sim, sp, ca_file=str(ca)) for sp in sps]
        scraper = Scraper(max_workers=32)
        try:
            data = scraper.scrape(portals, 5.0)
        finally:
            scraper.close()
        assert all(not d.failed and len(d.answered) == 5 for d in data), [d.failed for d in data]
        assert sim.connections_opened == 18
        assert len(loads) == 1, loads

    one = tls_context(portals[0])
    assert one is not None and one is tls_context(portals[5])
    assert one.verify_mode == ssl.CERT_REQUIRED and one.check_hostname
    default = tls_context(portal_config(sim, sps[0]))
    insecure = tls_context(portal_config(sim, sps[0], insecure_skip_verify=True))
    assert len({id(one), id(default), id(insecure)}) == 3
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE
    # A CA file replaced on disk (then a reload) is read again.
    ca.write_bytes(certs.other_ca.read_bytes() + b"\n")
    assert tls_context(portals[0]) is not one


def test_unloadable_ca_file_still_fails_as_tls(certs: CertSet, tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pem"
    bad.write_text("not a certificate\n")
    with _tls_sim(certs.good) as sim:
        sim.add_portal("p1")
        with pytest.raises(FetchError) as err:
            _fetch(sim, "p1", ca_file=str(bad))
        assert err.value.reason == "tls"


# --- the per-origin limit (issue 13 item 1) ----------------------------------------------------


def test_hanging_portals_on_one_port_do_not_starve_another_port() -> None:
    """Four hanging portals (16 calls at once) on one port used to hold every one of the host's 8
    slots until the deadline; the rate-limited portal on another port of the same host
    then waited for a slot and was reported as `timeout` instead of `rate_limited`."""
    with Simulator("127.0.0.1", 0) as hung, Simulator("127.0.0.1", 0) as other:
        bad = [hung.add_portal(f"h{i}", "hang", slow_seconds=30) for i in range(4)]
        limited = other.add_portal("limited", "rate_limited")
        healthy = other.add_portal("healthy")
        portals = [portal_config(hung, sp, timeout=2.0) for sp in bad]
        portals += [portal_config(other, limited, timeout=2.0),
                    portal_config(other, healthy, timeout=2.0)]
        scraper = Scraper(max_workers=64, max_requests_per_host=DEFAULT_MAX_PER_HOST)
        try:
            data = {d.name: d for d in scraper.scrape(portals, 3.0)}
        finally:
            scraper.close()
        assert set(data["limited"].failed.values()) == {"rate_limited"}, data["limited"]
        assert not data["healthy"].failed and len(data["healthy"].answered) == 5
        assert all(set(data[sp.name].failed.values()) == {"timeout"} for sp in bad)
        # The hanging origin itself was still held to the limit.
        assert hung.max_concurrency_on_port(hung.port) == DEFAULT_MAX_PER_HOST


def test_limit_counts_requests_per_origin() -> None:
    """Portals sharing an origin share its limit; portals on their own ports of the same
    host each get their own (counted at the simulator, per listening port)."""
    with Simulator("127.0.0.1", 0, latency=0.3) as one, \
            Simulator("127.0.0.1", 0, latency=1.0, port_per_portal=True) as many:
        shared = [portal_config(one, one.add_portal(f"s{i}")) for i in range(4)]
        own = [portal_config(many, many.add_portal(f"o{i}"), timeout=3.5)
               for i in range(4)]
        scraper = Scraper(max_workers=64, max_requests_per_host=4)
        try:
            # Each portal makes its 3 backup calls at once, then settings, then tariff: 3 s
            # of 1 s calls, within 3.5 s only if the four origins do not share one host's 4
            # slots (that would take 3 s for the 12 backup calls, then 2 s for the four
            # hourly jobs: 5 s, and time out).
            data = scraper.scrape(own, 3.5)
            assert all(not d.failed for d in data), [d.failed for d in data]
            data = scraper.scrape(shared, 5.0)
            assert all(not d.failed for d in data)
        finally:
            scraper.close()
        # 20 calls on one origin, 4 at a time.
        assert one.max_concurrency_on_port(one.port) == 4
        # Four origins of one host: the three concurrent calls of each portal at once.
        ports = {many.portal_port(sp.name) for sp in many.portals}
        assert len(ports) == 4 and many.port not in ports
        assert all(many.max_concurrency_on_port(p) == 3 for p in ports)


# --- connections opened ahead: at start-up and after a reload ----------------------------------


@pytest.fixture
def tls_sim(certs: CertSet) -> Iterator[Simulator]:
    with _tls_sim(certs.good, port_per_portal=True) as sim:
        yield sim


def _write_config(sim: Simulator, path: Path, ca: Path) -> None:
    text = render_config(sim, history=False)
    path.write_text(f"defaults:\n  ca_file: {ca}\n" + text, encoding="utf-8")


def test_connections_opened_at_start_and_after_reload(
        tls_sim: Simulator, certs: CertSet, tmp_path: Path,
        cli_processes: list[Any]) -> None:
    """Before any scrape, the exporter has opened (TLS handshake done) one connection per
    call of each portal; the first scrape then opens none. A portal added by a reload gets
    its connections without waiting for a scrape."""
    for i in range(5):
        tls_sim.add_portal(f"p{i}")
    cfg = tmp_path / "config.yaml"
    _write_config(tls_sim, cfg, certs.ca)
    ex = start_cli(cfg, tmp_path / "exporter.log")
    cli_processes.append(ex)
    # 3 per portal: the 3 backup calls (settings, then tariff, follow on one of them).
    assert wait_for(lambda: tls_sim.connections_opened >= 15, 20), tls_sim.connections_opened
    # The simulator counts a connection when it accepts it; the warm-up hands a portal's
    # connections to its pool only after their handshakes. A scrape sent in between would
    # open connections of its own, so wait for the exporter to say the warm-up is over.
    assert wait_for(lambda: "connections opened ahead" in ex.log(), 20), ex.log()
    assert tls_sim.request_count() == 0  # a connection, not a request
    answer = ex.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
    assert answer.status == 200
    assert answer.text.count("docspace_up{") == 5
    assert 'docspace_up{portal="p0"} 1.0' in answer.text
    assert tls_sim.connections_opened == 15  # the first scrape reused them all

    tls_sim.add_portal("new")
    _write_config(tls_sim, cfg, certs.ca)
    ex.signal(signal.SIGHUP)
    assert wait_for(lambda: tls_sim.connections_opened >= 18, 20), (
        tls_sim.connections_opened, ex.log())
    assert tls_sim.request_count() == 5 * 5


def test_warm_opens_no_more_than_the_pool_keeps(tls_sim: Simulator, certs: CertSet) -> None:
    sps = [tls_sim.add_portal(f"p{i}") for i in range(3)]
    portals = [portal_config(tls_sim, sp, ca_file=str(certs.ca)) for sp in sps]
    scraper = Scraper(max_workers=16)
    try:
        scraper.warm(portals).wait(10)
        assert tls_sim.connections_opened == 9
        scraper.warm(portals).wait(10)  # already open: nothing new
        assert tls_sim.connections_opened == 9
        data = scraper.scrape(portals, 5.0)
        assert all(not d.failed for d in data)
        assert tls_sim.connections_opened == 9
    finally:
        scraper.close()



def test_warm_up_waits_for_a_running_scrape_then_opens_what_is_missing(
        tls_sim: Simulator, certs: CertSet) -> None:
    """A warm-up that starts while a scrape runs waits for it (handshakes would only take
    CPU from it), then finds the connections that scrape opened and adds none."""
    tls_sim.latency = 1.0
    portal = portal_config(tls_sim, tls_sim.add_portal("p0"), ca_file=str(certs.ca))
    scraper = Scraper(max_workers=16)
    try:
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(scraper.scrape([portal], 5.0)))
        thread.start()
        # 3 backup calls, then settings (tariff follows it on the same job).
        assert wait_for(lambda: tls_sim.request_count() == 4, 5)
        warming = scraper.warm([portal])
        assert not warming.wait(0.5)  # the scrape still runs (1 s per call)
        assert warming.wait(5)
        assert tls_sim.connections_opened == 3
        thread.join(10)
        assert not result[0][0].failed
    finally:
        scraper.close()


def test_simulator_cli_serves_https_on_a_port_per_portal(certs: CertSet, tmp_path: Path
                                                         ) -> None:
    """`python -m docspace_simulator --port-per-portal --tls-cert/--tls-key` (what the
    benchmark runs): each portal's URL is HTTPS on a port of its own, and answers."""
    cfg = tmp_path / "sim.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "docspace_simulator", "--portals", "2", "--port-per-portal",
         "--tls-cert", str(certs.good[0]), "--tls-key", str(certs.good[1]),
         "--write-config", str(cfg)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        portals = yaml.safe_load(cfg.read_text())["portals"]
        urls = [p["url"] for p in portals]
        assert all(u.startswith("https://127.0.0.1:") for u in urls), urls
        assert len({u.rsplit(":", 1)[1].split("/")[0] for u in urls}) == 2
        c = DocSpaceClient(PortalConfig(name=portals[0]["name"], url=urls[0],
                                        auth=ApiKeyAuth(Secret(portals[0]["api_key"])),
                                        ca_file=str(certs.ca), timeout=5.0))
        try:
            assert c.schedule(time.monotonic() + 5) is not None
        finally:
            c.close()
    finally:
        proc.terminate()
        proc.wait(10)
