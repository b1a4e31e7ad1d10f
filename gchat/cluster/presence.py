"""Who is online where, cluster-wide.

The presence store is the truth; `user.state` only mirrors it, for
operators, and only the presence implementations write that mirror (through
gchat/cluster/mirror.py): a claim marks the user online, a release offline
unless another node took the user meanwhile. A single node keeps presence in
memory (`LocalPresence`); a cluster keeps it in Redis (`RedisPresence`, in
gchat/cluster/redis_presence.py), with a heartbeat per node so that the
users of a node that died are free again without its help.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from gchat.cluster.mirror import StateMirror

log = logging.getLogger(__name__)

# called with a user this node held but another node claimed while this one
# was cut off from the presence store: its connection here must go (online
# on one node only)
LostHandler = Callable[[int], None]
# called with the users of a dead node that this node reaped: they went
# offline (their friends are told)
FreedHandler = Callable[[list[int]], None]
# errno 2's text (docs/protocol.md part A)
ONLINE = "id is online"


class Presence(Protocol):
    node: str

    def start(self, on_lost: LostHandler, on_freed: FreedHandler | None = None) -> None: ...

    def stop(self) -> None:
        """Release this node's users, and only them."""

    def claim(self, user_id: int) -> bool:
        """Mark the user online on this node, atomically across the cluster;
        False when a live node already holds it."""

    def release(self, user_id: int) -> None:
        """Mark the user offline, if this node holds it. Raises
        gchat.errors.Unavailable when the presence store is down (the claim
        is dropped once it is back)."""

    def owner(self, user_id: int) -> str | None:
        """The live node holding the user, or None when it is offline."""

    def online(self, user_ids: Iterable[int]) -> set[int]:
        """Those of user_ids that are online on a live node. Raises
        gchat.errors.Unavailable when the presence store is down."""

    def why_online(self, user_id: int) -> str:
        """errno 2's errmsg after a refused claim: "id is online" (part A),
        and, in a cluster, when to retry if the node holding the user has
        stopped answering."""


class LocalPresence:
    """Presence of a node that is alone on its store: a set in memory."""

    def __init__(self, node: str, mirror: StateMirror) -> None:
        self.node = node
        self._mirror = mirror
        self._online: set[int] = set()

    def start(self, on_lost: LostHandler, on_freed: FreedHandler | None = None) -> None:
        # alone on its store: whoever the database still calls online was
        # left there by this node's previous life
        n = self._mirror.reset()
        if n:
            log.info("reset %d user(s) left online by a previous run", n)

    def stop(self) -> None:
        self._mirror.offline_many(sorted(self._online))
        self._online.clear()

    def claim(self, user_id: int) -> bool:
        if user_id in self._online:
            return False
        self._online.add(user_id)
        self._mirror.online(user_id)
        return True

    def release(self, user_id: int) -> None:
        if user_id in self._online:
            self._online.discard(user_id)
            self._mirror.offline(user_id)

    def owner(self, user_id: int) -> str | None:
        return self.node if user_id in self._online else None

    def online(self, user_ids: Iterable[int]) -> set[int]:
        return {u for u in user_ids if u in self._online}

    def why_online(self, user_id: int) -> str:
        return ONLINE
