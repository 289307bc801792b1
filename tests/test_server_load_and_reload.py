"""Load and faults: many concurrent scrapes, request sharing and per-host
limits, config reload under load (SIGHUP and /-/reload), login tokens that expire, get
revoked or fail, and SIGTERM in the middle of a scrape. Real sockets on 127.0.0.1; the
signal tests run the CLI as a subprocess.

(429 Retry-After within the deadline is in test_client_hostile_portals.py:
test_retry_after_then_success and test_retry_after_beyond_the_deadline_is_not_waited.)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from docspace_simulator import Simulator
from exporter.config import ApiKeyAuth, Config, PasswordAuth, PortalConfig, Secret
from tests.harness import (
    Answer,
    ExporterProcess,
    RunningExporter,
    assert_complete,
    errors,
    parse_samples,
    portal_entry,
    request,
    start_cli,
    value,
    wait_for,
    write_config,
)

# schedule, backup_progress, restore_progress (history off), and on the first fetch of the
# hour settings and tariff.
ENDPOINT_CALLS = 5


def key_portal(sim: Simulator, name: str, **kw: Any) -> PortalConfig:
    kw.setdefault("timeout", 10.0)
    return PortalConfig(name=name, url=sim.portal_url(name),
                        auth=ApiKeyAuth(Secret(sim.portal(name).api_key)), **kw)


def login_portal(sim: Simulator, name: str, password: str | None = None, **kw: Any
                 ) -> PortalConfig:
    sp = sim.portal(name)
    assert sp.username and sp.password
    kw.setdefault("timeout", 10.0)
    return PortalConfig(name=name, url=sim.portal_url(name),
                        auth=PasswordAuth(sp.username, Secret(password or sp.password)), **kw)


def ups(samples: dict[Any, float]) -> dict[str, float]:
    return {dict(labels)["portal"]: v for (name, labels), v in samples.items()
            if name == "docspace_up"}


# --- concurrency -------------------------------------------------------------------------------


def test_50_concurrent_scrapes_of_20_portals(simulator: Simulator,
                                             exporters: Callable[..., RunningExporter]) -> None:
    sim = simulator
    names = [f"p{i:02d}" for i in range(20)]
    for n in names:
        # Slow enough that the 50 scrapes overlap and must share the portals' answers.
        sim.add_portal(n, "healthy", latency=0.3)
    ex = exporters(Config(portals=tuple(key_portal(sim, n) for n in names)))

    peak = [0]
    stop = threading.Event()

    def watch_total_in_flight() -> None:
        # Sampled, so it can miss a peak but never invent one: an upper-bound check.
        while not stop.is_set():
            total = sum(p["in_flight"] for p in sim.stats()["portals"].values())
            peak[0] = max(peak[0], total)
            time.sleep(0.005)

    paths = ["/metrics" if i % 2 == 0 else f"/probe?target={names[i % 20]}" for i in range(50)]
    watcher = threading.Thread(target=watch_total_in_flight, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(lambda p: ex.get(p, timeout=60), paths))
    finally:
        stop.set()
        watcher.join()

    for path, answer in zip(paths, answers, strict=True):
        samples = assert_complete(answer)
        if path == "/metrics":
            # Consistent: every configured portal, each once, each up.
            assert ups(samples) == dict.fromkeys(names, 1.0), path
        else:
            target = path.split("=", 1)[1]
            assert ups(samples) == {target: 1.0}, path
    scrapes_per_portal = 25 + 25 // 20 + 1
    for n in names:
        # Singleflight: concurrent scrapes never put more than one fetch on a portal.
        assert sim.max_concurrency(n) <= ENDPOINT_CALLS, n
        assert sim.request_count(n, "schedule") < scrapes_per_portal / 3, n
    # One host (127.0.0.1) for all 20 portals: never more than max_requests_per_host (8).
    assert peak[0] <= 8, peak[0]
    assert ex.app.scraper.upstream_fetches < 50 * 20 / 5


def test_per_host_limit_bounds_calls_to_one_portal(simulator: Simulator,
                                                   exporters: Callable[..., RunningExporter]
                                                   ) -> None:
    simulator.add_portal("one", "healthy", latency=0.3)
    ex = exporters(Config(portals=(key_portal(simulator, "one", history=True),),
                          max_requests_per_host=2))
    samples = assert_complete(ex.get("/metrics"))
    assert ups(samples) == {"one": 1.0}
    # Four endpoints (plus settings and tariff, read once an hour), two slots for the host:
    # two at a time, never more.
    assert simulator.max_concurrency("one") == 2
    assert simulator.request_count("one") == 6


def test_same_portal_scraped_concurrently_is_fetched_once(
        simulator: Simulator, exporters: Callable[..., RunningExporter]) -> None:
    simulator.add_portal("one", "healthy", latency=0.5)
    ex = exporters(Config(portals=(key_portal(simulator, "one"),)))
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda p: ex.get(p), ["/metrics", "/probe?target=one"] * 5))
    for a in answers:
        assert ups(assert_complete(a)) == {"one": 1.0}
    assert simulator.max_concurrency("one") <= ENDPOINT_CALLS
    # Ten scrapes started within one 0.5 s fetch: one round of calls, perhaps two.
    assert simulator.request_count("one", "schedule") <= 2
    assert ex.app.scraper.upstream_fetches <= 2


# --- login tokens ------------------------------------------------------------------------------


class SimClock:
    """The simulator's clock, movable: token expiry without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clocked_sim() -> Any:
    clock = SimClock()
    sim = Simulator("127.0.0.1", 0, clock=clock)
    sim.clock_control = clock  # type: ignore[attr-defined]
    with sim:
        yield sim


