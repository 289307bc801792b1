"""logfmt / JSON log formatting, and a last-line filter that masks configured secrets."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}
# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname,
                                                              record.levelname.lower()),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            out[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        # The type only: tracebacks can quote request data.
        out["exc"] = record.exc_info[0].__name__
    return out


def _logfmt_value(value: Any) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' ="\\\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, sort_keys=False)


class SecretMask:
    """Defence in depth: no code path logs a secret on purpose; this makes sure that no
    accident (a library's message, a future bug) prints one either."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def set(self, secrets: tuple[str, ...]) -> None:
        with self._lock:
            # Longest first, so a secret containing another is masked whole.
            self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len,
                                         reverse=True))

    def mask(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "<redacted>")
        return text


class MaskingHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    def __init__(self, stream: TextIO, mask: SecretMask) -> None:
        super().__init__(stream)
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        return self.mask.mask(super().format(record))


MASK = SecretMask()


def setup(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    handler = MaskingHandler(stream or sys.stderr, MASK)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # urllib3 logs full URLs with query at debug; ours are secret-free, but its
    # connection-pool chatter is noise at any level we run.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


# A portal that stays down logs at warn when its failures change (which endpoints, which
# reasons), then again at most once per REMINDER_INTERVAL while they last; every scrape's
# detail is at debug. 5 minutes: at the usual 1-minute scrape interval one warn line in five
# scrapes instead of one per scrape and endpoint, yet still a reminder or two before
# DocSpacePortalDown (for: 15m) fires, so someone reading the log sees the outage go on.
REMINDER_INTERVAL = 300.0


class FailureLog:
    """Decides the level of a portal's failure lines, per scrape (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 reminder: float = REMINDER_INTERVAL) -> None:
        self._clock = clock
        self._reminder = reminder
        self._lock = threading.Lock()
        self._last: dict[str, tuple[frozenset[tuple[str, str]], float]] = {}

    def level(self, portal: str, failures: frozenset[tuple[str, str]]) -> int | None:
        """WARNING when `failures` ((endpoint, reason) pairs) differ from the last warned
        ones or the reminder is due, DEBUG while they stay the same, INFO once when a failing
        portal answers again, None for a portal that keeps answering."""
        now = self._clock()
        with self._lock:
            last = self._last.get(portal)
            if not failures:
                if last is None:
                    return None
                del self._last[portal]
                return logging.INFO
            if last is None or last[0] != failures or now - last[1] >= self._reminder:
                self._last[portal] = (failures, now)
                return logging.WARNING
            return logging.DEBUG

    def retain(self, portals: Collection[str]) -> None:
        """Forget portals no longer configured."""
        with self._lock:
            for name in [n for n in self._last if n not in portals]:
                del self._last[name]
