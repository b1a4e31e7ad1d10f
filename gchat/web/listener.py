"""The web listener: the app's static files over HTTP and the chat over a
WebSocket at /ws, on one address (Settings.web_bind).

h11 reads each HTTP request (never a hand-made parser); a WebSocket upgrade
is handed to websockets' Sans-I/O handshake, and the socket then becomes a `server.Connection` of
the TCP listener's, served with the same rules. Static files come from the
package (gchat/web/static), read once at start-up.
"""

from __future__ import annotations

import logging
import mimetypes
import socket
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import gevent
import h11
from gevent.server import StreamServer
from websockets.datastructures import Headers as WsHeaders
from websockets.http11 import Request as WsRequest
from websockets.protocol import State

from gchat.protocol import dumps, error_reply
from gchat.server import LISTEN_BACKLOG, Connection
from gchat.transport import RECV_SIZE, tune
from gchat.web.websocket import WebSocketTransport, server_protocol

if TYPE_CHECKING:
    from gchat.server import Listener

log = logging.getLogger(__name__)

WS_PATH = "/ws"
# an HTTP connection idle this long between requests is closed (browsers
# reopen them); a WebSocket has its own keepalive (web_ping_interval)
HTTP_IDLE = 30.0
# request line and headers: browsers send a few KiB with cookies
MAX_HEAD = 16 * 1024
SECURITY_HEADERS = [
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    # the app is its own files and its own WebSocket, nothing else
    (b"Content-Security-Policy",
     b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"),
]


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: bytes


def load_static() -> dict[str, StaticFile]:
    """The app's files by URL path ("/" is index.html)."""
    files: dict[str, StaticFile] = {}
    root = resources.files("gchat.web") / "static"
    for entry in root.iterdir():
        if not entry.is_file() or entry.name.startswith("."):
            continue
        kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml", "application/json"):
            kind += "; charset=utf-8"
        files["/" + entry.name] = StaticFile(entry.read_bytes(), kind.encode())
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


class WebListener:
    """HTTP and WebSocket on Settings.web_bind; connections are served by
    (and counted among) the TCP listener's."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.settings = settings = listener.settings
        address = settings.web_address
        assert address is not None
        self.static = load_static()
        # the TCP listener's pool: max_connections bounds both addresses together
        self.server = StreamServer(address, self._handle, spawn=listener.pool, backlog=LISTEN_BACKLOG)
        self.sockets: set[WebSocketTransport] = set()
        # the connections still speaking HTTP (a browser keeps one open between
        # requests): ended by close(), else the stop would wait for them
        self._http: set[socket.socket] = set()
        self._keepalive: gevent.Greenlet[[], None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        address = self.server.address
        return str(address[0]), int(address[1])

    def start(self) -> None:
        self.server.start()
        self._keepalive = gevent.spawn(self._keep_alive)
        host, port = self.address
        log.info("web app on http://%s:%d/ (WebSocket %s)", host, port, WS_PATH)

    def close(self) -> None:
        """Stop accepting, and end the HTTP connections; the WebSocket
        connections are closed with the TCP listener's (Listener.stop). An
        idle keep-alive connection left open held every stop for its whole
        timeout (10 s): both listeners' handlers are in one pool, which
        the stop waits for."""
        if self._keepalive is not None:
            self._keepalive.kill(block=False)
        self.server.close()
        for sock in list(self._http):
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes its wait for a request; a response being sent still goes
            except OSError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for the handlers (their connections closed by Listener.stop)."""
        self.close()
        self.server.stop(timeout)

    def _keep_alive(self) -> None:
        """One greenlet for every WebSocket: a peer silent for an interval
        gets a ping; silent for another, it is dead (a browser whose machine
        slept, a proxy that lost it) and its user goes offline."""
        interval = self.settings.web_ping_interval
        while True:
            gevent.sleep(interval)
            for ws in list(self.sockets):
                if ws.heard:
                    ws.heard = False
                elif ws.pinged:
                    conn = self._connection_of(ws)
                    if conn is not None:
                        log.info("%s: WebSocket silent for %g s after a ping, dropping", conn.who(), interval)
                        conn.close("dead peer")
                        ws.shutdown()
                else:
                    ws.ping()

    def _connection_of(self, ws: WebSocketTransport) -> Connection | None:
        for conn in self.listener.connections:
            if conn.transport is ws:
                return conn
        return None

    # --- HTTP ------------------------------------------------------------------

    def _handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self._http.add(sock)
        try:
            tune(sock, self.settings)
            sock.settimeout(HTTP_IDLE)
            http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
            while True:
                event = self._next_event(sock, http)
                if isinstance(event, h11.Request):
                    if _is_upgrade(event):
                        self._upgrade(sock, address, http, event)
                        return
                    self._serve_file(sock, http, event)
                elif not isinstance(event, (h11.Data, h11.EndOfMessage)):
                    return  # the peer closed (or paused h11 with a pipelined request)
                if http.our_state is h11.MUST_CLOSE or http.their_state is h11.MUST_CLOSE:
                    return
                if http.our_state is h11.DONE and http.their_state is h11.DONE:
                    http.start_next_cycle()
        except h11.RemoteProtocolError as e:
            self._send_error(sock, http, e.error_status_hint, str(e))
        except (OSError, TimeoutError) as e:
            log.debug("%s: web connection ended: %s", address[0], e)
        finally:
            self._http.discard(sock)
            sock.close()

    def _next_event(self, sock: socket.socket, http: h11.Connection) -> object:
        """The next h11 event, reading as needed; ConnectionClosed when the peer closed."""
        while True:
            event = http.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = sock.recv(RECV_SIZE)
            http.receive_data(data)
            if not data and http.their_state is not h11.SEND_BODY:
                return h11.ConnectionClosed()

    def _respond(self, sock: socket.socket, http: h11.Connection, status: int, body: bytes,
                 content_type: bytes = b"text/plain; charset=utf-8", head: bool = False,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode()),
                   (b"Cache-Control", b"no-cache"), *SECURITY_HEADERS, *(extra or [])]
        out = http.send(h11.Response(status_code=status, headers=headers)) or b""
        if not head:
            out += http.send(h11.Data(data=body)) or b""
        out += http.send(h11.EndOfMessage()) or b""
        sock.sendall(out)

    def _send_error(self, sock: socket.socket, http: h11.Connection, status: int, text: str) -> None:
        try:
            if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self._respond(sock, http, status, (text + "\n").encode())
        except (OSError, h11.LocalProtocolError):
            pass

    def _serve_file(self, sock: socket.socket, http: h11.Connection, req: h11.Request) -> None:
        # the request body, if any, is read (and ignored: the app sends none) before answering
        while http.their_state is h11.SEND_BODY:
            if isinstance(self._next_event(sock, http), h11.ConnectionClosed):
                return
        method = req.method.decode()
        path = req.target.decode("ascii", "replace").split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._respond(sock, http, 405, b"only GET\n", extra=[(b"Allow", b"GET, HEAD")])
            return
        file = self.static.get(path)
        if file is None:
            self._respond(sock, http, 404, b"not found\n", head=method == "HEAD")
            return
        self._respond(sock, http, 200, file.body, file.content_type, head=method == "HEAD")

    # --- WebSocket ---------------------------------------------------------------

    def _upgrade(self, sock: socket.socket, address: tuple[str, int], http: h11.Connection,
                 req: h11.Request) -> None:
        path = req.target.decode("ascii", "replace").split("?", 1)[0]
        if path != WS_PATH:
            self._respond(sock, http, 404, f"the WebSocket is at {WS_PATH}\n".encode())
            return
        origin = _header(req, b"origin")
        if origin is not None and not self._origin_allowed(origin, _header(req, b"host") or ""):
            log.warning("%s: WebSocket refused: Origin %s is not allowed (web_origins)", address[0], origin)
            self._respond(sock, http, 403, b"this Origin may not open the gchat WebSocket (web_origins)\n")
            return
        ws = server_protocol(self.settings.frame_max)
        # the request h11 read, handed to the library as the bytes it parses itself
        ws.receive_data(WsRequest(path, WsHeaders(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers)).serialize())
        request = next((e for e in ws.events_received() if isinstance(e, WsRequest)), None)
        if request is None:
            self._respond(sock, http, 400, b"not a WebSocket handshake\n")
            return
        ws.send_response(ws.accept(request))
        sock.sendall(b"".join(ws.data_to_send()))
        if ws.state is not State.OPEN:  # no Sec-WebSocket-Key, a wrong version...: the library's 400 went out
            log.info("%s: WebSocket handshake refused: %s", address[0], ws.handshake_exc)
            return
        self._http.discard(sock)  # a Connection now, closed by Listener.stop
        sock.settimeout(None)  # from now the WebSocket keepalive finds dead peers
        leftover, _ = http.trailing_data  # a client that wrote before it saw the 101
        transport = WebSocketTransport(sock, ws, self.settings.frame_max, bytes(leftover))
        ip = address[0]
        refusal = self.listener.admit(ip)
        if refusal is not None:  # over max_per_ip: errno 10, as a TCP client gets it
            try:
                sock.sendall(transport.frame(dumps(error_reply(refusal))))
            except OSError:
                pass
            transport.close("too many connections")
            return
        try:
            conn = Connection(transport, address, self.listener)
            transport.writer = conn.outbox
            self.sockets.add(transport)
            try:
                self.listener.serve(conn)
            finally:
                self.sockets.discard(transport)
        finally:
            self.listener.leave(ip)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Only pages of this node (or of the proxy before it, which passes
        the Host the browser used), or those listed in web_origins: a page
        elsewhere cannot chat in its visitor's name (cross-site WebSocket
        hijacking)."""
        allowed = self.settings.origins
        if "*" in allowed or origin.rstrip("/") in allowed:
            return True
        return origin.split("://", 1)[-1].rstrip("/") == host


def _header(req: h11.Request, name: bytes) -> str | None:
    for key, value in req.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _is_upgrade(req: h11.Request) -> bool:
    upgrade = (_header(req, b"upgrade") or "").lower()
    return req.method == b"GET" and "websocket" in upgrade