def test_token_expiry_revocation_and_relogin(clocked_sim: Simulator,
                                             exporters: Callable[..., RunningExporter]
                                             ) -> None:
    sim = clocked_sim
    sim.add_portal("pw", "healthy", username="admin@example.com", password="s3cret-pw",
                   token_lifetime=3600)
    ex = exporters(Config(portals=(login_portal(sim, "pw"),)))

    def scrape() -> dict[Any, float]:
        samples = assert_complete(ex.get("/metrics"))
        assert ups(samples) == {"pw": 1.0}
        assert errors(samples, "pw") == {}
        return samples

    for _ in range(3):
        scrape()
    assert sim.request_count("pw", "login") == 1  # cached token reused

    # The token expires at the portal during the run: one 401 round, one login, data.
    sim.clock_control.offset += 7200  # type: ignore[attr-defined]
    scrape()
    assert sim.request_count("pw", "login") == 2
    scrape()
    assert sim.request_count("pw", "login") == 2

    # Revoked (log out everywhere): the three concurrent 401s cause a single login.
    sim.revoke_tokens("pw")
    scrape()
    assert sim.request_count("pw", "login") == 3
    scrape()
    assert sim.request_count("pw", "login") == 3


@pytest.mark.parametrize("lifetime,skew", [(20, 0.0), (3600, -7200.0)],
                         ids=["lifetime_below_renew_margin", "portal_clock_2h_behind"])
def test_token_renewal_does_not_hammer_the_login(
        lifetime: float, skew: float, clocked_sim: Simulator,
        exporters: Callable[..., RunningExporter]) -> None:
    """A token shorter-lived than the renew margin, or one whose `expires` is already past
    by our clock: reused across scrapes, never one login per endpoint call."""
    sim = clocked_sim
    sim.clock_control.offset = skew  # type: ignore[attr-defined]
    sim.add_portal("pw", "healthy", username="admin@example.com", password="s3cret-pw",
                   token_lifetime=lifetime)
    ex = exporters(Config(portals=(login_portal(sim, "pw"),)))
    for _ in range(4):
        samples = assert_complete(ex.get("/metrics"))
        assert ups(samples) == {"pw": 1.0}
        assert errors(samples, "pw") == {}
    assert sim.request_count("pw", "login") == 1


def test_failing_login_is_counted_and_backs_off(
        simulator: Simulator, exporters: Callable[..., RunningExporter]) -> None:
    sim = simulator
    sim.add_portal("pw", "healthy", username="admin@example.com", password="s3cret-pw")
    sim.add_portal("good", "healthy")
    ex = exporters(Config(portals=(login_portal(sim, "pw", password="wrong-password"),
                                   key_portal(sim, "good"))))
    scrapes = 12
    for i in range(scrapes):
        samples = assert_complete(ex.get("/metrics"))
        assert ups(samples) == {"pw": 0.0, "good": 1.0}
        # Every scrape counts its failed login once, as endpoint="login".
        assert errors(samples, "pw") == {("login", "unauthorized"): float(i + 1)}
    # Backing off: login attempts grow much slower than scrapes (the first backoff is 5 s,
    # longer than this whole test), and no API call is made without a token.
    assert sim.request_count("pw", "login") <= 2
    assert sim.request_count("pw", "schedule") == 0
    for header in sim.auth_headers("pw"):
        assert "wrong-password" not in header


# --- reload and SIGTERM through the CLI --------------------------------------------------------


