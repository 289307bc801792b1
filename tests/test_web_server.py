"""The exporter's own HTTP server: basic auth without a user-name oracle and with bounded
bcrypt (issue 8 items 2-3), serialised reloads (item 4), one write per answer with
TCP_NODELAY (issue 13 item 2), and HTTP edge cases (issue 13 item 10)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from docspace_simulator import Simulator
from exporter import __version__
from exporter.app import ExporterApp
from exporter.auth import BasicAuth
from exporter.config import ApiKeyAuth, Config, ConfigError, PortalConfig, Secret
from exporter.server import ExporterHTTPServer
from exporter.webconfig import WebConfig
from tests.harness import (
    ExporterProcess,
    RunningExporter,
    raw_exchange,
    start_cli,
    wait_for,
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class CountingCheckpw:
    """Stands in for bcrypt.checkpw: records calls and the most at once; `delay` keeps a
    call busy so overlapping calls would show."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[bytes] = []  # the hash each call checked against
        self.running = 0
        self.most = 0
        self.delay = delay
        self._lock = threading.Lock()
        self._real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.calls.append(hashed)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
            return bool(self._real(password, hashed))
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def checkpw(monkeypatch: pytest.MonkeyPatch) -> CountingCheckpw:
    counter = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", counter)
    return counter


def cost_of(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


# --- item 2: no user-name oracle ---------------------------------------------------------------


def test_unknown_user_costs_a_bcrypt_of_the_same_cost(checkpw: CountingCheckpw) -> None:
    users = {u: bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=5)) for u in ("prom", "grafana")}
    auth = BasicAuth(users)
    assert not auth.check(basic("prom", "wrong"))
    assert not auth.check(basic("nobody", "wrong"))
    assert not auth.check(basic("", "wrong"))
    # One bcrypt each, the unknown users against a hash that is not a user's, same cost.
    assert len(checkpw.calls) == 3
    assert checkpw.calls[0] == users["prom"]
    for dummy in checkpw.calls[1:]:
        assert dummy not in users.values()
        assert cost_of(dummy) == 5
    # The right password of one user does not open another's name.
    assert not auth.check(basic("grafana", "wrongtoo"))
    assert auth.check(basic("prom", "right"))


def test_dummy_cost_follows_the_most_common_user_cost() -> None:
    users = {"a": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)),
             "b": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=6)),
             "c": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=6))}
    assert cost_of(BasicAuth(users)._dummy) == 6


# --- item 3: bcrypt serialised and cached ------------------------------------------------------


