"""TLS for a connection that one thread reads while others write.

ssl.SSLSocket hands its one OpenSSL SSL object to every thread that calls
it, and releases the GIL inside SSL_read and SSL_write; OpenSSL does not
allow one SSL object to be used by two threads at once. The Client's reader
blocks in recv while requests are sent from other threads, so with an
SSLSocket a reply was sometimes never surfaced: about one connection in a
few hundred, right after the handshake, when the reader is taking the
server's session tickets while the first request is written (seen in a loop
of connect, register, login through nginx's TLS port).

Here the socket I/O is our own and the SSLObject (on memory BIOs) is used
only under a lock, which is never held while waiting for the network to
bring something: the reader waits on the plain socket without it."""

from __future__ import annotations

import socket
import ssl
import threading

_RECV = 65536


class TlsStream:
    """The few socket calls the Client makes (recv, sendall, settimeout,
    shutdown, close), over TLS, safe for one reader and many writers."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        # the SSLObject, and the order in which its records go on the wire
        self._lock = threading.Lock()
        self._handshake()

    def _handshake(self) -> None:
        # before any other thread has the stream: no lock needed
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self._sock.recv(_RECV)
                if not data:
                    raise ConnectionResetError("the server closed the connection during the TLS handshake") from None
                self._incoming.write(data)
        self._flush()

    def _flush(self) -> None:
        """Send what the SSLObject has written (under the lock once shared)."""
        data = self._outgoing.read()
        if data:
            self._sock.sendall(data)

    def recv(self, size: int) -> bytes:
        """Up to size bytes of plaintext; b"" once the server has closed."""
        while True:
            with self._lock:
                try:
                    return self._tls.read(size)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:  # the server's close_notify
                    return b""
                finally:
                    self._flush()  # what reading made the SSLObject write (a key update's answer)
            data = self._sock.recv(_RECV)
            if not data:
                return b""
            with self._lock:
                self._incoming.write(data)

    def sendall(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[self._tls.write(view):]
            self._flush()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()
