"""Calls and jobs wait in one queue for max_concurrency's slots; a call on an open connection
is sent by the thread that gives it its slot and read when its answer arrives.

Why (issue 11, measured at 100 HTTPS portals, 200 ms each): with a worker thread per call,
300 threads took turns at the GIL for every send, ~260 us of CPU each, and the last call of
a scrape went out ~85 ms after the first. Sent from one thread they go out in ~50 ms; while
the portals think, one poller thread waits on every socket, so no thread is parked per call.

The poller reads what arrives without waiting (transport.drain) and, once a plain answer is
all there, reads and parses it itself: handing each answer to a worker cost ~0.2 ms of CPU
per portal (a sixth of the exporter's) in thread wake-ups at 100 HTTPS portals. An answer that
is not plain (chunked, unsized, a 1xx) or ends early goes to a worker, as every answer did
before, and the worker may wait for the rest of it.
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from exporter.client import DocSpaceClient, Pending
from exporter.errors import FetchError
from exporter.transport import COMPLETE, ELSEWHERE, MORE

log = logging.getLogger(__name__)

# Calls sent ahead are handed to the poller in batches of this many, so the answers to the
# first ones are read while the last ones are still being sent (1000 portals).
AHEAD_BATCH = 64
# Answers after which a call goes on (a Retry-After sleep, a login again): the rest of the
# call then waits for a slot of its own.
GOES_ON = frozenset({401, 429})


class Queued(NamedTuple):
    """A backup call, or a job, waiting for a slot."""

    client: DocSpaceClient | None
    future: Future[Any] | None  # a backup call's
    run: Callable[[], None]  # the whole call or job, in a worker thread
    ahead: Callable[[], Pending | None] | None = None  # send it ahead instead (start())


def settle(future: Future[Any], fn: Callable[[float], Any], deadline: float) -> None:
    """Make one call the usual way and put its outcome in its future."""
    try:
        future.set_result(fn(deadline))
    except BaseException as exc:  # noqa: BLE001 - the collector records it
        future.set_exception(exc)


class _Ahead:
    """A call sent ahead (DocSpaceClient.start): read once its answer is there, by the poller
    itself when every byte of it has arrived, else by a worker."""

    __slots__ = ("client", "pending", "future", "read_done", "buf")

    def __init__(self, client: DocSpaceClient, pending: Pending, future: Future[Any],
                 read_done: Callable[[], None]) -> None:
        self.client = client
        self.pending = pending
        self.future = future
        self.read_done = read_done  # frees the call's slot
        self.buf = bytearray()  # what drain() read of the answer so far

    def fileno(self) -> int:
        return self.pending.fileno()

    def drain(self) -> int:
        """Read what has arrived, without waiting -> transport.MORE, COMPLETE or ELSEWHERE."""
        try:
            return self.client.drain(self.pending, self.buf)
        except Exception:  # noqa: BLE001 - read() will tell what is wrong
            return ELSEWHERE

    def read(self, goes_on: Callable[[Callable[[], None]], None]) -> None:
        """Read the answer, free the call's slot, then parse the answer here, or queue the
        rest of the call (`goes_on`) when it goes on: a Retry-After sleep or a login again
        takes a slot of its own. Blocks only when drain() did not find the answer COMPLETE
        (a worker does that read)."""
        try:
            answer = self.client.receive(self.pending, bytes(self.buf))
        except BaseException as exc:  # noqa: BLE001 - the collector records it
            self.read_done()
            self.future.set_exception(exc)
            return
        self.read_done()
        if answer[1] in GOES_ON:
            goes_on(lambda: self.complete(answer))
        else:
            self.complete(answer)

    def complete(self, answer: tuple[bytes, int, float | None]) -> None:
        try:
            self.future.set_result(self.client.complete(self.pending, answer))
        except BaseException as exc:  # noqa: BLE001 - the collector records it
            self.future.set_exception(exc)

    def fail(self, exc: BaseException) -> None:
        """The answer cannot be read (the exporter is shutting down)."""
        self.client.abandon(self.pending)
        self.read_done()
        self.future.set_exception(exc)


class _Poller:
    """One thread that waits for the answers of every call sent ahead, and hands each call
    to `ready` once the first bytes of its answer are there, or its Watchdog cut the socket
    at the deadline (which makes it readable too), so no thread is parked per call.
    Only this thread touches the selector; others queue new calls and wake it."""

    def __init__(self, ready: Callable[[_Ahead, bool], bool]) -> None:
        self._ready = ready
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._new: list[_Ahead] = []
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="docspace-poller", daemon=True)
        self.thread.start()

    def add(self, calls: list[_Ahead]) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._new.extend(calls)
        if closed:
            for call in calls:
                self._ready(call, True)
            return
        self._wake()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # BlockingIOError: wake-ups already pending, which is enough
            pass

    def _run(self) -> None:
        waiting: dict[int, _Ahead] = {}
        while True:
            for key, _ in self._sel.select():
                call = key.data
                if call is not None:
                    self._sel.unregister(key.fd)
                    del waiting[key.fd]
                    if self._ready(call, False):  # not all of its answer is there yet
                        try:
                            self._sel.register(key.fd, selectors.EVENT_READ, call)
                            waiting[key.fd] = call
                        except (OSError, ValueError, KeyError):
                            self._ready(call, True)  # a worker's read tells what happened
                    continue
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass
                with self._lock:
                    new, self._new = self._new, []
                    closed = self._closed
                for call in new:
                    try:
                        fd = call.fileno()
                        self._sel.register(fd, selectors.EVENT_READ, call)
                        waiting[fd] = call
                    except (OSError, ValueError, KeyError, AttributeError):
                        self._ready(call, True)  # no socket to wait on: reading tells why
                if closed:
                    for call in waiting.values():
                        self._ready(call, True)
                    self._sel.close()
                    self._wake_r.close()
                    self._wake_w.close()
                    return


class Dispatcher:
    """max_concurrency slots, the queue of calls and jobs waiting for one, the workers (as
    many as slots) and the poller.

    Nothing waits for a slot inside a worker: a job that did once held every worker while
    the slots went to calls whose answers then had no worker to read them. Here a worker is
    only ever given work that holds a slot (a whole call, a job, or the read of a call sent
    ahead, which keeps its slot until read), so the workers are never short."""

    def __init__(self, slots: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="docspace-call")
        self._slots = threading.BoundedSemaphore(slots)
        self._waiting: collections.deque[Queued] = collections.deque()
        self._lock = threading.Lock()
        self.poller = _Poller(self._read)
        self.sent_ahead = 0  # calls sent on an open connection (a statistic, unlocked)
        self.read_in_poller = 0  # their answers the poller read itself (a statistic)

    def queue(self, items: list[Queued]) -> None:
        """Add calls and jobs at the end of the queue, then give out free slots."""
        with self._lock:
            self._waiting.extend(items)
        self.pump()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.poller.close()

    def pump(self) -> None:
        """Give free slots to waiting calls and jobs, first come first served. A backup call
        goes out from this thread on an open connection (DocSpaceClient.start) and is read
        when its answer arrives; one that cannot (no open connection yet, a login due, the
        host's slots taken), and every job, runs in a worker, in the slot it was given."""
        ahead: list[_Ahead] = []
        while True:
            with self._lock:
                if not self._waiting or not self._slots.acquire(blocking=False):
                    break
                item = self._waiting.popleft()
            if item.ahead is not None:
                try:
                    pending = item.ahead()
                except BaseException as exc:  # noqa: BLE001 - the send failed: call over
                    self._slots.release()
                    assert item.future is not None
                    item.future.set_exception(exc)
                    continue
                if pending is not None:
                    assert item.client is not None and item.future is not None
                    self.sent_ahead += 1
                    ahead.append(_Ahead(item.client, pending, item.future, self._free))
                    if len(ahead) >= AHEAD_BATCH:
                        self.poller.add(ahead)
                        ahead = []
                    continue
            try:
                self.pool.submit(self._in_slot, item.run)
            except RuntimeError:  # shut down during exit: left to the deadline
                self._slots.release()
        if ahead:
            self.poller.add(ahead)

    def _in_slot(self, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            self._free()

    def _free(self) -> None:
        """A call is over: its slot goes to the next waiting call."""
        self._slots.release()
        self.pump()

    def _read(self, call: _Ahead, elsewhere: bool) -> bool:
        """In the poller: the socket of a call sent ahead is readable. Read what has arrived
        (drain); once the whole answer is there, read and parse it in this thread: nothing
        in that waits, and a worker per answer cost a sixth of the exporter's CPU in thread
        hand-offs (benchmarks/README.md). An answer that is not plain, ends early or fails is
        read by a worker, as every answer was before; `elsewhere` sends it there at once.
        -> True to wait for more of the answer."""
        state = ELSEWHERE if elsewhere else call.drain()
        if state == MORE:
            return True
        if state == COMPLETE:
            self.read_in_poller += 1
            try:
                call.read(self._goes_on)
            except Exception:  # noqa: BLE001 - the poller thread must go on
                log.exception("reading an answer failed")
            return False
        try:
            self.pool.submit(call.read, self._goes_on)
        except RuntimeError:  # shut down during exit
            call.fail(FetchError("connection", "exporter is shutting down"))
        return False

    def _goes_on(self, rest: Callable[[], None]) -> None:
        """The rest of a call sent ahead waits for a slot like any call."""
        self.queue([Queued(None, None, rest)])
