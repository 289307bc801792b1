#!/usr/bin/env python3
"""Client CPU per call: requests' Session.request vs the pool-level send (issue 9 item 1).

100 HTTPS portals on loopback (one port each, a tiny keep-alive server in a child process),
one DocSpaceClient per portal, connections warm. Each round calls `schedule` once per portal
from this thread and takes the CPU time of this process (the client's thread and its
watchdog thread) per call. Prints the median and spread of the rounds for each way.

    python benchmarks/client_cpu.py                       # this tree: its one path
    python benchmarks/client_cpu.py --tree /path/to/main  # a tree with both paths (before
                                                          # issue 9): measures each way
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BODY = b'{"count":0,"status":0,"statusCode":200}'


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(cert: str, key: str, n: int, ports: Any) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    for _ in range(n):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        ports.put(srv.server_address[1])
    threading.Event().wait()


def _cert(d: Path) -> tuple[str, str]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], cwd=d, check=True, capture_output=True)
    return str(d / "c.pem"), str(d / "k.pem")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--portals", type=int, default=100)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=5, help="calls per portal per round")
    args = p.parse_args()
    sys.path.insert(0, str(args.tree))
    from exporter.client import DocSpaceClient
    from exporter.config import ApiKeyAuth, PortalConfig, Secret

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _cert(Path(tmp))
        ports: Any = multiprocessing.Queue()
        server = multiprocessing.Process(target=_serve, args=(cert, key, args.portals, ports),
                                         daemon=True)
        server.start()
        try:
            urls = [f"https://127.0.0.1:{ports.get(timeout=30)}" for _ in range(args.portals)]
            clients = [DocSpaceClient(PortalConfig(name=f"p{i}", url=u, ca_file=cert,
                                                   auth=ApiKeyAuth(Secret("k"))))
                       for i, u in enumerate(urls)]
            ways = ["one path"]
            if hasattr(clients[0], "_fast_get"):
                ways = ["pool-level send", "Session.request"]
            print(f"tree: {args.tree}  portals: {args.portals}  rounds: {args.rounds} x "
                  f"{args.calls} calls per portal  (CPU microseconds per call, HTTPS, warm)")
            for way in ways:
                for c in clients:
                    if hasattr(c, "_fast_get"):
                        c._fast_get = way == "pool-level send"
                    c.schedule(time.monotonic() + 10)  # warm: TLS handshake, pool, login
                per_call = []
                for _ in range(args.rounds):
                    t0 = time.process_time()
                    for _ in range(args.calls):
                        for c in clients:
                            c.schedule(time.monotonic() + 10)
                    per_call.append((time.process_time() - t0) / (args.calls * len(clients)))
                us = sorted(x * 1e6 for x in per_call)
                print(f"{way:18} median {statistics.median(us):7.0f} us   "
                      f"min {us[0]:7.0f}   max {us[-1]:7.0f}")
            for c in clients:
                c.close()
        finally:
            server.kill()
            server.join()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
