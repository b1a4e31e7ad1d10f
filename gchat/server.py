"""The network edge: a gevent StreamServer, a Connection per client (reader
loop, outbox, one writer greenlet), and nothing of the business rules.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from gchat import service
from gchat.config import Settings
from gchat.errors import Unavailable
from gchat.protocol import (
    Errno,
    FrameDecoder,
    FrameTooLarge,
    MsgId,
    ProtocolError,
    dumps,
    encode,
    error_reply,
    loads,
    parse_request,
    refusal,
)
from gchat.ratelimit import FloodGuard, Verdict

if TYPE_CHECKING:
    from gchat.service import Services

log = logging.getLogger(__name__)

RECV_SIZE = 64 * 1024
# how long a closing connection may take to hand its last replies to the kernel
FLUSH_TIMEOUT = 5.0
# bytes joined for one send: a burst goes out in few system calls, without
# copying a whole (up to outbox_max_bytes) outbox at once
WRITE_CHUNK = 256 * 1024
# a connection that wrote nothing for between one and two of these periods
# gives up its writer greenlet until its next write
WRITER_IDLE = 10.0
# Connections the kernel queues before accept(). gevent's default of 128
# overflowed in a reconnect storm (TcpExtListenOverflows): each dropped SYN
# is retried after a second. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
# frames handled in a row before the reader lets other greenlets run
YIELD_EVERY = 8


class Connection:
    """One client. The reader greenlet (the StreamServer's handler) decodes
    and handles frames in order; a writer greenlet drains the outbox, so a
    slow client never blocks whoever is delivering to it.

    The outbox holds every message not yet completely handed to the kernel,
    the one being written included: the writer removes a message only once
    its last byte is sent. Whatever is left when the connection ends (the
    peer stopped reading, vanished, or the write failed) is still there, in
    order, and is stored offline for its user: nothing accepted is dropped.
    """

    def __init__(self, sock: socket.socket, address: tuple[str, int], node: Node) -> None:
        self.sock = sock
        self.address = address
        self.node = node
        self.svc: Services = node.services
        self.settings = node.settings
        self.decoder = FrameDecoder(self.settings.frame_max)
        self._user_id: int | None = None
        self.logged_in_once = False
        self.user_name = ""
        # (JSON body, user id, what to store offline for that user if the body
        # is never written): a delivery keeps itself, a login reply the
        # offline messages it hands over (taken from the store already), any
        # other reply nothing
        self._out: deque[tuple[bytes, int, tuple[bytes, ...]]] = deque()
        self._out_bytes = 0
        self._head_sent = 0  # bytes of the head message _send_now handed to the kernel
        # The writer is spawned on the first write and parked between bursts;
        # a connection idle for a whole sweep (Node._retire_idle_writers)
        # loses it, and the next write spawns one again. A parked greenlet is
        # about 5.6 KiB, a quarter of an idle connection's memory; spawning
        # one per message instead cost CPU and, through the garbage
        # collector, tens of ms of p99 in group chat.
        self._wake = Event()
        self._writer_g: gevent.Greenlet | None = None
        self._wrote = False  # since the last sweep
        self._retire = False
        self._flushed = False  # the last flush is over: what is queued now is stored
        self._busy = False
        self._held: list[tuple[bytes, int]] = []
        self._closing = False
        self._cut = False  # cut off as a slow reader: nothing more is written
        self.close_reason = ""
        self._deadline: gevent.Greenlet | None = None
        self._guard = FloodGuard(self.settings.rate, self.settings.rate_burst) if self.settings.rate > 0 else None

    # --- Peer, as the service layer sees it --------------------------------

    @property
    def user_id(self) -> int | None:
        return self._user_id

    @user_id.setter
    def user_id(self, value: int | None) -> None:
        self._user_id = value
        if value is not None and not self.logged_in_once:
            self.logged_in_once = True
            if self._deadline is not None:  # its job is done: do not keep it for login_timeout
                self._deadline.kill(block=False)

    def push(self, body: bytes) -> None:
        """Queue a delivered message. While this connection's own request is
        being handled, pushes wait behind its reply: a login ack comes before
        the messages that arrived during the login."""
        if self._busy:
            self._held.append((body, self.user_id or 0))
        else:
            self._enqueue(body, self.user_id or 0, (body,))

    def close(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        self._wake.set()
        try:
            self.sock.shutdown(socket.SHUT_RD)  # wakes the reader; the writer may still flush
        except OSError:
            pass

    # --- outbox -------------------------------------------------------------

    def _enqueue(self, body: bytes, user_id: int, keep: tuple[bytes, ...] = (), direct: bool = False) -> None:
        self._out.append((body, user_id, keep))
        self._out_bytes += len(body)
        s = self.settings
        # one message alone may exceed the byte bound (a login reply with a
        # large offline backlog): it is in memory already, and must get out
        if len(self._out) > s.outbox_max_messages or (self._out_bytes > s.outbox_max_bytes and len(self._out) > 1):
            if not self._cut:
                self._cut_off()
            return
        if self._writer_g is not None:
            self._wake.set()
        elif not self._flushed:
            if direct and len(self._out) == 1 and self._send_now():
                return
            self._retire = False
            self._writer_g = gevent.spawn(self._writer)

    def _send_now(self) -> bool:
        """A reply, to a connection with no writer and nothing queued: its
        reader writes it when the kernel takes it whole at once, so a
        connection that only logged in never needs a writer. Anything else
        (would block, partly sent, an error) is left to a writer."""
        body = self._out[0][0]
        data = body + self.decoder.reply_terminator
        try:
            sent = self.sock.send(data, 0, 0.0)  # timeout 0: never wait here
        except OSError:  # EAGAIN, or an error the writer meets and reports
            return False
        if sent < len(data):
            self._head_sent = sent
            return False
        self._out.popleft()
        self._out_bytes -= len(body)
        return True

    def retire_writer_if_idle(self) -> None:
        """Called once a sweep: a parked writer that wrote nothing since the
        last sweep ends (memory of idle connections)."""
        if self._writer_g is not None and not self._wrote and not self._out:
            self._retire = True
            self._wake.set()
        self._wrote = False

    def _cut_off(self) -> None:
        """A slow reader: stop writing to it at once. The outbox stays as it
        is and is stored offline when the connection ends."""
        log.warning(
            "%s: slow reader: %d messages (%d bytes) queued, over the bound of %d messages or %d bytes; "
            "disconnecting, what is queued for it is stored offline",
            self._who(), len(self._out), self._out_bytes,
            self.settings.outbox_max_messages, self.settings.outbox_max_bytes,
        )
        self._cut = True
        self.close("slow reader")
        try:
            # SHUT_WR too: a writer blocked on the full socket fails at once.
            # Bytes already in the kernel stay readable, followed by FIN.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _writer(self) -> None:
        """Drain the outbox, park until woken; end when closing or retired
        with nothing to write. No switch comes between the last look at the
        outbox and the end, so a message is never left without a writer."""
        try:
            while not self._cut:
                if not self._out:
                    if self._closing or self._retire:
                        return
                    self._wake.clear()
                    self._wake.wait()
                    continue
                self._wrote = True
                self._write_some()
        except OSError as e:
            if not self._cut:
                log.info("%s: write failed (%s), closing", self._who(), e)
            self.close("write failed")
        finally:
            self._writer_g = None

    def _write_some(self) -> None:
        """Send the head of the outbox; a message leaves the outbox only when
        its last byte (and terminator) went to the kernel."""
        term = self.decoder.reply_terminator
        parts: list[bytes] = []
        ends: list[int] = []
        size = 0
        for body, _, _ in self._out:
            parts.append(body)
            size += len(body) + len(term)
            ends.append(size)
            if size >= WRITE_CHUNK:
                break
        data = memoryview(term.join(parts) + term)
        sent, done = self._head_sent, 0  # the head may have been begun by _send_now
        self._head_sent = 0
        while sent < size:
            sent += self.sock.send(data[sent:])
            while done < len(ends) and ends[done] <= sent:
                body, _, _ = self._out.popleft()
                self._out_bytes -= len(body)
                done += 1

    def _reply(self, reply: dict[str, Any]) -> None:
        offline = reply.get("offlinemsg") if reply.get("msgid") == MsgId.LOGIN_ACK else None
        if offline and self.user_id:
            # the messages were removed from the store for this reply: if it
            # is never written, they go back
            self._enqueue(dumps(reply), self.user_id, tuple(m.encode() for m in offline), direct=True)
        else:
            self._enqueue(dumps(reply), 0, direct=True)

    # --- reader -------------------------------------------------------------

    def serve(self) -> None:
        self._deadline = deadline = gevent.spawn_later(self.settings.login_timeout, self._login_deadline)
        try:
            while not self._closing:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    break
                try:
                    frames = self.decoder.feed(data)
                except FrameTooLarge as e:
                    self._handle_frames(e.frames)
                    if not self._closing:
                        self._reply(error_reply(e))
                        self.close("frame too large")
                        log.info("%s: frame over %d bytes, closed", self._who(), self.settings.frame_max)
                    break
                self._handle_frames(frames)
        except OSError as e:
            # ETIMEDOUT here is TCP keepalive finding a peer that vanished
            log.info("%s: connection lost (%s)", self._who(), e)
        finally:
            deadline.kill(block=False)
            self._finish()

    def _handle_frames(self, frames: list[bytes]) -> None:
        for i, frame in enumerate(frames):
            if self._closing:
                self._log_dropped(frames[i:])
                return
            self._handle_frame(frame)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # a pipelined burst is handled without I/O in between: let the
                # writers run (this one's, and those of its recipients), so a
                # burst does not pile up in outboxes whose clients do read
                gevent.sleep(0)

    def _handle_frame(self, frame: bytes) -> None:
        if self._guard is not None:
            verdict = self._guard.check(time.monotonic())
            if verdict is Verdict.REFUSE:
                self._refuse(frame)
                return
            if verdict is Verdict.CUT:
                log.warning(
                    "%s: flooding: %d requests refused with errno 10 (rate %g/s, burst %d) and still "
                    "coming; disconnecting",
                    self._who(), self._guard.refused, self.settings.rate, self.settings.rate_burst,
                )
                self.close("flood")
                return  # the caller logs this frame and the rest as dropped
        self._busy = True
        req = None
        try:
            req = parse_request(frame, self.svc.limits)
            replies = service.handle(self.svc, self, req)
        except ProtocolError as e:
            replies = [error_reply(e)]
        except Exception:
            log.exception("%s: request failed", self._who())
            replies = [refusal(Errno.UNAVAILABLE, "internal error", req.msgid if req else 0, req.seq if req else None)]
        finally:
            self._busy = False
        for reply in replies:
            self._reply(reply)
        held, self._held = self._held, []
        for body, uid in held:
            self._enqueue(body, uid, (body,))

    def _refuse(self, frame: bytes) -> None:
        """errno 10, addressed to the request (msgid, seq) when it can be read."""
        try:
            req = parse_request(frame, self.svc.limits)
            msgid, seq = int(req.msgid), req.seq
        except ProtocolError as e:
            msgid, seq = e.msgid, e.seq
        self._reply(error_reply(ProtocolError(Errno.RATE_LIMITED, "rate limited, slow down", msgid, seq)))

    def _log_dropped(self, frames: list[bytes]) -> None:
        """Frames read but never handled because the connection is closing.
        Only their msgids and sizes are logged: a frame may hold a password."""
        if not frames and not self.decoder.buffered:
            return
        kinds: Counter[str] = Counter()
        for frame in frames:
            try:
                obj = loads(frame)
            except ValueError:
                obj = None
            msgid = obj.get("msgid") if isinstance(obj, dict) else None
            kinds[f"msgid {msgid}" if type(msgid) is int else "invalid"] += 1
        summary = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none"
        log.warning(
            "%s: closing (%s): dropped %d unhandled frame(s) (%s, %d bytes) and %d bytes of a partial frame; "
            "none of them was applied",
            self._who(), self.close_reason, len(frames), summary, sum(map(len, frames)), self.decoder.buffered,
        )

    def _login_deadline(self) -> None:
        if not self.logged_in_once:
            log.info("%s: no login within %g s, closing", self._who(), self.settings.login_timeout)
            self.close("login timeout")

    def _finish(self) -> None:
        """The connection is over. Queued replies get a last chance to reach
        the kernel; then every message that could not be written is stored
        for its user, and only then does the user go offline, so a message
        delivered meanwhile is either queued here (and stored with the rest)
        or stored after them: the order at next login is the order sent."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + FLUSH_TIMEOUT
        # a push during the join may spawn a new writer once the old one is
        # done: flush with it too, until no writer is left
        while (writer := self._writer_g) is not None:
            if not self._cut:
                writer.join(timeout=max(0.0, deadline - time.monotonic()))
            writer.kill(block=True)  # a writer still blocked leaves its message in the outbox
            if self._writer_g is writer:  # killed before it could start: its finally never ran
                self._writer_g = None
        self._flushed = True
        self._store_unsent()
        try:
            service.disconnect(self.svc, self)
        except Exception:
            log.exception("%s: disconnect failed", self._who())
        try:
            self.sock.close()
        except OSError:
            pass

    def _store_unsent(self) -> None:
        """Store what is left in the outbox, until it stays empty: pushes may
        arrive while a batch is being stored. Replies (user 0) are dropped."""
        stored = 0
        while self._out:
            items = [(uid, text) for _, uid, keep in self._out if uid for text in keep]
            self._out.clear()
            self._out_bytes = 0
            if not items:
                continue
            try:
                self.svc.router.store_offline_batch(items)
                stored += len(items)
            except Unavailable:
                log.error("%s: lost %d undelivered message(s): database unavailable", self._who(), len(items))
        if stored:
            log.info("%s: stored %d unsent message(s) offline", self._who(), stored)

    def _who(self) -> str:
        host, port = self.address[:2]
        return f"{host}:{port}" + (f" user {self.user_id}" if self.user_id else "")


class Node:
    """The listening server and its live connections."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.connections: set[Connection] = set()
        self._per_ip: dict[str, int] = {}
        # addresses at their limit -> connections refused since it was reached
        self._refused: dict[str, int] = {}
        self._at_limit = False
        # the pool bounds the connections served at once: when it is full the
        # server stops accepting, and new connections wait in the backlog
        self.pool = Pool(settings.max_connections)
        self.server = StreamServer((settings.host, settings.port), self._handle, spawn=self.pool,
                                   backlog=LISTEN_BACKLOG)
        self._stopped = Event()
        self._sweeper: gevent.Greenlet | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.address[:2]
        return host, port

    def start(self) -> None:
        self.server.start()
        self._sweeper = gevent.spawn(self._retire_idle_writers)
        host, port = self.address
        log.info("gchat node %s ready on %s:%d", self.settings.node, host, port)

    def _retire_idle_writers(self) -> None:
        while True:
            gevent.sleep(WRITER_IDLE)
            for conn in list(self.connections):
                conn.retire_writer_if_idle()

    def _handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        ip = address[0]
        if self.settings.max_per_ip and self._per_ip.get(ip, 0) >= self.settings.max_per_ip:
            self._refuse(sock, ip)
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if self.pool.full() and not self._at_limit:
            self._at_limit = True
            log.warning(
                "connection limit of %d reached (max_connections): new connections wait in the "
                "listen backlog until one closes", self.settings.max_connections,
            )
        try:
            _tune(sock, self.settings)
            conn = Connection(sock, address, self)
            self.connections.add(conn)
            try:
                conn.serve()
            finally:
                self.connections.discard(conn)
        except OSError as e:  # the peer left before it could be served
            log.debug("%s: %s", ip, e)
            sock.close()
        finally:
            left = self._per_ip.get(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
            refused = self._refused.pop(ip, None)
            if refused is not None:
                log.info("%s: below the per-address limit again; %d connection(s) were refused", ip, refused)
            if self._at_limit:
                self._at_limit = False
                log.info("connection limit: a connection closed, accepting again")

    def _refuse(self, sock: socket.socket, ip: str) -> None:
        """Over the per-address limit: one errno 10 line, then close."""
        if ip not in self._refused:
            log.warning(
                "%s: per-address limit of %d connections reached (max_per_ip): refusing its new "
                "connections until one closes", ip, self.settings.max_per_ip,
            )
        self._refused[ip] = self._refused.get(ip, 0) + 1
        err = ProtocolError(Errno.RATE_LIMITED, f"too many connections from {ip}")
        try:
            sock.sendall(encode(error_reply(err)))
        except OSError:
            pass
        sock.close()

    def stats(self) -> dict[str, Any]:
        """Counts that must come back down when clients leave: for operators
        (SIGUSR1 logs them) and for the churn test."""
        gc.collect()
        # spawned greenlets (handlers, writers, deadlines, the node's own);
        # raw greenlets also include the hubs of gevent's worker threads
        greenlets = sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead)
        try:
            fds = len(os.listdir("/proc/self/fd"))
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            fds = rss = -1
        return {
            "connections": len(self.connections),
            "users": len(self.services.registry),
            "per_ip": len(self._per_ip),
            "pool": len(self.pool),
            "greenlets": greenlets,
            "threads": len(gevent.get_hub().threadpool),
            "fds": fds,
            "rss": rss,
        }

    def log_stats(self) -> None:
        log.info("stats %s", " ".join(f"{k}={v}" for k, v in self.stats().items()))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection (their users go offline
        here, and only theirs), and wait for the handlers to finish."""
        self.server.close()
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for conn in list(self.connections):
            conn.close("server shutting down")
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)
        self._stopped.set()


def _tune(sock: socket.socket, settings: Settings) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # half-open connections (the peer vanished without a FIN) are found by
    # keepalive probes, and their users go offline
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.keepalive_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.keepalive_interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.keepalive_count)
