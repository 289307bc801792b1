"""The deadline watchdog: ends an HTTP call at its deadline, whatever the peer does."""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time

CURRENT = threading.local()  # .watchdog: the Watchdog of the call this thread is making


class Watchdog:
    """Ends one call at its deadline, whatever the peer does.

    Socket timeouts bound each read, not the whole answer: a portal that sends a byte before
    every timeout (dripped headers or body) would hold the call, its worker thread and its
    host slot long past the scrape that wanted it, and later scrapes would join that stuck
    fetch. At the deadline the watchdog shuts the call's socket down, which ends a blocked
    read at once; the call then fails as `timeout`.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._over = False
        _WATCHDOGS.add(time.monotonic() + max(0.0, seconds), self)

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self._over:
                return
            self._sock = sock
            fired = self.fired
        if fired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.fired = True
            sock = self._sock
        if sock is not None:
            _shutdown(sock)

    def stop(self) -> None:
        with self._lock:
            if self._over:
                return
            self._over = True
            self._sock = None  # it waits in the heap until its deadline; keep nothing alive
        _WATCHDOGS.stale += 1


class _WatchdogThread:
    """One thread fires every call's Watchdog at its deadline (earliest first, from a heap).

    A threading.Timer per call started and cancelled a thread for every HTTP request: 3000
    thread starts per scrape of 1000 portals, ~1.4 s of CPU. Stopped watchdogs stay in the
    heap until their time comes (or they reach its top) and are then dropped unfired; when
    they make up most of a large heap (long portal timeouts), it is rebuilt without them.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self.stale = 0  # watchdogs stopped since the last rebuild (approximate, unlocked)

    def add(self, when: float, watchdog: Watchdog) -> None:
        with self._cond:
            if self.stale > 1024 and 2 * self.stale > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2]._over]
                heapq.heapify(self._heap)
                self.stale = 0
            heapq.heappush(self._heap, (when, next(self._seq), watchdog))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="docspace-watchdog",
                                                daemon=True)
                self._thread.start()
            if self._heap[0][2] is watchdog:  # a new earliest deadline: re-arm the wait
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    heap = self._heap
                    while heap and heap[0][2]._over:
                        heapq.heappop(heap)
                    if not heap:
                        self._cond.wait()
                        continue
                    wait = heap[0][0] - time.monotonic()
                    if wait <= 0:
                        due = heapq.heappop(heap)[2]
                        break
                    self._cond.wait(wait)
            due._fire()


_WATCHDOGS = _WatchdogThread()


def _shutdown(sock: socket.socket) -> None:
    try:
        # socket.socket's own shutdown: SSLSocket.shutdown would also drop its TLS state
        # under a read that is running in another thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass




def watch(sock: socket.socket | None) -> None:
    """Hand a connection's socket to the watchdog of the call this thread is making."""
    watchdog = getattr(CURRENT, "watchdog", None)
    if watchdog is not None:
        watchdog.attach(sock)
