"""Lint and type-check are part of the test command: ruff over everything, mypy on exporter/."""

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
    r = _run(ruff, "check", "exporter", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy() -> None:
    r = _run(sys.executable, "-m", "mypy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_simulator_imports_nothing_from_the_exporter() -> None:
    # The simulator is a fake of the server; sharing the exporter's parsers would let a
    # shared mistake pass its own test.
    text = (ROOT / "exporter" / "simulator.py").read_text()
    for forbidden in ("from exporter", "import exporter", "import requests", "import yaml"):
        assert forbidden not in text, forbidden
