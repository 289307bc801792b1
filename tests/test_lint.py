"""Lint and type-check are part of the test command: ruff over everything, mypy as configured."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff() -> None:
    # Beside the interpreter first: a venv's python run without activating the venv.
    beside = Path(sys.executable).parent / "ruff"
    ruff = str(beside) if beside.is_file() else shutil.which("ruff")
    assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
    r = _run(ruff, "check", "exporter", "docspace_simulator", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy() -> None:
    r = _run(sys.executable, "-m", "mypy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_simulator_imports_nothing_from_the_exporter() -> None:
    # The simulator is a fake of the server; sharing the exporter's parsers would let a
    # shared mistake pass its own test.
    files = sorted((ROOT / "docspace_simulator").glob("*.py"))
    assert len(files) >= 4, files
    for f in files:
        lines = [ln.strip() for ln in f.read_text().splitlines()]
        for forbidden in ("from exporter", "import exporter", "import requests", "import yaml",
                          "from tests", "import tests"):
            assert not [ln for ln in lines if ln.startswith(forbidden)], (f.name, forbidden)


def test_runtime_package_has_no_simulator() -> None:
    # The runtime package stays free of test-only code; --demo imports docspace_simulator.
    assert not (ROOT / "exporter" / "simulator.py").exists()
    for f in (ROOT / "exporter").glob("*.py"):
        for line in f.read_text().splitlines():
            if "docspace_simulator" in line and "import" in line:
                assert f.name == "cli.py" and line.startswith("    "), (f.name, line)