def test_bcrypt_runs_one_at_a_time(checkpw: CountingCheckpw) -> None:
    checkpw.delay = 0.02
    auth = BasicAuth({"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))})
    threads = [threading.Thread(target=auth.check, args=(basic(u, f"wrong{i}"),))
               for i in range(20) for u in ("prom", "nobody")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checkpw.calls) == 40
    assert checkpw.most == 1


def test_results_are_cached_and_a_flood_cannot_evict_a_success(
        checkpw: CountingCheckpw) -> None:
    now = [1000.0]
    auth = BasicAuth({"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))},
                     timer=lambda: now[0])
    assert auth.check(basic("prom", "right"))
    for _ in range(5):
        assert auth.check(basic("prom", "right"))
        assert not auth.check(basic("prom", "wrong"))
        assert not auth.check(basic("nobody", "wrong"))
    assert len(checkpw.calls) == 3  # one per distinct (user, password)
    # Many distinct wrong passwords: each costs a bcrypt, none evicts the good entry.
    for i in range(BasicAuth.MAX_FAILURES + 200):
        auth._store(f"flood{i}".encode(), False)
    calls = len(checkpw.calls)
    assert auth.check(basic("prom", "right"))
    assert len(checkpw.calls) == calls
    # Failures expire after FAILURE_TTL; a success lives on while it is used.
    now[0] += BasicAuth.FAILURE_TTL + 1
    assert not auth.check(basic("prom", "wrong"))
    assert auth.check(basic("prom", "right"))
    assert len(checkpw.calls) == calls + 1
    now[0] += BasicAuth.SUCCESS_TTL + 1  # unused for longer than the TTL: checked again
    assert auth.check(basic("prom", "right"))
    assert len(checkpw.calls) == calls + 2


def test_concurrent_same_credentials_share_one_bcrypt(checkpw: CountingCheckpw) -> None:
    checkpw.delay = 0.05
    auth = BasicAuth({"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))})
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(auth.check(basic("prom", "x"))))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [False] * 20
    assert len(checkpw.calls) == 1


def test_the_cache_holds_no_password() -> None:
    auth = BasicAuth({"prom": bcrypt.hashpw(b"right-pass", bcrypt.gensalt(rounds=4))})
    assert auth.check(basic("prom", "right-pass"))
    assert not auth.check(basic("prom", "wrong-pass"))
    keys = [*auth._ok, *auth._failed]
    assert len(keys) == 2
    for k in keys:
        assert b"right-pass" not in k and b"wrong-pass" not in k and b"prom" not in k
    assert "pass" not in repr(auth)


# --- item 4: reloads serialised, last request wins ---------------------------------------------


def portal(name: str) -> PortalConfig:
    return PortalConfig(name=name, url=f"https://{name}.example", auth=ApiKeyAuth(Secret("k")),
                        timeout=1.0)


class SlowLoader:
    """Reads the 'config file' (a portal name) at once, then takes `delay(name)` seconds
    before returning it: a reload that started earlier can finish later."""

    def __init__(self, path: Path, delay: Callable[[str], float]) -> None:
        self.path = path
        self.delay = delay
        self.running = 0
        self.most = 0
        self.reads: list[str] = []
        self._lock = threading.Lock()

    def __call__(self) -> Config:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            name = self.path.read_text()
            self.reads.append(name)
            time.sleep(self.delay(name))
            return Config(portals=(portal(name),))
        finally:
            with self._lock:
                self.running -= 1


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def served(app: ExporterApp) -> str:
    cfg = app.config
    assert cfg is not None
    return cfg.portals[0].name


def test_an_older_slow_reload_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "cfg"
    write_atomic(path, "old")
    loader = SlowLoader(path, lambda name: 0.5 if name == "old" else 0.0)
    app = ExporterApp(Config(portals=(portal("start"),)), loader=loader)
    try:
        first = threading.Thread(target=app.reload)
        first.start()  # reads "old", then takes 0.5 s
        assert wait_for(lambda: loader.reads == ["old"], 5)
        write_atomic(path, "new")
        assert app.reload() == []  # the newer request
        first.join()
        assert served(app) == "new"
        assert loader.most == 1
    finally:
        app.scraper.close()


def test_many_reloads_of_alternating_files_serve_the_last(tmp_path: Path) -> None:
    """HTTP POSTs and signal-style requests from many threads while the file alternates;
    once the last request after the last write is answered, that file is served."""
    path = tmp_path / "cfg"
    write_atomic(path, "v0")
    loader = SlowLoader(path, lambda name: 0.03 if int(name[1:]) % 2 else 0.0)
    app = ExporterApp(Config(portals=(portal("start"),)), loader=loader)
    server = ExporterHTTPServer(("127.0.0.1", 0), app, WebConfig())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    port = int(server.server_address[1])
    try:
        workers: list[threading.Thread] = []
        for i in range(1, 41):
            write_atomic(path, f"v{i}")
            if i % 2:
                t = threading.Thread(target=raw_exchange, args=(
                    port, b"POST /-/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Content-Length: 0\r\n\r\n"))
            else:
                t = threading.Thread(target=app.request_reload)
            t.start()
            workers.append(t)
        last = app.request_reload()  # after the last write
        for t in workers:
            t.join()
        assert app.wait_reload(last, timeout=30) == []
        assert served(app) == "v40"
        assert loader.most == 1, "two loaders ran at once"
    finally:
        server.graceful_shutdown()
        thread.join(timeout=30)
        server.server_close()
        app.scraper.close()


def test_reload_answers_the_problems_of_its_own_reload(tmp_path: Path) -> None:
    path = tmp_path / "cfg"
    write_atomic(path, "good")

    def loader() -> Config:
        if path.read_text() == "bad":
            raise ConfigError(["portals[0].url: broken"])
        return Config(portals=(portal("good"),))

    app = ExporterApp(Config(portals=(portal("start"),)), loader=loader)
    try:
        write_atomic(path, "bad")
        assert app.reload() == ["portals[0].url: broken"]
        assert served(app) == "start"
        write_atomic(path, "good")
        assert app.reload() == []
        assert served(app) == "good"
    finally:
        app.scraper.close()


def test_sighup_storm_and_posts_through_the_cli_serve_the_last_file(
        simulator: Simulator, tmp_path: Path,
        cli_processes: list[ExporterProcess]) -> None:
    names = [f"p{i}" for i in range(6)]
    for n in names:
        simulator.add_portal(n, "healthy")
    cfg = tmp_path / "config.yaml"

    def write(n: str) -> None:
        write_atomic(cfg, f"portals:\n  - name: {n}\n    url: {simulator.portal_url(n)}\n"
                          f"    api_key: {simulator.portal(n).api_key}\n")

    write(names[0])
    ex = start_cli(cfg, tmp_path / "exporter.log")
    cli_processes.append(ex)
    for i in range(30):
        write(names[i % len(names)])
        if i % 3:
            ex.signal(signal.SIGHUP)
        else:
            assert ex.get("/-/reload", method="POST").status == 200
    write("p5")
    answer = ex.get("/-/reload", method="POST")  # waits for its own reload
    assert answer.status == 200, answer.text
    assert ex.get("/probe?target=p5").status == 200
    assert ex.proc.poll() is None


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator("127.0.0.1", 0)
    sim.start()
    yield sim
    sim.stop()


# --- issue 13 item 2: one write per answer, TCP_NODELAY ----------------------------------------


class CountingSocket:
    """Wraps an accepted socket; counts the writes the handler makes."""

    def __init__(self, sock: socket.socket, log: list[tuple[int, int]]) -> None:
        self._sock = sock
        self._log = log

    def sendall(self, data: Any, *args: Any) -> None:
        self._log.append((id(self), len(data)))
        self._sock.sendall(data, *args)

    def send(self, data: Any, *args: Any) -> int:
        self._log.append((id(self), len(data)))
        return self._sock.send(data, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class CountingServer(ExporterHTTPServer):
    def __init__(self, *a: Any, **kw: Any) -> None:
        self.writes: list[tuple[int, int]] = []
        self.accepted: list[socket.socket] = []
        super().__init__(*a, **kw)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        self.accepted.append(sock)
        return CountingSocket(sock, self.writes), addr


@pytest.fixture
def counting(simulator: Simulator) -> Iterator[CountingServer]:
    sp = simulator.add_portal("main", "healthy")
    cfg = Config(portals=(PortalConfig(name="main", url=simulator.portal_url("main"),
                                       auth=ApiKeyAuth(Secret(sp.api_key)), timeout=5.0),))
    app = ExporterApp(cfg)
    server = CountingServer(("127.0.0.1", 0), app, WebConfig())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.graceful_shutdown()
    thread.join(timeout=30)
    server.server_close()
    app.scraper.close()


def test_each_answer_is_one_write_on_a_kept_alive_connection(counting: CountingServer) -> None:
    import http.client

    port = int(counting.server_address[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    paths = ["/-/healthy", "/probe?target=main", "/metrics", "/nope", "/probe?target=x", "/"]
    try:
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert not resp.will_close
        conn.request("HEAD", "/metrics")
        conn.getresponse().read()
    finally:
        conn.close()
    assert len(counting.accepted) == 1, "the connection was not kept alive"
    assert len(counting.writes) == len(paths) + 1, counting.writes


def test_accepted_sockets_have_tcp_nodelay(counting: CountingServer) -> None:
    import http.client

    port = int(counting.server_address[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/-/healthy")
        conn.getresponse().read()
        sock = counting.accepted[0]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()


# --- issue 13 item 10: HTTP edge cases ---------------------------------------------------------


@pytest.fixture
def plain(exporters: Callable[..., RunningExporter]) -> RunningExporter:
    return exporters(Config(portals=()))


@pytest.mark.parametrize("line", [b"GET /metrics", b"GET /-/healthy", b"GET /"])
def test_request_line_without_version_is_400(plain: RunningExporter, line: bytes) -> None:
    reply = raw_exchange(plain.port, line + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:80]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: text/plain" in head.lower()
    assert b"no HTTP version" in body


def test_garbage_request_line_gets_a_status_line(plain: RunningExporter) -> None:
    reply = raw_exchange(plain.port, b"GARBAGE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:80]


def test_huge_path_is_plain_text(plain: RunningExporter) -> None:
    reply = raw_exchange(plain.port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ")
    assert b"content-type: text/plain; charset=utf-8" in head.lower()
    assert b"<" not in body and body.endswith(b"\n")
    assert int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)


def test_unknown_method_is_plain_text(plain: RunningExporter) -> None:
    reply = raw_exchange(plain.port, b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501 ")
    assert b"content-type: text/plain" in head.lower() and b"<" not in body


def test_server_header_has_no_trailing_space(plain: RunningExporter) -> None:
    reply = raw_exchange(plain.port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n"
                                     b"Connection: close\r\n\r\n")
    server_lines = [ln for ln in reply.split(b"\r\n") if ln.lower().startswith(b"server:")]
    assert server_lines == [f"Server: docspace-backup-exporter/{__version__}".encode()]


def test_route_table_answers_404_405_and_allow(plain: RunningExporter) -> None:
    assert plain.get("/nope").status == 404
    for method, path, allow in (("POST", "/metrics", "GET, HEAD"), ("DELETE", "/-/healthy",
                                "GET, HEAD"), ("GET", "/-/reload", "POST"),
                                ("PUT", "/-/reload", "POST")):
        answer = plain.get(path, method=method)
        assert answer.status == 405, (method, path)
        assert answer.headers["allow"] == allow


def test_a_failure_answers_no_sooner_than_a_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached failure waits (sleeps) for the rest of one bcrypt's time: a repeated wrong
    password is not told apart from a new one, and costs a sleep, not CPU."""
    import exporter.auth as webconfig

    auth = BasicAuth({"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))})
    auth._bcrypt_seconds = 5.0
    sleeps: list[float] = []
    monkeypatch.setattr(webconfig.time, "sleep", sleeps.append)
    assert not auth.check(basic("prom", "wrong"))  # bcrypt, then the rest of 5 s
    assert not auth.check(basic("prom", "wrong"))  # cached: the whole 5 s
    assert not auth.check(basic("nobody", "wrong"))
    assert len(sleeps) == 3 and all(4.0 < s <= 5.0 for s in sleeps), sleeps
    assert auth.check(basic("prom", "right"))
    assert auth.check(basic("prom", "right"))
    assert len(sleeps) == 3  # successes never wait