class Scrapers:
    """Threads scraping /metrics and /probe in a loop, keeping every answer."""

    def __init__(self, port: int, probe_targets: list[str], n: int = 4) -> None:
        self.port = port
        self.targets = probe_targets
        self.stop = threading.Event()
        self.answers: list[tuple[str, Answer | BaseException]] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def _run(self, i: int) -> None:
        k = 0
        while not self.stop.is_set():
            path = "/metrics" if (i + k) % 2 else f"/probe?target={self.targets[k % 2]}"
            k += 1
            try:
                a: Answer | BaseException = request(self.port, path, timeout=30)
            except BaseException as exc:  # noqa: BLE001 - recorded and asserted on
                a = exc
            with self._lock:
                self.answers.append((path, a))

    def __enter__(self) -> Scrapers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_reload_under_load(simulator: Simulator, tmp_path: Path,
                           cli_processes: list[ExporterProcess]) -> None:
    sim = simulator
    for n in ("a", "b", "c", "d", "stable1", "stable2"):
        sim.add_portal(n, "healthy", latency=0.05)
    entry = {n: portal_entry(sim, sim.portal(n)) for n in ("a", "b", "c", "d", "stable1",
                                                            "stable2")}
    cfg = tmp_path / "config.yaml"

    def config_with(*names: str) -> None:
        write_config(cfg, [entry[n] for n in names])

    config_with("stable1", "stable2", "a")
    ex = start_cli(cfg, tmp_path / "exporter.log")
    cli_processes.append(ex)

    def current() -> dict[Any, float]:
        return parse_samples(ex.get("/metrics").text)

    def portals_now() -> set[str]:
        return set(ups(current()))

    sets = [{"stable1", "stable2", "a"}]
    with Scrapers(ex.port, ["stable1", "stable2"]) as load:
        time.sleep(0.3)
        # 1. SIGHUP with a new valid config.
        config_with("stable1", "stable2", "b", "c")
        sets.append({"stable1", "stable2", "b", "c"})
        ex.signal(signal.SIGHUP)
        assert wait_for(lambda: portals_now() == sets[-1])
        time.sleep(0.3)
        # 2. POST /-/reload with another valid config.
        config_with("stable1", "stable2", "d")
        sets.append({"stable1", "stable2", "d"})
        assert ex.get("/-/reload", method="POST").status == 200
        assert portals_now() == sets[-1]
        good = current()
        ts = value(good, "docspace_exporter_config_last_reload_success_timestamp_seconds")
        assert value(good, "docspace_exporter_config_last_reload_successful") == 1.0
        time.sleep(0.3)
        # 3. An invalid config, by /-/reload and by SIGHUP: rejected, nothing changes.
        cfg.write_text("portals:\n  - name: broken\n    url: ftp://nowhere\n"
                       "    api_key: not-a-key\n  - nonsense\n", encoding="utf-8")
        answer = ex.get("/-/reload", method="POST")
        assert answer.status == 500
        assert b"portals[0].url" in answer.body
        after = current()
        assert value(after, "docspace_exporter_config_last_reload_successful") == 0.0
        assert value(after, "docspace_exporter_config_last_reload_success_timestamp_seconds"
                     ) == ts
        assert set(ups(after)) == sets[-1]
        # The SIGHUP is handled (its failure is logged once more) before anything is checked.
        failures = ex.log().count("config reload failed")
        ex.signal(signal.SIGHUP)
        assert wait_for(lambda: ex.log().count("config reload failed") > failures), ex.log()
        after = current()
        assert value(after, "docspace_exporter_config_last_reload_successful") == 0.0
        assert ups(after) == dict.fromkeys(sets[-1], 1.0)
        # 4. Fixed again.
        config_with("stable1", "stable2", "a")
        sets.append({"stable1", "stable2", "a"})
        ex.signal(signal.SIGHUP)
        assert wait_for(lambda: value(
            current(), "docspace_exporter_config_last_reload_successful") == 1.0)
        assert portals_now() == sets[-1]
        time.sleep(0.3)

    # No failed scrape: every answer complete, and each /metrics one config's portal set.
    assert len(load.answers) > 20
    for path, a in load.answers:
        assert isinstance(a, Answer), (path, a)
        samples = assert_complete(a)
        got = ups(samples)
        if path == "/metrics":
            assert set(got) in sets, got
        else:
            assert len(got) == 1
        assert set(got.values()) == {1.0}, (path, got)
    assert ex.proc.poll() is None
    assert ex.stop() == 0


def test_sigterm_during_a_scrape(simulator: Simulator, tmp_path: Path,
                                 cli_processes: list[ExporterProcess]) -> None:
    sim = simulator
    sim.add_portal("slow", "slow", slow_seconds=2)
    sim.add_portal("fast", "healthy")
    cfg = write_config(tmp_path / "config.yaml",
                       [portal_entry(sim, sim.portal(n)) for n in ("slow", "fast")])
    ex = start_cli(cfg, tmp_path / "exporter.log")
    cli_processes.append(ex)

    # An idle keep-alive connection must not hold the shutdown up.
    import http.client
    idle = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=10)
    idle.request("GET", "/-/healthy")
    assert idle.getresponse().read() == b"Healthy\n"

    result: list[Answer | BaseException] = []

    def scrape() -> None:
        try:
            result.append(ex.get("/metrics", timeout=30))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            result.append(exc)

    t = threading.Thread(target=scrape)
    t.start()
    # SIGTERM once the slow portal is being asked, i.e. mid-scrape.
    assert wait_for(lambda: sim.stats()["portals"]["slow"]["in_flight"] > 0)
    ex.signal(signal.SIGTERM)
    t.join(timeout=30)
    idle.close()
    assert result and isinstance(result[0], Answer), result
    samples = assert_complete(result[0])
    assert ups(samples) == {"slow": 1.0, "fast": 1.0}
    assert ex.proc.wait(timeout=20) == 0
    assert "shutting down" in ex.log()
