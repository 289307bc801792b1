#!/usr/bin/env python3
"""Scrape-time benchmark of docspace-backup-exporter against the DocSpace simulator.

One command, from the repository root:

    python benchmarks/run.py                 # N = 1, 10, 100, 1000 (about 4 minutes)
    python benchmarks/run.py --capacity      # also: most portals one exporter serves in 10 s
    python benchmarks/run.py --quick         # N = 1, 10, 100, naive only to 10 (1-2 minutes)

For every N it starts, each in its own process:
  * the simulator (`python -m docspace_simulator`) serving N portals, 200 ms per request;
  * the exporter (`python -m exporter`) with that config, scraped on /metrics;
  * the same exporter with `max_concurrency: 1` (the naive sequential exporter), N <= 100;
  * Debian's prometheus-blackbox-exporter, N concurrent /probe requests, one HTTP GET of
    the portal's getbackupschedule each (a Go prober doing strictly less work).

It prints a table and writes benchmarks/results/<timestamp>.json (gitignored). Numbers are
never asserted: the machine is shared and noisy; the JSON keeps every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LATENCY = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# What Prometheus 2.x sends; the exporter answers OpenMetrics, gzip-compressed.
PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
               "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
SCRAPE_TIMEOUT = 10.0
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
CALLS_PER_PORTAL = 3  # schedule, backup_progress, restore_progress (history: false)
EXTRA_CONFIG: list[str] = []  # --set KEY=VALUE: more top-level config keys
EXPORTER_ENV: dict[str, str] = {}  # --env NAME=VALUE for the exporter process
EXPORTER_SRC: list[Path] = []  # --exporter-src DIR: run the exporter package found in DIR
FIRST_AFTER_WARMUP: list[bool] = []  # --first-after-warmup: wait for the start-up warm-up
# --interval: seconds between two scrapes of the exporter, as Prometheus's scrape interval
# (the exporter opens missing connections in the background between scrapes)
INTERVAL: list[float] = [0.3]
# A realistic CA bundle: the system's (~150 CAs) plus the test CA that signed the
# simulator's certificate, as `ca_file` of every portal.
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TLS: dict[str, Path] = {}  # cert, key, bundle: made once per run by make_tls()


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_seconds(pid: int) -> float:
    """CPU time of the live threads of a process, in ns precision (/proc/PID/task/*/schedstat).

    A cross-check of the 10 ms ticks of /proc/PID/stat: exact, but it loses threads that
    exit, so the exporter is scraped over one kept-alive connection (its handler thread
    lives on) and its worker threads persist."""
    total = 0
    for entry in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((entry / "schedstat").read_text().split()[0])
    return total / 1e9


def mem_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                val = rest.split()[0]
                out[key] = int(val) / 1024 if key != "Threads" else int(val)
    return out


def system_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        parts = fh.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]
    return (sum(vals[:8]) - idle) / CLK_TCK


class Proc:
    """A child process in its own process group, killed for sure on exit."""

    def __init__(self, args: list[str], *, name: str, env: dict[str, str] | None = None,
                 stdout: Any = subprocess.PIPE, cwd: Path = ROOT) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(
            args, cwd=cwd, stdout=stdout, stderr=self.log, text=True,
            env=env or dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=10)
        if self.p.stdout:
            self.p.stdout.close()

    def stderr_tail(self, n: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]


def read_line(proc: Proc, prefix: str, timeout: float) -> str:
    """The first stdout line starting with prefix, within timeout seconds."""
    assert proc.p.stdout is not None
    box: list[str] = []

    def reader() -> None:
        assert proc.p.stdout is not None
        for line in proc.p.stdout:
            if line.startswith(prefix):
                box.append(line.strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise RuntimeError(f"{proc.name} did not print {prefix!r} in {timeout}s: "
                           f"{proc.stderr_tail()}")
    return box[0]


def wait_http(port: int, path: str, timeout: float, proc: Proc) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.stderr_tail()}")
        try:
            status, _, _ = http_get(port, path, timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready on :{port}{path} in {timeout}s")


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = 60.0, conn: http.client.HTTPConnection | None = None
             ) -> tuple[int, bytes, float]:
    """GET on 127.0.0.1:port -> (status, decoded body, seconds to the last byte). With
    `conn`, over that kept-alive connection."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return resp.status, body, elapsed
    except BaseException:
        conn.close()
        raise
    finally:
        if own:
            conn.close()


def make_tls(workdir: Path) -> None:
    """A test CA and a server certificate for 127.0.0.1 (openssl CLI), and the CA bundle the
    exporter verifies with: the system bundle plus that CA."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir,
                       timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=benchmark CA")
    (workdir / "ext.cnf").write_text("[s]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                     "extendedKeyUsage=serverAuth\n")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
        "-extensions", "s")
    bundle = workdir / "bundle.pem"
    system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
    bundle.write_bytes(system + b"\n" + (workdir / "ca.crt").read_bytes())
    TLS.update(cert=workdir / "server.crt", key=workdir / "server.key", bundle=bundle)


def bundle_cas(path: Path) -> int:
    return path.read_bytes().count(b"-----BEGIN CERTIFICATE-----")


def start_simulator(n: int, workdir: Path, scheme: str = "http") -> tuple[Proc, int, Path]:
    """N portals, each on a port of its own (one host: distinct origins, as distinct
    installations), over HTTPS or HTTP; /_sim/ stays plain HTTP on the main port."""
    cfg = workdir / f"sim-{n}-{scheme}.yaml"
    tls = ["--tls-cert", str(TLS["cert"]), "--tls-key", str(TLS["key"])] if (
        scheme == "https") else []
    proc = Proc([sys.executable, "-m", "docspace_simulator", "--listen", "127.0.0.1:0",
                 "--portals", str(n), "--scenario", "healthy", "--latency", str(LATENCY),
                 "--no-history", "--port-per-portal", *tls, "--write-config", str(cfg)],
                name="simulator")
    line = read_line(proc, "listening on", 60)
    port = int(line.rsplit(":", 1)[1])
    return proc, port, cfg


def sim_stats(port: int) -> dict[str, Any]:
    status, body, _ = http_get(port, "/_sim/stats")
    if status != 200:
        raise RuntimeError(f"simulator stats: HTTP {status}")
    return json.loads(body)


def exporter_config(sim_cfg: Path, out: Path, *, max_concurrency: int | None,
                    timeout: str | None = None, scheme: str = "http") -> Path:
    """The simulator's config plus the top-level keys of this benchmark: the default
    config (each portal on its own port, so no limit needs lifting), with `ca_file` = the
    realistic bundle over HTTPS."""
    text = sim_cfg.read_text(encoding="utf-8")
    extra = list(EXTRA_CONFIG)
    if max_concurrency is not None:
        extra.append(f"max_concurrency: {max_concurrency}")
    defaults = []
    if timeout is not None:
        defaults.append(f"  timeout: {timeout}")
    if scheme == "https":
        defaults.append(f"  ca_file: {TLS['bundle']}")
    if defaults:
        extra.append("defaults:\n" + "\n".join(defaults))
    out.write_text("\n".join(extra) + "\n" + text, encoding="utf-8")
    return out


def start_exporter(config: Path) -> tuple[Proc, int]:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **EXPORTER_ENV)
    if EXPORTER_SRC:  # e.g. `git archive <rev> exporter | tar -x -C DIR`, for before/after
        env["PYTHONPATH"] = str(EXPORTER_SRC[0])
    proc = Proc([sys.executable, "-m", "exporter", "--config.file", str(config),
                 "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"],
                name="exporter", stdout=subprocess.DEVNULL, env=env,
                cwd=EXPORTER_SRC[0] if EXPORTER_SRC else ROOT)
    wait_http(port, "/-/ready", 60, proc)
    return proc, port


# -- measurements ---------------------------------------------------------------------------


@dataclass
class Scrape:
    seconds: float
    cpu: float              # CPU seconds of the measured process during the scrape
    cpu_exact: float        # the same from schedstat (live threads, ns precision)
    sim_cpu: float          # CPU seconds of the simulator during the scrape
    other_cpu: float        # CPU seconds of everything else on the machine (noise)
    requests: int           # upstream requests the simulator saw
    connections: int        # TCP connections the simulator accepted
    up: int                 # portals reported up (docspace_up 1 / probe_success 1)
    exact: bool             # every portal got exactly one call per endpoint
    extra: dict[str, Any] = field(default_factory=dict)


def _diff_exact(before: dict[str, Any], after: dict[str, Any], endpoints: tuple[str, ...]) -> bool:
    for name, p in after["portals"].items():
        old = before["portals"].get(name, {"requests": {}})["requests"]
        for ep in ("schedule", "backup_progress", "restore_progress", "history", "login"):
            want = 1 if ep in endpoints else 0
            if p["requests"].get(ep, 0) - old.get(ep, 0) != want:
                return False
    return True


UP_RE = re.compile(rb"^docspace_up\{portal=\"[^\"]+\"\} 1(\.0)?$", re.M)


def scrape_exporter(port: int, pid: int, sim_port: int, sim_pid: int, n: int, *,
                    scrape_timeout: float | None = SCRAPE_TIMEOUT,
                    conn: http.client.HTTPConnection | None = None) -> Scrape:
    """One /metrics scrape as Prometheus makes it (Accept, gzip, scrape-timeout header)."""
    headers = {"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"}
    if scrape_timeout is not None:
        headers["X-Prometheus-Scrape-Timeout-Seconds"] = str(scrape_timeout)
    before = sim_stats(sim_port)
    x0 = sched_seconds(pid)
    c0, s0, b0, me0 = cpu_seconds(pid), cpu_seconds(sim_pid), system_busy(), _self_cpu()
    status, body, secs = http_get(port, "/metrics", headers, timeout=SCRAPE_TIMEOUT + 3600,
                                  conn=conn)
    c1, s1, b1, me1 = cpu_seconds(pid), cpu_seconds(sim_pid), system_busy(), _self_cpu()
    x1 = sched_seconds(pid)
    after = sim_stats(sim_port)
    if status != 200:
        raise RuntimeError(f"/metrics: HTTP {status}")
    return Scrape(
        seconds=secs, cpu=c1 - c0, cpu_exact=x1 - x0, sim_cpu=s1 - s0,
        other_cpu=max(0.0, (b1 - b0) - (c1 - c0) - (s1 - s0) - (me1 - me0)),
        requests=after["requests"] - before["requests"],
        # minus 1: the connection of the second /_sim/stats request itself
        connections=after["connections_opened"] - before["connections_opened"] - 1,
        up=len(UP_RE.findall(body)),
        exact=_diff_exact(before, after, ("schedule", "backup_progress", "restore_progress")),
        extra={"bytes": len(body)},
    )


def wait_warmup(sim_port: int, n: int, limit: float = 60.0) -> float:
    """Seconds until the exporter has opened its connections ahead of the first scrape
    (3 per portal, counted by the simulator), or until their number stops growing."""
    t0 = time.monotonic()
    last, since = -1, t0
    base = sim_stats(sim_port)["connections_opened"]
    polls = 0
    while time.monotonic() - t0 < limit:
        polls += 1  # each /_sim/stats request is a connection of its own
        opened = sim_stats(sim_port)["connections_opened"] - base - polls
        if opened >= CALLS_PER_PORTAL * n:
            break
        if opened != last:
            last, since = opened, time.monotonic()
        elif time.monotonic() - since > 2.0:
            break
        time.sleep(0.1)
    return time.monotonic() - t0


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _probe_all(port: int, paths: list[str], timeout: float) -> list[bytes]:
    async def one(path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     f"X-Prometheus-Scrape-Timeout-Seconds: {SCRAPE_TIMEOUT}\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    return await asyncio.wait_for(asyncio.gather(*(one(p) for p in paths)), timeout)


def scrape_blackbox(port: int, pid: int, sim_port: int, sim_pid: int,
                    targets: list[tuple[str, str]]) -> Scrape:
    """N concurrent /probe requests, as N Prometheus targets scraped at the same moment."""
    paths = [f"/probe?module={quote(m)}&target={quote(t, safe='')}" for m, t in targets]
    before = sim_stats(sim_port)
    c0, s0, b0, me0 = cpu_seconds(pid), cpu_seconds(sim_pid), system_busy(), _self_cpu()
    x0 = sched_seconds(pid)
    t0 = time.perf_counter()
    bodies = asyncio.run(_probe_all(port, paths, SCRAPE_TIMEOUT + 60))
    secs = time.perf_counter() - t0
    c1, s1, b1, me1 = cpu_seconds(pid), cpu_seconds(sim_pid), system_busy(), _self_cpu()
    x1 = sched_seconds(pid)
    after = sim_stats(sim_port)
    return Scrape(
        seconds=secs, cpu=c1 - c0, cpu_exact=x1 - x0, sim_cpu=s1 - s0,
        other_cpu=max(0.0, (b1 - b0) - (c1 - c0) - (s1 - s0) - (me1 - me0)),
        requests=after["requests"] - before["requests"],
        # minus 1: the connection of the second /_sim/stats request itself
        connections=after["connections_opened"] - before["connections_opened"] - 1,
        up=sum(1 for b in bodies if b"\nprobe_success 1" in b),
        exact=_diff_exact(before, after, ("schedule",)),
    )


def blackbox_config(sim_cfg_path: Path, out: Path) -> list[tuple[str, str]]:
    """One module per portal (each portal has its own API key) -> [(module, target URL)]."""
    import yaml

    cfg = yaml.safe_load(sim_cfg_path.read_text(encoding="utf-8"))
    modules: dict[str, Any] = {}
    targets = []
    for p in cfg["portals"]:
        modules[p["name"]] = {
            "prober": "http", "timeout": f"{int(SCRAPE_TIMEOUT)}s",
            "http": {"method": "GET", "valid_status_codes": [200],
                     "preferred_ip_protocol": "ip4", "ip_protocol_fallback": False,
                     "headers": {"Authorization": f"Bearer {p['api_key']}",
                                 "Accept": "application/json"}}}
        targets.append((p["name"], p["url"] + "/api/2.0/backup/getbackupschedule"))
    out.write_text(yaml.safe_dump({"modules": modules}), encoding="utf-8")
    return targets


def start_blackbox(config: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc([BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=error"], name="blackbox", stdout=subprocess.DEVNULL)
    wait_http(port, "/-/healthy", 30, proc)
    return proc, port


# -- one N ----------------------------------------------------------------------------------


def summarize(kind: str, n: int, scrapes: list[Scrape], mem: dict[str, float],
              idle_mem: dict[str, float], calls_per_portal: int) -> dict[str, Any]:
    cold, warm = scrapes[0], scrapes[1:] or scrapes[:1]
    med = statistics.median(s.seconds for s in warm)
    cpu_total = sum(s.cpu for s in warm)
    return {
        "kind": kind, "n": n, "runs": len(warm),
        "seconds_median": med,
        "seconds_all": [round(s.seconds, 4) for s in scrapes],
        "seconds_cold": cold.seconds,
        "seconds_max": max(s.seconds for s in scrapes),
        "up_cold": cold.up,
        "ratio_to_limit": med / LATENCY,
        "cpu_ms_per_portal_scrape": 1000 * cpu_total / (len(warm) * n),
        "cpu_ms_per_portal_scrape_cold": 1000 * cold.cpu / n,
        "cpu_exact_ms_per_portal_scrape": 1000 * sum(s.cpu_exact for s in warm) / (
            len(warm) * n),
        "sim_cpu_ms_per_portal_scrape": 1000 * sum(s.sim_cpu for s in warm) / (len(warm) * n),
        "other_cpu_s_per_scrape": statistics.median(s.other_cpu for s in warm),
        "upstream_calls_per_portal_endpoint": statistics.median(
            s.requests for s in warm) / (n * calls_per_portal),
        "exactly_one_call_each": all(s.exact for s in scrapes),
        "connections_cold": cold.connections,
        "connections_warm_max": max(s.connections for s in warm) if scrapes[1:] else None,
        "up_min": min(s.up for s in scrapes),
        "rss_idle_mb": idle_mem.get("VmRSS"),
        "rss_peak_mb": mem.get("VmHWM"),
        "threads_after": mem.get("Threads"),
    }


def bench_n(n: int, runs: int, workdir: Path, *, naive: bool, blackbox: bool,
            log: Any, scheme: str = "https") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sim, sim_port, sim_cfg = start_simulator(n, workdir, scheme)
    try:
        kinds: list[tuple[str, int | None, str | None, int]] = [
            (f"exporter {scheme}", None, None, runs)]
        if naive:
            # Sequential: one call at a time; a long timeout so it is measured, not cut off.
            # Fewer runs as it gets slow; past ~30 s per scrape it is run once (that one
            # scrape is both cold and warm).
            est = n * CALLS_PER_PORTAL * LATENCY
            naive_runs = runs if est < 2 else 3 if est < 10 else 1 if est < 30 else 0
            kinds.append((f"naive {scheme}", 1, "3600s", naive_runs))
        for kind, conc, timeout, k in kinds:
            cfg = exporter_config(sim_cfg, workdir / f"{kind.replace(' ', '-')}-{n}.yaml",
                                  max_concurrency=conc, timeout=timeout, scheme=scheme)
            exp, port = start_exporter(cfg)
            # Kept alive like Prometheus's, so the handler thread and its CPU stay visible.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT + 3600)
            try:
                if FIRST_AFTER_WARMUP:
                    log(f"  {kind:9s} N={n:<5d} warm-up: {wait_warmup(sim_port, n):.2f}s")
                idle = mem_mb(exp.pid)
                scrapes = []
                for i in range(k + 1):  # +1: the first (cold) scrape opens the connections
                    # The naive exporter is measured, not cut off at a scrape timeout.
                    s = scrape_exporter(port, exp.pid, sim_port, sim.pid, n,
                                        scrape_timeout=None if kind.startswith("naive") else
                                        SCRAPE_TIMEOUT, conn=conn)
                    scrapes.append(s)
                    log(f"  {kind:9s} N={n:<5d} run {i}: {s.seconds:7.3f}s cpu {s.cpu:6.3f}s "
                        f"sim {s.sim_cpu:6.3f}s other {s.other_cpu:5.2f}s up {s.up}/{n} "
                        f"req {s.requests} conn {s.connections} exact {s.exact}")
                    if i < k:
                        time.sleep(INTERVAL[0])
                out.append(summarize(kind, n, scrapes, mem_mb(exp.pid), idle, CALLS_PER_PORTAL))
            finally:
                conn.close()
                exp.stop()
        if blackbox and scheme == "http":
            if not os.path.exists(BLACKBOX):
                log(f"  blackbox: {BLACKBOX} missing (apt-get install -y "
                    "prometheus-blackbox-exporter); skipped")
            else:
                targets = blackbox_config(sim_cfg, workdir / f"blackbox-{n}.yml")
                bb, port = start_blackbox(workdir / f"blackbox-{n}.yml")
                try:
                    idle = mem_mb(bb.pid)
                    scrapes = []
                    for i in range(runs + 1):
                        s = scrape_blackbox(port, bb.pid, sim_port, sim.pid, targets)
                        scrapes.append(s)
                        log(f"  {'blackbox':9s} N={n:<5d} run {i}: {s.seconds:7.3f}s cpu "
                            f"{s.cpu:6.3f}s sim {s.sim_cpu:6.3f}s other {s.other_cpu:5.2f}s "
                            f"up {s.up}/{n} req {s.requests} conn {s.connections} "
                            f"exact {s.exact}")
                        time.sleep(0.3)
                    out.append(summarize("blackbox", n, scrapes, mem_mb(bb.pid), idle, 1))
                finally:
                    bb.stop()
    finally:
        sim.stop()
    return out


def capacity(workdir: Path, sizes: list[int], log: Any) -> list[dict[str, Any]]:
    """Scrape /metrics with a 10 s scrape timeout at growing N; all up and < 9.5 s = served."""
    rows = []
    for n in sizes:
        sim, sim_port, sim_cfg = start_simulator(n, workdir, "https")
        try:
            cfg = exporter_config(sim_cfg, workdir / f"cap-{n}.yaml", max_concurrency=None,
                                  scheme="https")
            exp, port = start_exporter(cfg)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT + 60)
            try:
                idle = mem_mb(exp.pid)
                scrapes = []
                for i in range(3):
                    s = scrape_exporter(port, exp.pid, sim_port, sim.pid, n, conn=conn)
                    scrapes.append(s)
                    log(f"  capacity  N={n:<5d} run {i}: {s.seconds:7.3f}s cpu {s.cpu:6.3f}s "
                        f"sim {s.sim_cpu:6.3f}s other {s.other_cpu:5.2f}s up {s.up}/{n} "
                        f"conn {s.connections}")
                    time.sleep(0.5)
                row = summarize("capacity", n, scrapes, mem_mb(exp.pid), idle, CALLS_PER_PORTAL)
                # Served: every scrape, the cold one after a (re)start included, in time
                # with every portal up. warm_ok: the same for the 2nd+ scrapes only.
                row["all_up_within_timeout"] = all(
                    s.up == n and s.seconds < SCRAPE_TIMEOUT - 0.5 for s in scrapes)
                row["warm_ok"] = all(
                    s.up == n and s.seconds < SCRAPE_TIMEOUT - 0.5 for s in scrapes[1:])
                rows.append(row)
            finally:
                conn.close()
                exp.stop()
        finally:
            sim.stop()
        if not rows[-1]["warm_ok"]:
            break
    return rows


# -- report ---------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| impl | N | warm s (median) | x limit | first s | first up | slowest s "
            "| CPU ms/portal | (schedstat) "
            "| sim CPU ms/portal | RSS idle MB | RSS peak MB | calls/endpoint | exactly 1 "
            "| conns first | conns 2nd+ | up (every scrape) | others' CPU s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['n']} | {fmt(r['seconds_median'])} | "
            f"{fmt(r['ratio_to_limit'], '.2f')} | {fmt(r['seconds_cold'])} | "
            f"{r.get('up_cold', '-')}/{r['n']} | {fmt(r.get('seconds_max'))} | "
            f"{fmt(r['cpu_ms_per_portal_scrape'], '.2f')} | "
            f"{fmt(r.get('cpu_exact_ms_per_portal_scrape'), '.2f')} | "
            f"{fmt(r['sim_cpu_ms_per_portal_scrape'], '.2f')} | "
            f"{fmt(r['rss_idle_mb'], '.1f')} | {fmt(r['rss_peak_mb'], '.1f')} | "
            f"{fmt(r['upstream_calls_per_portal_endpoint'], '.2f')} | "
            f"{fmt(r['exactly_one_call_each'])} | {r['connections_cold']} | "
            f"{fmt(r['connections_warm_max'], 'd')} | {r['up_min']}/{r['n']} | "
            f"{fmt(r['other_cpu_s_per_scrape'], '.2f')} |")
    return "\n".join(lines)


def extrapolate(rows: list[dict[str, Any]], sizes: list[int]) -> list[str]:
    """The naive exporter at the N it was not run at: seconds per portal x N."""
    naive = [r for r in rows if r["kind"].startswith("naive")]
    if not naive:
        return []
    biggest = max(naive, key=lambda r: r["n"])
    per_portal = biggest["seconds_median"] / biggest["n"]
    return [f"naive (EXTRAPOLATED from N={biggest['n']}: {per_portal:.3f} s/portal) "
            f"N={n}: ~{per_portal * n:.0f} s = {per_portal * n / LATENCY:.0f} x limit"
            for n in sizes if n > biggest["n"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", default="https,http",
                    help="portal schemes to measure, in order (default %(default)s)")
    ap.add_argument("--sizes", default="1,10,100,1000",
                    help="portal counts, comma-separated (default %(default)s)")
    ap.add_argument("--runs", type=int, default=5, help="warm scrapes per N (median)")
    ap.add_argument("--runs-large", type=int, default=3, help="warm scrapes for N >= 1000")
    ap.add_argument("--naive-max", type=int, default=100,
                    help="largest N for the sequential exporter (default %(default)s)")
    ap.add_argument("--no-blackbox", action="store_true",
                    help="leave prometheus-blackbox-exporter out")
    ap.add_argument("--quick", action="store_true",
                    help="N = 1,10,100, 3 runs, naive exporter only up to N = 10")
    ap.add_argument("--capacity", action="store_true",
                    help="also find how many portals one exporter serves within 10 s")
    ap.add_argument("--capacity-sizes", default="1000,1500,2000,2500,3000,3500",
                    help="portal counts for --capacity, tried in order until one fails")
    ap.add_argument("--capacity-only", action="store_true", help="only the --capacity part")
    ap.add_argument("--first-after-warmup", action="store_true",
                    help="send the first scrape once the exporter has opened its portal "
                         "connections (default: as soon as /-/ready answers)")
    ap.add_argument("--interval", type=float, default=0.3, metavar="SECONDS",
                    help="pause between two scrapes of the exporter, as a scrape interval "
                         "(default 0.3: back to back)")
    ap.add_argument("--label", default="", help="a word for the result file name")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra top-level exporter config key (e.g. max_concurrency=256)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment variable for the exporter process")
    ap.add_argument("--exporter-src", type=Path, metavar="DIR",
                    help="run the exporter package from DIR (before/after comparisons); the "
                         "simulator always comes from this tree")
    args = ap.parse_args(argv)
    if args.exporter_src:
        EXPORTER_SRC.append(args.exporter_src.resolve())
    if args.first_after_warmup:
        FIRST_AFTER_WARMUP.append(True)
    INTERVAL[0] = args.interval
    for kv in args.set:
        key, _, value = kv.partition("=")
        EXTRA_CONFIG.append(f"{key}: {value}")
    for kv in args.env:
        key, _, value = kv.partition("=")
        EXPORTER_ENV[key] = value
    if args.quick:
        args.sizes, args.runs, args.naive_max = "1,10,100", 3, 10
    sizes = [int(x) for x in args.sizes.split(",") if x]

    def log(msg: str) -> None:
        print(msg, flush=True)

    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "model": _cpu_model(), "python": sys.version.split()[0],
                    "kernel": platform.release(),
                    "mem_total_mb": _meminfo("MemTotal") // 1024},
        "latency_s": LATENCY, "calls_per_portal": CALLS_PER_PORTAL,
        "git": _git_rev(), "args": {k: str(v) for k, v in vars(args).items()},
        "loadavg_start": os.getloadavg(),
    }
    log(f"machine: {meta['machine']}  git {meta['git']}  load {meta['loadavg_start']}")
    rows: list[dict[str, Any]] = []
    cap: list[dict[str, Any]] = []
    schemes = [x for x in args.schemes.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="docspace-bench-") as tmp:
        work = Path(tmp)
        make_tls(work)
        meta["ca_bundle_certificates"] = bundle_cas(TLS["bundle"])
        log(f"ca_file: {SYSTEM_BUNDLE} + the test CA = {meta['ca_bundle_certificates']} CAs")
        if not args.capacity_only:
            for n in sizes:
                runs = args.runs if n < 1000 else min(args.runs, args.runs_large)
                if n < 100:  # cheap; more runs make the 10 ms CPU ticks of /proc average out
                    runs = max(runs, 15)
                for i, scheme in enumerate(schemes):
                    log(f"N={n} {scheme}")
                    rows += bench_n(n, runs, work, naive=n <= args.naive_max and i == 0,
                                    blackbox=not args.no_blackbox, log=log, scheme=scheme)
        if args.capacity or args.capacity_only:
            log("capacity (10 s scrape timeout)")
            cap = capacity(work, [int(x) for x in args.capacity_sizes.split(",")], log)
    meta["loadavg_end"] = os.getloadavg()
    order = {"exporter": 0, "naive": 1, "blackbox": 2}
    rows.sort(key=lambda r: (order.get(r["kind"].split()[0], 9), r["kind"], r["n"]))
    print()
    print(f"limit = {LATENCY * 1000:.0f} ms (one round trip, every portal and call at once); "
          f"{CALLS_PER_PORTAL} calls per portal (history: false)")
    print(table(rows))
    for line in extrapolate(rows, sizes):
        print(line)
    if cap:
        print()
        print("capacity, one exporter, 10 s scrape timeout:")
        print(table(cap))
        ok = [r["n"] for r in cap if r["all_up_within_timeout"]]
        warm = [r["n"] for r in cap if r["warm_ok"]]
        print(f"largest N served within {SCRAPE_TIMEOUT - 0.5:.1f} s with every portal up, "
              f"cold first scrape included: {max(ok) if ok else 'none'}; "
              f"2nd+ scrapes only: {max(warm) if warm else 'none'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S") + (f"-{args.label}" if args.label else "") + ".json"
    (RESULTS / name).write_text(json.dumps({"meta": meta, "rows": rows, "capacity": cap},
                                           indent=2), encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(ROOT) / name}  (load {meta['loadavg_end']})")
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "exporter"], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
