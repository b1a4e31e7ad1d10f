"""Coalescing concurrent calls into one unit of work.

A login storm (thousands of users reconnecting after a node died) is many
small, identical transactions: load a user, mark it online, read its friends,
groups and stored messages. Each costs a pool checkout, a ping, a commit and
the ORM's per-statement overhead, whatever the number of rows. A `Batcher`
makes the callers that arrive while one batch is in the database wait for the
next, which serves them all with the same few statements: one caller alone
still gets its answer after one round of queries, a storm gets bigger batches
instead of a longer queue.

The caller's view stays synchronous: `batcher(key)` returns that key's result
(or raises) once the batch holding it is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar, cast

import gevent
from gevent.event import AsyncResult, Event

K = TypeVar("K")
V = TypeVar("V")
V_contra = TypeVar("V_contra", contravariant=True)

# rows named in one IN (...) list: large enough for any storm to pay off,
# small enough for a statement of bounded size
MAX_BATCH = 500
# a new worker waits what is left of a linger only when the stream's rate
# says that many more calls come in it (Batcher._drain). With one, a stream
# whose calls come in pairs (two nodes' members taking turns in a group: a
# node's messages 3 ms apart, then 10) held the second of each pair for the
# rest of the linger, for nothing: the next call came after it. A group
# message's p50 across two nodes at 300 a second was 8.3 ms against 1.7-1.9
# locally (docs/benchmarks.md, "A linger that waited for nothing")
PACE_MIN = 2


class Sink(Protocol[V_contra]):
    """Where a call's result goes: an AsyncResult (submit), or the caller's
    own object (submit_to), set by the batch's worker greenlet."""

    def set(self, value: V_contra) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


class Batcher(Generic[K, V]):
    def __init__(self, run: Callable[[list[K]], Sequence[V]], max_batch: int = MAX_BATCH,
                 linger: float = 0.0, gather: int = 0) -> None:
        """`run(keys)` returns one result per key, in order. An exception it
        raises is raised to every caller of that batch. `linger`: seconds to
        wait before a batch that follows another at once (calls kept coming
        while the last one ran), so that it gathers more; one that follows a
        batch taken less than `linger` ago waits what is left of it when the
        calls' rate says more come in that time; the first after a quiet
        spell of `linger` goes at once (and one that would gather fewer than
        PACE_MIN more). `gather`: a lingering batch goes as
        soon as this many calls wait (0: it waits the whole linger), so a
        long linger costs a slow stream latency, not a fast one."""
        self._run = run
        self._linger = linger
        self._gather = min(gather, max_batch) if gather > 0 else max_batch
        self._max = max_batch
        self._pending: list[tuple[K, Sink[V]]] = []
        self._worker: gevent.Greenlet[[], None] | None = None
        self._lingering: Event | None = None  # set when enough calls wait to end a linger
        self._taken = -linger  # when the last batch was taken (time.monotonic; with a linger)
        self._rate = 0.0  # calls a second, as the last batches saw them (with a linger)

    def __call__(self, key: K) -> V:
        return cast(V, self.submit(key).get())  # typed V | None as set() may pass nothing; _drain always passes a V

    def submit(self, key: K) -> AsyncResult[V]:
        """Queue key for the next batch without waiting: its result (or
        exception) arrives in the AsyncResult."""
        result: AsyncResult[V] = AsyncResult()
        self.submit_to(key, result)
        return result

    def submit_to(self, key: K, sink: Sink[V]) -> None:
        """Queue key for the next batch; its result (or exception) is set on
        sink by the worker greenlet, which must not block there. An
        AsyncResult's waiters and links are woken through the event loop; a
        sink of the caller's own may act at once, with no AsyncResult, link
        and loop callback per call (the log's writer: one per chat message)."""
        self._pending.append((key, sink))
        if self._worker is None:
            self._worker = gevent.spawn(self._drain)
        elif self._lingering is not None and len(self._pending) >= self._gather:
            self._lingering.set()

    def _drain(self) -> None:
        try:
            first = True
            while self._pending:
                if self._linger and len(self._pending) < self._gather:
                    if not first:  # after a batch that ran while calls came: the whole linger
                        wait = self._linger
                    else:
                        # a new worker waits what is left of a linger since the
                        # last batch was taken, when the stream's rate says more
                        # calls come in it (PACE_MIN): at 1,000 messages a
                        # second the worker often found none waiting and
                        # ended, and a batch held three. A slower stream (100
                        # a second) would only wait, its batches held one
                        # either way
                        wait = self._taken + self._linger - time.monotonic()
                        if wait * self._rate < PACE_MIN:
                            wait = 0
                    if wait > 0:
                        self._lingering = Event()
                        try:
                            self._lingering.wait(wait)
                        finally:
                            self._lingering = None
                if self._linger:
                    now = time.monotonic()
                    # calls a second, from this batch's size and its distance to the last (smoothed)
                    self._rate = (self._rate + min(len(self._pending), self._max) / max(now - self._taken, 1e-6)) / 2
                    self._taken = now
                first = False
                if len(self._pending) <= self._max:  # the common case: all of it, no copies
                    batch, self._pending = self._pending, []
                else:
                    batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                try:
                    values = self._run([key for key, _ in batch])
                except BaseException as e:  # the callers decide; this greenlet goes on
                    for _, result in batch:
                        result.set_exception(e)
                    if not isinstance(e, Exception):
                        raise
                    continue
                for (_, result), value in zip(batch, values, strict=True):
                    result.set(value)
        finally:
            self._worker = None
