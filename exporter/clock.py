"""The two clocks: wall time for timestamps and ages, a monotonic timer for deadlines.

Every module takes them as `clock=` / `timer=` parameters defaulting to these, so tests
inject their own.
"""

from __future__ import annotations

import time


def wall_clock() -> float:
    """time.time() looked up at each call, so freezegun's patch reaches it. Deadlines use
    the real time.monotonic on purpose: a frozen timer would never let a deadline pass."""
    return time.time()


# Deadlines, durations and the hourly cache of settings and tariff run on this.
monotonic = time.monotonic
