"""The network edge: a gevent StreamServer, a Connection per client (reader
loop, outbox, one writer greenlet), and nothing of the business rules.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from gchat import service
from gchat.config import Settings
from gchat.protocol import (
    Errno,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    dumps,
    error_reply,
    parse_request,
)
from gchat.ratelimit import TokenBucket

if TYPE_CHECKING:
    from gchat.service import Services

log = logging.getLogger(__name__)

RECV_SIZE = 64 * 1024
# how long a closing connection may take to hand its last replies to the kernel
FLUSH_TIMEOUT = 5.0


class Connection:
    """One client. The reader greenlet (the StreamServer's handler) decodes
    and handles frames in order; a writer greenlet drains the outbox, so a
    slow client never blocks whoever is delivering to it."""

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
        # (JSON body, user id it was delivered to, or 0 for a reply)
        self._out: deque[tuple[bytes, int]] = deque()
        self._out_bytes = 0
        self._wake = Event()
        self._busy = False
        self._held: list[bytes] = []
        self._closing = False
        self._unsent: list[tuple[bytes, int]] = []
        self.close_reason = ""
        self._bucket = (
            TokenBucket(self.settings.rate, self.settings.rate_burst) if self.settings.rate > 0 else None
        )
        self._limited = 0

    # --- Peer, as the service layer sees it --------------------------------

    @property
    def user_id(self) -> int | None:
        return self._user_id

    @user_id.setter
    def user_id(self, value: int | None) -> None:
        self._user_id = value
        if value is not None:
            self.logged_in_once = True

    def push(self, body: bytes) -> None:
        """Queue a delivered message. While this connection's own request is
        being handled, pushes wait behind its reply: a login ack comes before
        the messages that arrived during the login."""
        if self._busy:
            self._held.append(body)
        else:
            self._enqueue(body, self.user_id or 0)

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

    def _enqueue(self, body: bytes, user_id: int) -> None:
        self._out.append((body, user_id))
        self._out_bytes += len(body)
        s = self.settings
        if len(self._out) > s.outbox_max_messages or self._out_bytes > s.outbox_max_bytes:
            if not self._closing:
                log.warning(
                    "%s: slow reader, %d messages (%d bytes) queued; disconnecting",
                    self._who(), len(self._out), self._out_bytes,
                )
                self.close("slow reader")
                self._abandon_outbox()
            return
        self._wake.set()

    def _abandon_outbox(self) -> None:
        """Stop writing: what is queued will be stored, not sent."""
        self._unsent.extend(self._out)
        self._out.clear()
        self._out_bytes = 0

    def _writer(self) -> None:
        term = b"\n"
        while True:
            if not self._out:
                if self._closing:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            batch = list(self._out)
            self._out.clear()
            self._out_bytes = 0
            term = self.decoder.reply_terminator
            try:
                # one sendall per burst: everything queued since the last write
                self.sock.sendall(b"".join(body + term for body, _ in batch))
            except OSError:
                self._unsent.extend(batch)
                self._abandon_outbox()
                self.close("write failed")
                return

    def _reply(self, reply: dict[str, object]) -> None:
        self._enqueue(dumps(reply), 0)

    # --- reader -------------------------------------------------------------

    def serve(self) -> None:
        writer = gevent.spawn(self._writer)
        deadline = gevent.spawn_later(self.settings.login_timeout, self._login_deadline)
        try:
            while not self._closing:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    break
                try:
                    frames = self.decoder.feed(data)
                except FrameTooLarge as e:
                    self._reply(error_reply(e))
                    self.close("frame too large")
                    log.info("%s: frame over %d bytes, closed", self._who(), self.settings.frame_max)
                    break
                for frame in frames:
                    if self._closing:
                        break
                    self._handle_frame(frame)
        except OSError as e:
            log.debug("%s: %s", self._who(), e)
        finally:
            deadline.kill(block=False)
            self._finish(writer)

    def _handle_frame(self, frame: bytes) -> None:
        if self._bucket is not None and not self._bucket.take(time.monotonic()):
            self._limited += 1
            if self._limited > self.settings.rate_burst:
                log.warning("%s: flooding past the rate limit, disconnecting", self._who())
                self.close("flood")
                return
            self._reply(error_reply(ProtocolError(Errno.RATE_LIMITED, "rate limited, slow down")))
            return
        self._limited = 0
        self._busy = True
        req = None
        try:
            req = parse_request(frame, self.svc.limits)
            replies = service.handle(self.svc, self, req)
        except ProtocolError as e:
            replies = [error_reply(e)]
        except Exception:
            log.exception("%s: request failed", self._who())
            err = ProtocolError(Errno.UNAVAILABLE, "internal error", req.msgid if req else 0, req.seq if req else None)
            replies = [error_reply(err)]
        finally:
            self._busy = False
        for reply in replies:
            self._reply(reply)
        held, self._held = self._held, []
        for body in held:
            self._enqueue(body, self.user_id or 0)

    def _login_deadline(self) -> None:
        if not self.logged_in_once:
            log.info("%s: no login within %.0f s, closing", self._who(), self.settings.login_timeout)
            self.close("login timeout")

    def _finish(self, writer: gevent.Greenlet) -> None:
        """The connection is over: its user goes offline, queued replies get a
        last chance to reach the kernel, and every message that could not be
        written is stored for its user."""
        try:
            service.disconnect(self.svc, self)
        except Exception:
            log.exception("%s: disconnect failed", self._who())
        self._closing = True
        self._wake.set()
        writer.join(timeout=FLUSH_TIMEOUT)
        writer.kill(block=False)
        self._abandon_outbox()
        self._store_unsent()
        try:
            self.sock.close()
        except OSError:
            pass

    def _store_unsent(self) -> None:
        by_user: dict[bytes, list[int]] = {}
        for body, uid in self._unsent:
            if uid:
                by_user.setdefault(body, []).append(uid)
        self._unsent.clear()
        for body, uids in by_user.items():
            try:
                self.svc.router.store_offline(uids, body)
            except ProtocolError:
                log.error("%s: lost a message for %s: database unavailable", self._who(), uids)
        if by_user:
            log.info("%s: stored %d unsent message(s) offline", self._who(), len(by_user))

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
        self.pool = Pool(settings.max_connections)
        self.server = StreamServer((settings.host, settings.port), self._handle, spawn=self.pool)
        self._stopped = Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.address[:2]
        return host, port

    def start(self) -> None:
        self.server.start()
        host, port = self.address
        log.info("gchat node %s ready on %s:%d", self.settings.node, host, port)

    def _handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        ip = address[0]
        if self.settings.max_per_ip and self._per_ip.get(ip, 0) >= self.settings.max_per_ip:
            log.warning("%s: over %d connections from one address, refused", ip, self.settings.max_per_ip)
            sock.close()
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if self.pool.full():
            log.warning("connection limit %d reached", self.settings.max_connections)
        _tune(sock, self.settings)
        conn = Connection(sock, address, self)
        self.connections.add(conn)
        try:
            conn.serve()
        finally:
            self.connections.discard(conn)
            left = self._per_ip.get(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection (their users go offline
        here, and only theirs), and wait for the handlers to finish."""
        self.server.close()
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
