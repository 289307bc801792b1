"""Start an exporter from any source tree (for before/after runs) and time HTTP requests."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    """`python -m exporter ARGS` from `tree`, on a free loopback port; a context manager."""

    def __init__(self, tree: Path, *args: str) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address",
             f"127.0.0.1:{self.port}", "--log.level", "error", *args],
            cwd=str(tree), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"exporter exited: {self.proc.stderr.read().decode()[-2000:]}"
                                 if self.proc.stderr else "exporter exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise SystemExit("exporter did not come up")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)


def timed(conn: http.client.HTTPConnection, path: str,
          headers: dict[str, str] | None = None) -> tuple[float, int]:
    """(seconds to the last byte, status) of one request on `conn`."""
    start = time.perf_counter()
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    return time.perf_counter() - start, resp.status


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"
