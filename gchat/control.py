"""Operator actions a node carries out for gchat-admin: close a user's
connection (kick), send a system message to every user connected here
(broadcast), and say it is alive (ping).

How gchat-admin reaches a node:
- in a cluster, through Redis: a "C" envelope (gchat/cluster/bus.py) on the channel
  of the node holding the user (kick), or on gchat:all (broadcast). Every
  node is reached the way deliveries reach it; nothing listens on a port.
- a node without Redis listens on a Unix socket (Settings.admin_socket), one
  JSON request and one JSON reply per connection. The socket file is mode
  0600: only the node's own user (and root) can connect, so the file system
  is the authentication and no secret travels or sits in a config file.

A request is `{"action": "ping" | "kick" | "broadcast" | "forget", ...}`;
the reply is `{"ok": true, ...}` or `{"ok": false, "error": str}`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.server import StreamServer

from gchat.protocol import SYSTEM_ID, SYSTEM_NAME, MsgId, dumps, loads
from gchat.registry import Registry

log = logging.getLogger(__name__)

# an admin request is a few hundred bytes; this bounds what a stray client costs
REQUEST_MAX = 64 * 1024
REQUEST_TIMEOUT = 5.0
# pushes of a broadcast between two turns of the event loop
BROADCAST_SLICE = 256

Request = dict[str, Any]
Reply = dict[str, Any]


def system_message(user_id: int, text: str) -> bytes:
    """A one-to-one message (msgid 5, so the original client shows it too)
    from the system; docs/protocol.md part C."""
    return dumps({
        "msgid": int(MsgId.ONE_CHAT), "id": SYSTEM_ID, "name": SYSTEM_NAME, "to": user_id, "msg": text,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "system": True,
    })


class Control:
    """The actions, on this node's connections. `forget` drops deleted users
    from what the node caches (gchat/cache.py)."""

    def __init__(self, node: str, registry: Registry, forget: Callable[[list[int]], None]) -> None:
        self.node = node
        self.registry = registry
        self.forget = forget

    def kick(self, user_id: int, reason: str = "") -> bool:
        """Close the user's connection here; False when it is not connected here."""
        peer = self.registry.get(user_id)
        if peer is None:
            return False
        # queued before the close: the writer flushes it on the way out (or
        # it is stored for the next login if it cannot)
        peer.push(system_message(user_id, "disconnected by an operator" + (f": {reason}" if reason else "")))
        peer.close("kicked by an operator")
        log.info("user %d kicked by an operator%s", user_id, f" ({reason})" if reason else "")
        return True

    def broadcast(self, text: str) -> int:
        """Push a system message to every user logged in here; how many."""
        peers = self.registry.peers()
        pushed = 0
        for k, (uid, peer) in enumerate(peers):
            if k and k % BROADCAST_SLICE == 0:
                # 16,700 pushes in one go (each spawns its connection's
                # writer) held the event loop for 33 to 43 s on the loaded
                # machine: the heartbeat's watchdog took the node for wedged
                # and freed its users (docs/benchmarks.md, 50,000
                # connections). Let the loop run between slices.
                gevent.sleep(0)
            if self.registry.get(uid) is not peer:
                continue  # gone during an earlier slice
            peer.push(system_message(uid, text))
            pushed += 1
        log.info("operator broadcast to %d user(s) here", pushed)
        return pushed

    def handle(self, request: Request) -> Reply:
        action = request.get("action")
        if action == "ping":
            return {"ok": True, "node": self.node, "users": len(self.registry)}
        if action == "kick":
            uid = request.get("id")
            if type(uid) is not int:
                return {"ok": False, "error": "kick needs an integer id"}
            return {"ok": True, "node": self.node, "kicked": self.kick(uid, str(request.get("reason") or ""))}
        if action == "broadcast":
            text = request.get("text")
            if not isinstance(text, str) or not text:
                return {"ok": False, "error": "broadcast needs a text"}
            return {"ok": True, "node": self.node, "users": self.broadcast(text)}
        if action == "forget":
            ids = request.get("ids")
            if not isinstance(ids, list) or not all(type(i) is int for i in ids):
                return {"ok": False, "error": "forget needs a list of integer ids"}
            self.forget(ids)
            log.info("forgot %d user(s) an operator deleted", len(ids))
            return {"ok": True, "node": self.node}
        return {"ok": False, "error": f"unknown action {action!r}"}

    def on_bus(self, payload: bytes) -> None:
        """A request that came over the bus; nobody waits for its reply
        (gchat-admin watches the presence store instead)."""
        try:
            request = loads(payload)
        except ValueError:
            log.warning("admin request over the bus is not JSON: %r", payload[:64])
            return
        if not isinstance(request, dict):
            log.warning("admin request over the bus is not an object: %r", payload[:64])
            return
        reply = self.handle(request)
        if not reply["ok"]:
            log.warning("admin request over the bus refused: %s", reply["error"])


class AdminSocketError(Exception):
    """The admin socket cannot be opened; the message says why."""


class AdminSocket:
    """The Unix socket of a node without Redis."""

    def __init__(self, path: str, handle: Callable[[Request], Reply]) -> None:
        self.path = path
        self.handle = handle
        self.server: StreamServer | None = None

    def start(self) -> None:
        """Raises AdminSocketError when the path is taken by a node that
        answers, or cannot be created."""
        if os.path.exists(self.path):
            if _answers(self.path):
                raise AdminSocketError(f"admin socket {self.path} is in use by a running node")
            os.unlink(self.path)  # left by a node that did not stop cleanly
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # created 0600 at once (no window where another user could connect)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
            listener.listen(16)
        except OSError as e:
            listener.close()
            raise AdminSocketError(f"cannot open the admin socket {self.path}: {e}") from e
        finally:
            os.umask(old)
        self.server = StreamServer(listener, self._serve)
        self.server.start()
        log.info("admin socket on %s", self.path)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _serve(self, sock: socket.socket, _address: Any) -> None:
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            data = b""
            while not data.endswith(b"\n") and len(data) < REQUEST_MAX:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                request = loads(data)
            except ValueError:
                request = None
            reply = self.handle(request) if isinstance(request, dict) else {"ok": False, "error": "not a JSON object"}
            sock.sendall(dumps(reply) + b"\n")
        except OSError as e:
            log.debug("admin socket: %s", e)
        finally:
            sock.close()


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True
