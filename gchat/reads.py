"""A socket's reads that wait for readability before a read that would
find nothing: the client reader's (gchat/transport.py `SocketIO.recv`),
the bus's Redis wire (gchat/cluster/resp.py `Wire`) and the writer's MySQL
wire (gchat/sqlwire.py).

gevent's `recv` first makes the system call and waits for readability only
when it fails with EAGAIN. After a read that took less than it asked for,
the kernel held nothing more, and a peer that answers requests (a chat
client, Redis) has almost never sent again by the next call: that try is a
failed syscall and an exception per read. So such a read waits first, on
gevent's own watcher of the socket, with its timeout and close handling (a
socket closed by another greenlet raises there, as in `recv`): 1.0 to 1.6
µs less CPU a read (docs/benchmarks.md, "The reader waits before it reads").
"""

from __future__ import annotations

import socket
from typing import Any


class Reads:
    __slots__ = ("sock", "_wait", "_drained", "plain")

    def __init__(self, sock: socket.socket, drained: bool = False, wait: Any = None) -> None:
        self.sock = sock
        # gevent's socket waits on its own watcher (or `wait`, given the
        # watcher, a deadline of the caller's own: sqlwire's); a plain one
        # (a test without gevent's patching) blocks in recv itself; a TLS
        # socket (it has `pending`) may hold a decrypted record that the
        # descriptor no longer shows as readable, so it never waits first
        self._wait: Any = None if hasattr(sock, "pending") else getattr(sock, "_wait", None)
        if self._wait is not None and wait is not None:
            self._wait = wait
        self._drained = drained  # the last read took all the kernel held
        # gevent's socket over a plain (not TLS) one: its C socket (`_sock`)
        # may be called directly once readable, or for a send that never waits
        self.plain = self._wait is not None

    def expect(self) -> None:
        """A request was just sent: its answer is not there yet, so the next
        read waits for readability first (the wait before a read that
        would find nothing)."""
        self._drained = True

    def recv(self, size: int) -> bytes:
        """The next bytes (at most size), blocking the calling greenlet; b""
        at the end of the stream."""
        sock = self.sock
        if self._drained and self._wait is not None:
            event = sock._read_event  # type: ignore[attr-defined]  # gevent's socket: see above
            if event is not None:  # None: closed; recv raises EBADF, as it does without the wait
                self._wait(event)
                # readable: the C socket's own recv, without gevent's Python
                # wrapper around it (its loop is for a read that would block);
                # a closed socket's stand-in raises EBADF as recv does
                try:
                    data: bytes = sock._sock.recv(size)  # type: ignore[attr-defined]
                except BlockingIOError:  # readable, then not (another reader took it): gevent waits again
                    data = sock.recv(size)
                self._drained = len(data) < size
                return data
        data = sock.recv(size)
        self._drained = len(data) < size
        return data
