"""The network edge: the TCP listener and a Connection per client (the
reader loop and the glue to its transport and outbox); no business rule.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from gchat import service
from gchat.config import Settings
from gchat.outbox import Outbox
from gchat.protocol import (
    Errno,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    dumps,
    encode,
    error_reply,
    loads,
    parse_request,
    refusal,
)
from gchat.ratelimit import FloodGuard, Verdict
from gchat.service import Handover, Reply
from gchat.transport import RECV_SIZE, Incoming, TcpTransport, Transport, tune

if TYPE_CHECKING:
    from gevent._types import _TimerWatcher

    from gchat.service import Services

log = logging.getLogger(__name__)

_MODERN_KEYS = frozenset(("resume", "token", "sync"))

# how long a log-out waits for the log entries queued to its client to be
# written before its delivered cursor is (gchat/outbox.py, settle_log_entries)
SETTLE_TIMEOUT = 1.0
# how long a closing connection may take to hand its last replies to the kernel
FLUSH_TIMEOUT = 5.0
# a connection that wrote nothing for between one and two of these periods
# gives up its writer greenlet until its next write
WRITER_IDLE = 10.0
# Connections the kernel queues before accept(). gevent's default of 128
# overflowed in a reconnect storm (TcpExtListenOverflows): each dropped SYN
# is retried after a second. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
# frames handled in a row before the reader lets other greenlets run
YIELD_EVERY = 8
# bytes read in a row before it does, frames or not: a peer streaming filler
# (megabytes of NULs) finds data waiting at every recv, which then never
# blocks, so without this its reader would hold the node until it stopped.
# It yields with a timer, not sleep(0): the hub may run a sleep(0) greenlet
# again for up to the switch interval (5 ms) before it polls for I/O, and
# other users' round trips rose to 25-35 ms at p99; a timer waits for the
# next turn of the loop, after everyone's I/O.
YIELD_BYTES = RECV_SIZE
YIELD_PAUSE = 0.0001


class Connection:
    """One client: the reader loop (the StreamServer's handler decodes and
    handles frames in order) and the glue between its transport, its outbox
    and the service layer. It is the `Peer` the handlers see."""

    def __init__(self, transport: Transport, address: tuple[str, int], listener: Listener) -> None:
        self.transport = transport
        self.address = address
        self.svc: Services = listener.services
        self.settings = settings = listener.settings
        self._user_id: int | None = None
        self.logged_in_once = False
        self.user_name = ""
        self.notices = False
        self.outbox = Outbox(transport, self, settings.outbox_max_messages, settings.outbox_max_bytes)
        # Classic until a request uses part B or C (seq, a resume token): the
        # original ChatClient sees one frame per recv, so its frames are paced
        # (Outbox._write_paced). A client that asks for acks reads a stream,
        # and a WebSocket client gets each frame as a message of its own.
        self.classic = transport.stream
        self.outbox.pace = settings.classic_gap if transport.stream else 0.0
        self._closing = False
        self._closed = Event()  # wakes a reader that holds off reading
        self._hold_until = 0.0
        self.close_reason = ""
        self._deadline: _TimerWatcher | None = None  # login_timeout
        # replies in request order, some waiting for the log's commit
        # (service.Pending): pushes are held behind them as behind any reply
        self._waiting: deque[list[Reply] | service.Pending] = deque()
        self._guard = FloodGuard(settings.rate, settings.rate_burst) if settings.rate > 0 else None

    # --- Peer, as the service layer sees it --------------------------------

    @property
    def user_id(self) -> int | None:
        return self._user_id

    @user_id.setter
    def user_id(self, value: int | None) -> None:
        self._user_id = value
        if value is not None and not self.logged_in_once:
            self.logged_in_once = True
            self._end_deadline()  # its job is done: do not keep it for login_timeout

    def hold(self, seconds: float) -> None:
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def _held_off(self) -> None:
        """Wait out a hold (a throttled login) before reading on."""
        if self._hold_until:
            wait = self._hold_until - time.monotonic()
            self._hold_until = 0.0
            if wait > 0:
                self._closed.wait(wait)

    def push(self, body: bytes, mark: tuple[int, int] | None = None) -> None:
        self.outbox.push(body, self._user_id or 0, mark)

    def unsent(self) -> dict[int, int]:
        return self.outbox.unsent()

    def settle(self) -> dict[int, int]:
        return self.outbox.settle_log_entries(SETTLE_TIMEOUT)

    def queued(self) -> int:
        return self.outbox.queued()

    def notify(self, body: bytes) -> None:
        self.outbox.push(body, 0)  # user 0: never stored offline

    def close(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        self.outbox.wake_to_close()
        self._closed.set()
        self.transport.shutdown_read()  # wakes the reader; the writer may still flush

    # --- the outbox's owner ---------------------------------------------------

    def cut_off(self) -> None:
        self.close("slow reader")

    def write_failed(self, e: OSError) -> None:
        log.info("%s: write failed (%s), closing", self.who(), e)
        self.close("write failed")

    def store_offline(self, items: list[tuple[int, bytes]]) -> None:
        self.svc.router.store_offline_batch(items)

    def _reply(self, reply: Reply) -> None:
        if type(reply) is Handover:
            self.outbox.reply(dumps(reply), reply.user_id, [m.encode() for m in reply.restore], reply.marks)
        else:
            self.outbox.reply(dumps(reply))

    # --- reader -------------------------------------------------------------

    def serve(self) -> None:
        # a bare timer of the loop, not spawn_later's greenlet: a greenlet
        # killed before it ran stayed with the connection, 1.9 KB of every
        # idle one in 15 blocks (tracemalloc); the greenlet comes only if it fires
        self._deadline = gevent.get_hub().loop.timer(self.settings.login_timeout)
        self._deadline.start(gevent.spawn, self._login_deadline)
        yielded_at = 0  # transport.received when the reader last paused
        try:
            while not self._closing:
                if self._hold_until:  # the test inline: once a read
                    self._held_off()
                if self._closing:
                    break
                try:
                    frames = self.transport.receive()
                except FrameTooLarge as e:
                    self._handle_frames(e.frames)
                    if not self._closing:
                        self.svc.counts.error(e.errno)
                        self._reply(error_reply(e))
                        self.close("frame too large")
                        log.info("%s: frame over %d bytes, closed", self.who(), self.settings.frame_max)
                    break
                if frames is None:
                    break
                # a peer that streams without pause (filler, a huge frame) lets others run
                if self.transport.received - yielded_at >= YIELD_BYTES:
                    yielded_at = self.transport.received
                    gevent.sleep(YIELD_PAUSE)
                self._handle_frames(frames)
        except OSError as e:
            # Closed by this side (close() above): gevent wakes a reader
            # blocked in recv by shutdown() with EBADF, "File descriptor was
            # closed in another greenlet". The peer lost nothing: not logged.
            # ETIMEDOUT here is TCP keepalive finding a peer that vanished.
            if not self._closing:
                log.info("%s: connection lost (%s)", self.who(), e)
        finally:
            self._end_deadline()
            self._finish()

    def _handle_frames(self, frames: Sequence[Incoming]) -> None:
        for i, frame in enumerate(frames):
            if self._hold_until:  # the test inline: once a frame
                self._held_off()
            if self._closing:
                self._log_dropped(frames[i:])
                return
            self._handle_frame(frame)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # a pipelined burst is handled without I/O in between: let the
                # writers run (this one's, and those of its recipients), so a
                # burst does not pile up in outboxes whose clients do read
                gevent.sleep(0)

    def _handle_frame(self, frame: Incoming) -> None:
        if type(frame) is not bytes:  # a message that is no frame: refused in its place
            self._answer(error_reply(frame))  # type: ignore[arg-type]
            return
        if self._guard is not None:
            verdict = self._guard.check(time.monotonic())
            if verdict is Verdict.REFUSE:
                self._refuse(frame)
                return
            if verdict is Verdict.CUT:
                log.warning(
                    "%s: flooding: %d requests refused with errno 10 (rate %g/s, burst %d) and still "
                    "coming; disconnecting",
                    self.who(), self._guard.refused, self.settings.rate, self.settings.rate_burst,
                )
                self.close("flood")
                return  # the caller logs this frame and the rest as dropped
        outbox = self.outbox
        outbox.hold()
        req = None
        replies: list[Reply] | service.Pending
        try:
            req = parse_request(frame, self.svc.limits)
            # any extension of docs/protocol.md (seq, a resume token, a sync
            # login) says the client reads frames whole: no pacing for it
            if self.classic and (req.seq is not None or not _MODERN_KEYS.isdisjoint(req.body)):
                self.classic = False
                outbox.pace = 0.0
            replies = service.handle(self.svc, self, req)
        except ProtocolError as e:
            self.svc.counts.error(e.errno)
            replies = [error_reply(e)]
        except Exception:
            log.exception("%s: request failed", self.who())
            self.svc.counts.error(Errno.UNAVAILABLE)
            replies = [refusal(Errno.UNAVAILABLE, "internal error", req.msgid if req else 0, req.seq if req else None)]
        if isinstance(replies, service.Pending):
            # a chat's ACK comes after the log's commit: the reader goes on
            # with the next frames (their messages share the writer's batch)
            # and the replies are written in request order as their commits
            # complete (_on_commit); the outbox keeps holding pushes until then
            self._waiting.append(replies)
            replies.when_done(self._on_commit)
            return
        if self._waiting:  # behind replies still waiting for their commit
            self._waiting.append(replies)
            return
        try:
            for reply in replies:
                self._reply(reply)
        finally:
            outbox.release()

    def _on_commit(self, _: object) -> None:
        """A waiting request's commit is done (called in the log writer's
        greenlet as it hands out a batch's outcomes: nothing here blocks). Write the replies of the requests at
        the head of the queue whose commits are done, in their order; what
        was pushed while each waited goes after its replies."""
        waiting, outbox = self._waiting, self.outbox
        try:
            while waiting:
                item = waiting[0]
                if isinstance(item, service.Pending):
                    if not item.done():
                        return  # its own callback comes when it is
                    try:
                        replies = item.get()
                    except Exception:
                        log.exception("%s: request failed", self.who())
                        replies = [refusal(Errno.UNAVAILABLE, "internal error", item.req.msgid, item.req.seq)]
                else:
                    replies = item
                waiting.popleft()
                for reply in replies:
                    self._reply(reply)
                # a steady sender always has a next request waiting
                outbox.release()
                if waiting:
                    outbox.hold()
        except Exception:  # in the writer's greenlet: logged here, the batch's other messages go on
            log.exception("%s: writing replies failed; closing", self.who())
            self.close("internal error")

    def _refuse(self, frame: bytes) -> None:
        """errno 10, addressed to the request (msgid, seq) when it can be read."""
        try:
            req = parse_request(frame, self.svc.limits)
            msgid, seq = int(req.msgid), req.seq
        except ProtocolError as e:
            msgid, seq = e.msgid, e.seq
        self.svc.counts.error(Errno.RATE_LIMITED)
        self._answer(error_reply(ProtocolError(Errno.RATE_LIMITED, "rate limited, slow down", msgid, seq)))

    def _answer(self, reply: Reply) -> None:
        """A reply made without the service: after those of the requests
        still waiting for their commit, as every reply is in request order."""
        if self._waiting:
            self._waiting.append([reply])
        else:
            self._reply(reply)

    def _log_dropped(self, incoming: Sequence[Incoming]) -> None:
        """Frames read but never handled because the connection is closing.
        Only their msgids and sizes are logged: a frame may hold a password."""
        frames = [f for f in incoming if type(f) is bytes]
        buffered = self.transport.buffered
        if not frames and not buffered:
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
            self.who(), self.close_reason, len(frames), summary, sum(map(len, frames)), buffered,
        )

    def _end_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def _login_deadline(self) -> None:
        if not self.logged_in_once:
            log.info("%s: no login within %g s, closing", self.who(), self.settings.login_timeout)
            self.close("login timeout")

    def _finish(self) -> None:
        """The connection is over. The outbox gets a last chance to reach the
        kernel and stores what it could not write; only then does the user go
        offline, so a message delivered meanwhile is either queued (and
        stored with the rest) or stored after them: the order at next login
        is the order sent."""
        self._closing = True
        self.outbox.finish(FLUSH_TIMEOUT)
        try:
            service.disconnect(self.svc, self)
        except Exception:
            log.exception("%s: disconnect failed", self.who())
        self.transport.close(self.close_reason)

    def who(self) -> str:
        host, port = self.address[:2]
        return f"{host}:{port}" + (f" user {self.user_id}" if self.user_id else "")


class Listener:
    """The TCP listener and its live connections."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.connections: set[Connection] = set()
        self._per_ip: dict[str, int] = {}
        # addresses at their limit -> connections refused since it was reached
        self._refused: dict[str, int] = {}
        self._at_limit = False
        self._stopping = False
        # the pool bounds the connections served at once: when it is full the
        # server stops accepting, and new connections wait in the backlog
        self.pool = Pool(settings.max_connections)
        self.server = StreamServer((settings.host, settings.port), self._handle, spawn=self.pool,
                                   backlog=LISTEN_BACKLOG)
        self._sweeper: gevent.Greenlet[[], None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        address = self.server.address
        return str(address[0]), int(address[1])

    def start(self) -> None:
        self.server.start()
        self._sweeper = gevent.spawn(self._retire_idle_writers)
        host, port = self.address
        log.info("gchat node %s ready on %s:%d", self.settings.node, host, port)

    def _retire_idle_writers(self) -> None:
        while True:
            gevent.sleep(WRITER_IDLE)
            for conn in list(self.connections):
                conn.outbox.retire_if_idle()

    def _handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        ip = address[0]
        if self._stopping:  # accepted just before the listener closed
            sock.close()
            return
        refusal = self.admit(ip)
        if refusal is not None:
            try:
                sock.sendall(encode(error_reply(refusal)))
            except OSError:
                pass
            sock.close()
            return
        try:
            tune(sock, self.settings)
            conn = Connection(TcpTransport(sock, FrameDecoder(self.settings.frame_max)), address, self)
            self.serve(conn)
        except OSError as e:  # the peer left before it could be served
            log.debug("%s: %s", ip, e)
            sock.close()
        finally:
            self.leave(ip)

    def admit(self, ip: str) -> ProtocolError | None:
        """Count a new connection from `ip` (TCP or WebSocket): None, or the
        errno 10 to answer when the address is over max_per_ip. An admitted
        connection calls `leave` when it ends."""
        if self.settings.max_per_ip and self._per_ip.get(ip, 0) >= self.settings.max_per_ip:
            if ip not in self._refused:
                log.warning(
                    "%s: per-address limit of %d connections reached (max_per_ip): refusing its new "
                    "connections until one closes", ip, self.settings.max_per_ip,
                )
            self._refused[ip] = self._refused.get(ip, 0) + 1
            self.services.counts.error(Errno.RATE_LIMITED)
            return ProtocolError(Errno.RATE_LIMITED, f"too many connections from {ip}")
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if self.pool.full() and not self._at_limit:
            self._at_limit = True
            log.warning(
                "connection limit of %d reached (max_connections): new connections wait in the "
                "listen backlog until one closes", self.settings.max_connections,
            )
        return None

    def leave(self, ip: str) -> None:
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

    def serve(self, conn: Connection) -> None:
        """Serve a connection until it ends, among the live ones (the web
        listener's WebSocket connections are served here too)."""
        self.connections.add(conn)
        try:
            conn.serve()
        finally:
            self.connections.discard(conn)

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
        here, and only theirs), and wait for the handlers to finish; those
        still running after `timeout` are killed."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for conn in list(self.connections):
            conn.close("server shutting down")
        self.server.stop(timeout)
