"""Who is online where, cluster-wide.

The presence store is the truth; `user.state` only mirrors it for operators
and for the login ack of a node that has no presence store to ask. A single
node keeps presence in memory (`LocalPresence`); a cluster keeps it in Redis
(`RedisPresence`, in gchat/redispresence.py), with a heartbeat per node so
that the users of a node that died are free again without its help.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Presence(Protocol):
    node: str

    def start(self) -> None: ...

    def stop(self) -> None:
        """Release this node's users, and only them."""

    def claim(self, user_id: int) -> bool:
        """Mark the user online on this node, atomically across the cluster;
        False when a live node already holds it."""

    def release(self, user_id: int) -> None:
        """Mark the user offline, if this node holds it."""

    def owner(self, user_id: int) -> str | None:
        """The live node holding the user, or None when it is offline."""

    def online(self, user_ids: Iterable[int]) -> set[int]:
        """Those of user_ids that are online on a live node."""


class LocalPresence:
    """Presence of a node that is alone on its store: a set in memory."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._online: set[int] = set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._online.clear()

    def claim(self, user_id: int) -> bool:
        if user_id in self._online:
            return False
        self._online.add(user_id)
        return True

    def release(self, user_id: int) -> None:
        self._online.discard(user_id)

    def owner(self, user_id: int) -> str | None:
        return self.node if user_id in self._online else None

    def online(self, user_ids: Iterable[int]) -> set[int]:
        return {u for u in user_ids if u in self._online}
