"""The web server's benchmark scripts still run (tiny sizes; their numbers are not asserted,
only that each prints every row it promises)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_keepalive_benchmark_runs() -> None:
    out = run("keepalive.py", "-n", "2")
    for path in ("/-/healthy", "/probe?target=healthy", "/metrics"):
        assert any(line.startswith(path) and len(line.split()) == 3
                   for line in out.splitlines()), out


def test_auth_flood_benchmark_runs() -> None:
    out = run("auth_flood.py", "--clients", "3", "--samples", "2")
    for row in ("alone", "same wrong password", "new wrong password each time",
                "unknown user", "known user, wrong password"):
        assert row in out, out


def test_floor_benchmark_runs() -> None:
    """benchmarks/floor.py: the simulator answering a minimal client, the floor the README
    quotes under the warm-scrape figure."""
    out = run("floor.py", "--portals", "2", "--rounds", "1")
    assert "2 HTTPS portals, 6 calls of 200 ms at once, 1 rounds: median" in out, out
