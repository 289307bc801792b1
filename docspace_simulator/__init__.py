"""A standard-library fake of the DocSpace server's backup API (docs/docspace-api.md).

Used by the exporter's --demo, its tests and its benchmarks; it imports nothing from the
exporter. `python -m docspace_simulator --help` lists the command line.

    wire.py       fixed bodies, date formats, the response envelope
    scenarios.py  the scenario table (one Scenario per name) and SimPortal
    objects.py    the object each endpoint answers, from a portal and its scenario
    app.py        authentication, DocSpace's filters, each route's answer
    transport.py  the threaded HTTP server and the Request object hooks receive
    server.py     the Simulator: portals, routing, counters, start/stop
    cli.py        the demo portals, render_config, the command line
"""

from docspace_simulator.cli import (
    DEMO_PASSWORD,
    DEMO_PORTALS,
    DEMO_USERNAME,
    DEMO_ZONES,
    add_demo_portals,
    main,
    render_config,
)
from docspace_simulator.scenarios import (
    SCENARIOS,
    Restore,
    Scenario,
    SimPortal,
    Task,
    register_scenario,
)
from docspace_simulator.server import ENDPOINTS, Simulator
from docspace_simulator.transport import Request
from docspace_simulator.wire import CT_JSON, Resp

__all__ = [
    "CT_JSON",
    "DEMO_PASSWORD",
    "DEMO_PORTALS",
    "DEMO_USERNAME",
    "DEMO_ZONES",
    "ENDPOINTS",
    "SCENARIOS",
    "Request",
    "Resp",
    "Restore",
    "Scenario",
    "SimPortal",
    "Simulator",
    "Task",
    "add_demo_portals",
    "main",
    "register_scenario",
    "render_config",
]
