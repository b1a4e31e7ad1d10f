"""Who is connected to this node: user id -> the peer that holds the session.

Plain dict work between I/O calls, so no lock: greenlets switch only at I/O.
"""

from __future__ import annotations

from typing import Protocol


class Peer(Protocol):
    """What the service layer sees of a connection: never the socket."""

    user_id: int | None
    user_name: str
    address: tuple[str, int]  # the client's (host, port): the throttle's and the audit log's
    # the session asked for notices (docs/protocol.md section F)
    notices: bool

    def push(self, body: bytes, mark: tuple[int, int] | None = None) -> None:
        """Queue a delivered message (JSON text, no terminator); `mark`: the
        conversation log's (conversation, seq) it is, for the delivered
        cursor (gchat/sessions.py)."""

    def notify(self, body: bytes) -> None:
        """Queue a notice: like a chat message, but never stored when it
        cannot be written (it tells of a moment, the next login tells
        the state)."""

    def close(self, reason: str) -> None: ...

    def hold(self, seconds: float) -> None:
        """Read nothing more from this peer for `seconds` (what it sends
        meanwhile waits in the kernel, unread, and is handled after)."""


class Registry:
    def __init__(self) -> None:
        self._peers: dict[int, Peer] = {}

    def bind(self, user_id: int, peer: Peer) -> bool:
        """Bind the user to the peer; False if another peer holds it here."""
        held = self._peers.get(user_id)
        if held is not None and held is not peer:
            return False
        self._peers[user_id] = peer
        return True

    def unbind(self, user_id: int, peer: Peer) -> bool:
        if self._peers.get(user_id) is peer:
            del self._peers[user_id]
            return True
        return False

    def get(self, user_id: int) -> Peer | None:
        return self._peers.get(user_id)

    def peers(self) -> list[tuple[int, Peer]]:
        """Every logged-in user here with its peer (a copy: safe to iterate
        while pushing)."""
        return list(self._peers.items())

    def __len__(self) -> int:
        return len(self._peers)
