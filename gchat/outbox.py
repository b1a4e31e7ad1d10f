"""One client's outbox: what the node has to write to it, and the greenlet
that writes it.

Every message not yet completely handed to the kernel is here, the one being
written included: a message leaves only once its last byte is sent. Whatever
is left when the connection ends (the peer stopped reading, vanished, or a
write failed) is still here, in order, and is stored offline for its user:
nothing accepted is dropped (docs/robustness.md).

It knows the client only as a `Transport`, and the store only through its
`Owner`, so its tests run without a socket or a database (tests/test_outbox.py).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import gevent
from gevent.event import Event

from gchat.errors import Unavailable
from gchat.transport import Transport

Mark = tuple[int, int]  # a log entry: (conversation id, seq)

log = logging.getLogger(__name__)

# bytes joined for one send: a burst goes out in few system calls, without
# copying a whole (up to outbox_max_bytes) outbox at once
WRITE_CHUNK = 256 * 1024
# A paced client (see Outbox._write_paced) that is sent more than one frame
# per gap falls behind for good: past this many queued frames (160 ms of
# gaps at the default 5 ms) its outbox is written in bursts again, as any
# client's, rather than grow until the client is cut off as a slow reader.
PACED_MAX = 32


class Owner(Protocol):
    """The connection an outbox belongs to. One reference, not a callback
    per hook: an idle connection's memory is counted in bytes
    (docs/benchmarks.md)."""

    def who(self) -> str:
        """Who the client is, for log lines."""

    def cut_off(self) -> None:
        """The client is a slow reader, cut off: close the connection."""

    def write_failed(self, e: OSError) -> None: ...

    def store_offline(self, items: list[tuple[int, bytes]]) -> None:
        """Store (user id, JSON text) pairs, in order, in one unit of work;
        Unavailable when the store is down."""


class Outbox:
    """The queue, its bounds, and its writer greenlet.

    Bounds (a reader that does not keep up is cut off, so one client cannot
    make the node hold unbounded memory): `max_messages` counts everything
    queued; `max_bytes` counts the deliveries pushed to it, the memory other
    users make the node hold for this client. Replies to its own requests are
    not counted in bytes: they are one per request (so bounded by the message
    count) and small, except a login reply, which carries the stored backlog
    already in memory, once; were it counted, a backlog over the bound would
    cut the user off at the first live message, at every login, for ever.

    The writer greenlet is spawned on the first write and parked between
    bursts; one idle for a whole sweep (`retire_if_idle`) ends, and the next
    write spawns one again. A parked greenlet is about 5.6 KiB, a quarter of
    an idle connection's memory; spawning one per message instead cost CPU
    and, through the garbage collector, tens of ms of p99 in group chat.
    """

    __slots__ = ("transport", "owner", "max_messages", "max_bytes", "_q", "_bytes", "_head_sent", "_wake",
                 "_writer_g", "_wrote", "_retire", "_closing", "_flushed", "cut", "_holding", "_held",
                 "_unsent_at_end", "pace", "_last_sent", "_direct_at", "_loop")

    def __init__(self, transport: Transport, owner: Owner, max_messages: int, max_bytes: int) -> None:
        self.transport = transport
        self.owner = owner
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # (JSON body, bytes counted against max_bytes, user id, what to store
        # for that user if the body is never written: None for the body
        # itself, the log's (conversation, seq) entries it hands over). What
        # came from the conversation log is not stored again: the user's
        # delivered cursor stays below it until it is written (unsent()).
        self._q: deque[tuple[bytes, int, int, Sequence[bytes] | None, Sequence[Mark]]] = deque()
        self._unsent_at_end: dict[int, int] = {}
        self._bytes = 0
        self._head_sent = 0  # bytes of the head message _send_now handed to the kernel
        self._wake = Event()
        self._writer_g: gevent.Greenlet[[], None] | None = None
        self._wrote = False  # since the last sweep
        self._retire = False
        self._closing = False  # write what is queued, then the writer ends
        self._flushed = False  # the last flush is over: what is queued now is stored
        self.cut = False  # cut off as a slow reader: nothing more is written
        # pushes wait here while the client's own request is handled
        self._holding = False
        self._held: list[tuple[bytes, int, Mark | None]] = []
        # seconds between two frames, for a client that reads one frame per
        # recv (see _write_paced); 0 = write bursts whole
        self.pace = 0.0
        self._last_sent = 0.0  # when the last frame went out whole, while pacing
        self._direct_at = -1  # the event loop's iteration of the last push written at once
        # the event loop of the thread that serves the connection (and runs
        # the log's writer): looked up once, not at every push
        self._loop = gevent.get_hub().loop

    def __len__(self) -> int:
        return len(self._q)

    @property
    def writing(self) -> bool:
        """A writer greenlet is alive (writing or parked)."""
        return self._writer_g is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes counted against max_bytes (deliveries, not replies)."""
        return self._bytes

    # --- what goes in --------------------------------------------------------

    def push(self, body: bytes, user_id: int, mark: Mark | None = None) -> None:
        """A delivery for `user_id`: a log entry (`mark`: conversation, seq),
        or else stored for it if never written.

        The first push of an event-loop iteration to an idle outbox is
        written at once by the caller when the kernel takes it whole: waking
        the parked writer greenlet for it cost 24-43 us of CPU against 4-6
        inline (scripts/push-speed), and most deliveries are alone. Later
        pushes of the same iteration go to the writer, which sends a burst in
        one system call."""
        if self._holding:
            self._held.append((body, user_id, mark))
            return
        iteration = self._loop.iteration
        if iteration != self._direct_at:
            self._direct_at = iteration
            if self._send_now(body):
                return
        self._enqueue(body, len(body), user_id, None if mark is None else (), (mark,) if mark else ())

    def unsent(self) -> dict[int, int]:
        """conversation -> the lowest seq of the log not handed to the kernel
        (queued, held, or left when the connection ended): a classic client's
        delivered cursor stays below it (gchat/sessions.py)."""
        low = dict(self._unsent_at_end)
        for *_, marks in self._q:
            for conv, seq in marks:
                if seq < low.get(conv, seq + 1):
                    low[conv] = seq
        for _, _, mark in self._held:
            if mark is not None and mark[1] < low.get(mark[0], mark[1] + 1):
                low[mark[0]] = mark[1]
        return low

    def settle_log_entries(self, timeout: float) -> dict[int, int]:
        """The user's session ends (a log-out) and its delivered cursor is
        about to be written: log entries held behind the request's reply are
        withdrawn (the next login hands them over), and those queued get up
        to `timeout` seconds to be written, so that none is handed to this
        connection after the cursor was written below it (twice, then).
        Returns the withdrawn ones as unsent() does: the cursor stays below."""
        withdrawn: dict[int, int] = {}
        for _, _, mark in self._held:
            if mark is not None and mark[1] < withdrawn.get(mark[0], mark[1] + 1):
                withdrawn[mark[0]] = mark[1]
        self._held = [h for h in self._held if h[2] is None]
        deadline = time.monotonic() + timeout
        while (self._writer_g is not None and not self.cut and any(marks for *_, marks in self._q)
               and time.monotonic() < deadline):
            gevent.sleep(0.005)
        return withdrawn

    def queued(self) -> int:
        """Bytes of deliveries queued or held."""
        return self._bytes + sum(len(body) for body, _, _ in self._held)

    def reply(self, body: bytes, user_id: int = 0, restore: Sequence[bytes] = (),
              marks: Sequence[Mark] = ()) -> None:
        """A reply to the client's own request. `restore`: messages it hands
        over, already taken from the store, stored again for `user_id` if it
        is never written. Written at once, without a writer, when the kernel
        takes it whole (a client that only logs in never needs a writer)."""
        if not self._send_now(body):
            self._enqueue(body, 0, user_id, restore, marks)

    def hold(self) -> None:
        """From now, pushes wait behind the replies of the request being
        handled (a login ack precedes the messages that arrived during it)."""
        self._holding = True

    def release(self) -> None:
        """The request's replies are queued: the pushes held meanwhile follow."""
        self._holding = False
        if self._held:
            held, self._held = self._held, []
            for body, user_id, mark in held:
                self._enqueue(body, len(body), user_id, None if mark is None else (), (mark,) if mark else ())

    def _enqueue(self, body: bytes, counted: int, user_id: int, keep: Sequence[bytes] | None,
                 marks: Sequence[Mark] = ()) -> None:
        q = self._q
        q.append((body, counted, user_id, keep, marks))
        self._bytes += counted
        # a lone message may exceed the byte bound: it is in memory already, and must get out
        if len(q) > self.max_messages or (self._bytes > self.max_bytes and len(q) > 1):
            if not self.cut:
                self._cut_off()
            return
        if self._flushed:
            return  # the connection is over: what is queued now is stored
        if self._writer_g is not None:
            self._wake.set()
        else:
            self._retire = False
            self._writer_g = gevent.spawn(self._writer)

    def _send_now(self, body: bytes) -> bool:
        """Write body at once, without a writer and without entering the
        queue, when nothing is queued before it (nor being written) and the
        kernel takes it whole: True. False leaves it to the caller to queue
        for a writer: would block, an error (which the writer meets again
        and reports), or partly sent (the writer goes on from `_head_sent`:
        body is then the head, as the queue was empty)."""
        if self._q or self._flushed:
            return False
        if self.pace and time.monotonic() - self._last_sent < self.pace:
            return False  # too close behind the last frame: the writer waits out the gap
        try:
            data = self.transport.frame(body)
            sent = self.transport.send_nowait(data)
        except OSError:
            return False
        if sent < len(data):
            self._head_sent = sent
            return False
        if self.pace:
            self._last_sent = time.monotonic()
        return True

    def _cut_off(self) -> None:
        """A slow reader: stop writing to it at once. The queue stays as it
        is and is stored offline when the connection ends."""
        log.warning(
            "%s: slow reader: %d messages (%d bytes of deliveries) queued, over the bound of %d messages or "
            "%d bytes; disconnecting, what is queued for it is stored offline",
            self.owner.who(), len(self._q), self._bytes, self.max_messages, self.max_bytes,
        )
        self.cut = True
        self.owner.cut_off()
        # both ways: a writer blocked on the full socket fails at once; bytes
        # already in the kernel stay readable, followed by FIN
        self.transport.shutdown()

    # --- the writer ----------------------------------------------------------

    def _writer(self) -> None:
        """Drain the queue, park until woken; end when closing or retired
        with nothing to write. No switch comes between the last look at the
        queue and the end, so a message is never left without a writer."""
        try:
            while not self.cut:
                if not self._q:
                    if self._closing or self._retire:
                        return
                    self._wake.clear()
                    self._wake.wait()
                    continue
                self._wrote = True
                self._write_some()
        except OSError as e:
            if not self.cut:
                self.owner.write_failed(e)
        finally:
            self._writer_g = None

    def _write_some(self) -> None:
        """Send the head of the queue; a message leaves only when its last
        byte (and terminator, or WebSocket header) went to the kernel."""
        if self.pace and len(self._q) <= PACED_MAX:
            self._write_paced()
            return
        frame = self.transport.frame
        parts: list[bytes] = []
        ends: list[int] = []
        size = 0
        for body, *_ in self._q:
            wire = frame(body)
            parts.append(wire)
            size += len(wire)
            ends.append(size)
            if size >= WRITE_CHUNK:
                break
        data = memoryview(b"".join(parts))
        sent, done = self._head_sent, 0  # the head may have been begun by _send_now
        self._head_sent = 0
        send = self.transport.send
        while sent < size:
            sent += send(data[sent:])
            while done < len(ends) and ends[done] <= sent:
                self._bytes -= self._q.popleft()[1]
                done += 1

    def _write_paced(self) -> None:
        """One frame, in a send of its own, at least `pace` seconds after the
        previous one. For a client that speaks only docs/protocol.md part A:
        the original ChatClient reads with one recv of 1,024 bytes, parses up
        to the first NUL and drops the rest of what that recv returned. TCP
        keeps no boundaries: a recv returns everything that arrived since the
        last one, however many segments it came in, so one segment per frame
        (TCP_NODELAY, one send each) is not enough. What makes the reader see
        frames apart is time: the next frame arrives after its reader went
        back to recv. Nothing on the wire can tell when that is, so the gap
        is a setting (classic_gap), measured in docs/benchmarks.md."""
        wait = self._last_sent + self.pace - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
            if self.cut:
                return
        body = self._q[0][0]
        data = memoryview(self.transport.frame(body))
        sent, self._head_sent = self._head_sent, 0
        send = self.transport.send
        while sent < len(data):
            sent += send(data[sent:])
        self._last_sent = time.monotonic()
        self._bytes -= self._q.popleft()[1]

    def retire_if_idle(self) -> None:
        """Called once a sweep: a parked writer that wrote nothing since the
        last sweep ends (memory of idle connections)."""
        if self._writer_g is not None and not self._wrote and not self._q:
            self._retire = True
            self._wake.set()
        self._wrote = False

    def wake_to_close(self) -> None:
        """The connection is closing: a parked writer ends once the queue is written."""
        self._closing = True
        self._wake.set()

    # --- the end -------------------------------------------------------------

    def finish(self, timeout: float) -> None:
        """The connection is over. What is queued gets `timeout` seconds to
        reach the kernel (none after a cut); then every message not written
        is stored for its user, in order."""
        self.wake_to_close()
        deadline = time.monotonic() + timeout
        # a push during the join may spawn a new writer once the old one is
        # done: flush with it too, until no writer is left
        while (writer := self._writer_g) is not None:
            if not self.cut:
                writer.join(timeout=max(0.0, deadline - time.monotonic()))
            writer.kill(block=True)  # a writer still blocked leaves its message queued
            if self._writer_g is writer:  # killed before it could start: its finally never ran
                self._writer_g = None
        self._flushed = True
        self._store_unwritten()

    def _store_unwritten(self) -> None:
        """Store what is queued, until it stays empty: pushes may arrive
        while a batch is being stored. Replies keep only what they hand over."""
        stored = 0
        while self._q:
            # the log keeps its entries: only the delivered cursor must stay below them
            self._unsent_at_end = self.unsent()
            items = [
                (uid, text)
                for body, _, uid, keep, _ in self._q
                if uid
                for text in (keep if keep is not None else (body,))
            ]
            self._q.clear()
            self._bytes = 0
            if not items:
                continue
            try:
                self.owner.store_offline(items)
                stored += len(items)
            except Unavailable:
                log.error("%s: lost %d undelivered message(s): database unavailable", self.owner.who(), len(items))
        if stored:
            log.info("%s: stored %d unsent message(s) offline", self.owner.who(), stored)
