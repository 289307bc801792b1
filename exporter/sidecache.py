"""The hourly cache of the slow-changing endpoints (settings, tariff): the one documented
cache (contract 5a). Each is read at most once per SIDE_REFRESH per portal, and again on the
next scrape after a failed read; the last good answer outlives a failed refresh."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from exporter.config import PortalConfig

# Settings (time zone, version) and tariff change rarely: each is read at most once per this
# many seconds per portal, and again on the next scrape after a failed read (contract 5a).
SIDE_REFRESH = 3600.0


class _Side:
    """The last read of one side endpoint of one portal."""

    __slots__ = ("value", "read_at", "failed")

    def __init__(self) -> None:
        self.value: Any = None  # last successful answer, kept across a failed refresh
        self.read_at: float | None = None  # timer() of the last successful read
        self.failed = False  # the last attempt failed: retry on the next scrape


class SideCache:
    """portal name -> (its config, endpoint -> _Side); thread-safe."""

    def __init__(self, timer: Callable[[], float]) -> None:
        self._timer = timer
        self._lock = threading.Lock()
        self._held: dict[str, tuple[PortalConfig, dict[str, _Side]]] = {}

    def _entries(self, portal: PortalConfig) -> dict[str, _Side]:
        """The portal's entries (lock held); a changed config (another URL or credentials)
        starts them afresh."""
        held = self._held.get(portal.name)
        if held is None or held[0] != portal:
            held = self._held[portal.name] = (portal, {})
        return held[1]

    def due(self, portal: PortalConfig, endpoint: str) -> bool:
        """Whether the endpoint must be read in this fetch: never read, last read failed,
        or SIDE_REFRESH passed since the last successful read."""
        with self._lock:
            side = self._entries(portal).get(endpoint)
            if side is None or side.failed or side.read_at is None:
                return True
            return self._timer() - side.read_at >= SIDE_REFRESH

    def failed(self, portal: PortalConfig, endpoint: str) -> bool:
        """Whether the last read of the endpoint failed (it is read again on the next
        scrape, whatever else is due: contract 5a)."""
        with self._lock:
            side = self._entries(portal).get(endpoint)
            return side is not None and side.failed

    def store(self, portal: PortalConfig, endpoint: str, ok: bool, value: Any) -> None:
        with self._lock:
            side = self._entries(portal).setdefault(endpoint, _Side())
            if ok:
                side.value = value
                side.read_at = self._timer()
                side.failed = False
            else:
                side.failed = True

    def value(self, portal: PortalConfig, endpoint: str) -> Any:
        """The last successful answer, or None."""
        with self._lock:
            side = self._entries(portal).get(endpoint)
            return None if side is None else side.value

    def retain(self, keep: Mapping[str, PortalConfig]) -> None:
        """After a reload: forget portals no longer configured or whose config changed."""
        with self._lock:
            for name in list(self._held):
                if name not in keep or self._held[name][0] != keep[name]:
                    del self._held[name]
