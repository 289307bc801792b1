"""GET /sd: the configured portals as Prometheus HTTP service discovery targets.

Prometheus' `http_sd_configs` reads a JSON list of target groups. Each portal becomes one
/probe target on this exporter, so a scrape config needs no hand-kept list of portal names
and follows config reloads:

    [{"targets": ["exporter:10057"],
      "labels": {"__metrics_path__": "/probe", "__param_target": "main",
                 "portal": "main", "instance": "main"}}, ...]

The target address is the exporter's own address as the client reached it: the request's
Host header (Prometheus sends the host:port of the `url` it was given). Over TLS the groups
also carry `__scheme__: https`. Nothing else of the config (URLs, credentials) is listed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from exporter.config import PortalConfig

# host:port as a client may send it: a DNS name or IPv4 address, or a bracketed IPv6
# address, with an optional port. Anything else (spaces, slashes, userinfo) is refused.
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?$")


class BadHost(ValueError):
    """The request's Host header cannot name a scrape target."""


def target_address(host_header: str | None, default_port: int) -> str:
    """host:port of this exporter from the Host header (port added when absent)."""
    host = (host_header or "").strip()
    m = _HOST.match(host)
    if not m:
        raise BadHost("the /sd request needs a Host header of the form host[:port]")
    port = m.group("port")
    if port is None:
        return f"{host}:{default_port}"
    if not 0 < int(port) < 65536:
        raise BadHost("the Host header's port is out of range")
    return host


def document(portals: Iterable[PortalConfig], address: str, *, tls: bool) -> bytes:
    """The http_sd JSON: one target group per portal, in config order."""
    groups = []
    for p in portals:
        labels = {"__metrics_path__": "/probe", "__param_target": p.name,
                  "portal": p.name, "instance": p.name}
        if tls:
            labels["__scheme__"] = "https"
        groups.append({"targets": [address], "labels": labels})
    return (json.dumps(groups, indent=1) + "\n").encode()
