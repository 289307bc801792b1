"""Who may ask and how often: basic_auth_users checked with bounded, cached bcrypt, and
rate_limit's token bucket."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class RateLimit:
    """rate_limit: a token bucket, one token every `interval` seconds, `burst` at most."""

    interval: float
    burst: int


class TokenBucket:
    """golang.org/x/time/rate.Limiter.Allow(): `burst` tokens, one more every interval."""

    def __init__(self, limit: RateLimit, timer: Callable[[], float] = time.monotonic) -> None:
        self._rate = 1.0 / limit.interval
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._timer = timer
        self._last = timer()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._timer()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class BasicAuth:
    """basic_auth_users, checked as exporter-toolkit does, plus bounds.

    - An unknown user is checked against a dummy hash of the same cost as the real ones, so
      the answer time does not tell which user names exist.
    - bcrypt runs one at a time (a lock): it costs ~70 ms of CPU at cost 10 by design, and
      parallel wrong passwords would otherwise take every core.
    - Results are cached by an HMAC of user, password and hash (never the password itself):
      successes for SUCCESS_TTL after their last use, failures for FAILURE_TTL, in separate
      bounded maps so a flood of wrong passwords can never push out a good client's entry.
    - A failure, cached or not, takes at least as long as one bcrypt (a sleep, no CPU).
    """

    SUCCESS_TTL = 600.0
    FAILURE_TTL = 60.0
    MAX_SUCCESSES = 100
    MAX_FAILURES = 1000

    def __init__(self, users: dict[str, bytes],
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._users = users
        self._timer = timer
        self._key = os.urandom(32)  # per process: cache keys are useless outside it
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        started = time.monotonic()
        self._dummy = self._dummy_hash(users) if users else b""
        # What one bcrypt of that cost takes here: the least time a failure answers in.
        self._bcrypt_seconds = time.monotonic() - started if users else 0.0

    def __repr__(self) -> str:
        return f"BasicAuth(users={len(self._users)})"

    @staticmethod
    def _dummy_hash(users: dict[str, bytes]) -> bytes:
        """A hash of a random password at the cost most users have (ties: the higher)."""
        import bcrypt  # imported lazily: only needed with basic_auth_users

        costs: Counter[int] = Counter()
        for hashed in users.values():
            match = BCRYPT_HASH.fullmatch(hashed.decode("ascii", "replace"))
            costs[int(match[1]) if match else 10] += 1
        cost = max(costs, key=lambda c: (costs[c], c))
        return bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=cost))

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        known = user in self._users
        hashed = self._users.get(user, self._dummy)
        key = hmac.new(self._key, b"\0".join([
            str(len(user)).encode(), user.encode("utf-8", "surrogatepass"),
            password.encode("utf-8", "surrogatepass"), hashed]), hashlib.sha256).digest()
        started = time.monotonic()
        cached = self._cached(key)
        if cached is None:
            with self._bcrypt_lock:
                # Another thread may have checked the same credentials while this one
                # waited: one bcrypt serves them all.
                cached = self._cached(key)
                if cached is None:
                    cached = _bcrypt_ok(password, hashed) and known
                    self._store(key, cached)
        if not cached:
            # A failure never answers sooner than a bcrypt would: a repeated wrong password
            # looks like a new one, and a flood of them costs this thread a sleep instead of
            # the CPU of thousands of cached 401s a second.
            rest = self._bcrypt_seconds - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
        return cached and known

    def _cached(self, key: bytes) -> bool | None:
        now = self._timer()
        with self._cache_lock:
            for store, ttl, result in ((self._ok, self.SUCCESS_TTL, True),
                                       (self._failed, self.FAILURE_TTL, False)):
                stamp = store.get(key)
                if stamp is None:
                    continue
                if now - stamp > ttl:
                    del store[key]
                    continue
                if result:  # a success lives on while it is used
                    store[key] = now
                    store.move_to_end(key)
                return result
        return None

    def _store(self, key: bytes, good: bool) -> None:
        store, limit = (self._ok, self.MAX_SUCCESSES) if good else (self._failed,
                                                                      self.MAX_FAILURES)
        with self._cache_lock:
            store[key] = self._timer()
            store.move_to_end(key)
            while len(store) > limit:
                store.popitem(last=False)  # the least recently used


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password); None for anything else."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":  # auth schemes are case-insensitive (RFC 9110 §11.1)
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _bcrypt_ok(password: str, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password.encode(), hashed))
    except ValueError:  # longer than 72 bytes, a NUL, a malformed hash: no match, as in Go
        return False
