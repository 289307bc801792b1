"""Command line: flags, logging, wiring, signals. Nothing imports this module."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from exporter import __version__, logs
from exporter.app import ExporterApp
from exporter.config import ApiKeyAuth, Config, ConfigError, PasswordAuth, PortalConfig, Secret
from exporter.config import load_config as load_config_file
from exporter.server import ExporterHTTPServer
from exporter.webconfig import load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 10057
SWITCH_INTERVAL = 0.02  # seconds; sys.setswitchinterval, see main()


def parse_listen_address(value: str) -> tuple[str, int]:
    """`:10057`, `0.0.0.0:10057`, `127.0.0.1:10057`, `[::1]:10057` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    # str.isdigit() is also true for '²' and other digits int() does not take
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. :10057)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "":
        host = "::"
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docspace-backup-exporter",
        description="Prometheus exporter for the backups of ONLYOFFICE DocSpace portals.",
    )
    p.add_argument("--config.file", dest="config_file", default="config.yaml",
                   metavar="PATH", help="YAML config file (default: %(default)s)")
    p.add_argument("--config.check", dest="config_check", action="store_true",
                   help="validate the config, print every problem, exit 0 (valid) or 1")
    p.add_argument("--web.listen-address", dest="listen", default=None,
                   type=parse_listen_address, metavar="HOST:PORT",
                   help=f"address to serve on; :PORT means all interfaces (default: "
                        f":{DEFAULT_PORT}, with --demo 127.0.0.1:{DEFAULT_PORT})")
    p.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                   metavar="PATH", help="path of the all-portals endpoint (default: %(default)s)")
    p.add_argument("--web.config.file", dest="web_config", default=None, metavar="PATH",
                   help="exporter-toolkit web config: TLS and basic auth")
    p.add_argument("--log.level", dest="log_level", default="info",
                   choices=["debug", "info", "warn", "error"])
    p.add_argument("--log.format", dest="log_format", default="logfmt",
                   choices=["logfmt", "json"])
    p.add_argument("--demo", action="store_true",
                   help="serve a built-in DocSpace simulator's portals; needs no config")
    p.add_argument("--version", action="version",
                   version=f"docspace-backup-exporter {__version__}")
    return p


def demo_config() -> tuple[Config, object]:
    """Start the simulator on loopback and return a config of its demo portals."""
    from docspace_simulator import Simulator, add_demo_portals

    sim = Simulator("127.0.0.1", 0)
    sim_portals = add_demo_portals(sim)
    sim.start()
    portals = []
    for sp in sim_portals:
        auth: ApiKeyAuth | PasswordAuth
        if sp.username and sp.password:
            auth = PasswordAuth(sp.username, Secret(sp.password))
        else:
            auth = ApiKeyAuth(Secret(sp.api_key))
        portals.append(PortalConfig(name=sp.name, url=sim.portal_url(sp.name), auth=auth,
                                    timeout=5.0, history=True))
    return Config(portals=tuple(portals), source="--demo"), sim


def listen_address(args: argparse.Namespace) -> tuple[str, int]:
    """--web.listen-address if given; else every interface, or loopback only for --demo (a
    demo is for the person at this machine, not for the network)."""
    if args.listen is not None:
        host, port = args.listen
        return str(host), int(port)
    return ("127.0.0.1" if args.demo else "::", DEFAULT_PORT)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.listen = listen_address(args)
    logs.setup(args.log_level, args.log_format)

    if args.config_check:
        failed = False
        if args.web_config:  # the web config is checked as at start-up, key by key
            try:
                load_web_config(args.web_config)
            except ConfigError as exc:
                print(f"{args.web_config}: {len(exc.problems)} problem(s):", file=sys.stderr)
                for problem in exc.problems:
                    print(f"  {problem}", file=sys.stderr)
                failed = True
        try:
            cfg = load_config_file(args.config_file)
        except ConfigError as exc:
            print(f"{args.config_file}: {len(exc.problems)} problem(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        if failed:
            return 1
        if args.web_config:
            print(f"{args.web_config}: OK")
        print(f"{args.config_file}: OK, {len(cfg.portals)} portal(s): "
              + ", ".join(p.name for p in cfg.portals))
        return 0

    try:
        web = load_web_config(args.web_config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("invalid web config", extra={"problem": problem})
        return 1

    sim = None
    if args.demo:
        cfg, sim = demo_config()
        loader = None
        log.info("demo mode: serving a built-in DocSpace simulator",
                 extra={"simulator": getattr(sim, "base_url", "")})
    else:
        try:
            cfg = load_config_file(args.config_file)
        except ConfigError as exc:
            log.error("invalid config, not starting", extra={"file": args.config_file,
                                                             "problems": len(exc.problems)})
            for problem in exc.problems:
                log.error("config problem", extra={"problem": problem})
            return 1
        path = args.config_file

        def loader() -> Config:
            return load_config_file(path)

    started: list[ExporterApp] = []

    def on_config(c: Config) -> None:
        logs.MASK.set(c.secrets())
        if started:  # a reload: open the connections of new and changed portals ahead
            started[0].scraper.warm(c.portals)

    # Hundreds of worker threads spend a scrape waiting on sockets; at the default 5 ms
    # switch interval the ones woken by answers keep forcing GIL hand-offs on each other.
    # 20 ms measured 10-15% less CPU per scrape (benchmarks/README.md); I/O still releases
    # the GIL at once, so no deadline moves by more than that.
    sys.setswitchinterval(SWITCH_INTERVAL)
    app = ExporterApp(cfg, loader=loader, telemetry_path=args.telemetry_path,
                      on_config=on_config)
    # Open the portals' connections (TLS handshakes, paced) in the background before the
    # first scrape asks for them; the answers wait for no warm-up.
    warming = app.scraper.warm(cfg.portals)
    started.append(app)

    def freeze_when_warm() -> None:
        # What exists once the connections are open (modules, config, clients, pools, TLS
        # state) lives as long as the process: frozen out of the collector's way, a full
        # collection during a scrape scans only what the scrape made. Measured with 1000
        # HTTPS portals: GC ~450 -> ~290 ms, CPU ~13% less per scrape (benchmarks/README.md).
        warming.wait()
        gc.freeze()
        log.info("connections opened ahead of the first scrape",
                 extra={"portals": len(cfg.portals)})

    threading.Thread(target=freeze_when_warm, name="gc-freeze", daemon=True).start()
    try:
        server = ExporterHTTPServer(args.listen, app, web, web_path=args.web_config)
    except OSError as exc:
        log.error("cannot listen", extra={"address": f"{args.listen[0]}:{args.listen[1]}",
                                          "err": exc.strerror or str(exc)})
        return 1

    def on_term(signum: int, frame: FrameType | None) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=server.graceful_shutdown, daemon=True).start()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        app.request_reload()  # queued for the one reload worker; last request wins

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    host, port = str(server.server_address[0]), int(server.server_address[1])
    log.info("listening", extra={
        "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "tls": web.ssl_context is not None, "portals": len(cfg.portals),
        "version": __version__})
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # joins in-flight request threads
        app.scraper.close()
        if sim is not None:
            sim.stop()  # type: ignore[attr-defined]
    log.info("stopped")
    return 0
