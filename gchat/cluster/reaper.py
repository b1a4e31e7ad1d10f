"""Freeing the users of dead nodes: a node whose heartbeat expired is reaped
by whichever live node sweeps first (one Lua script, atomic, so exactly one
sweeper gets the list); an operator may reap a node it knows is dead
(`gchat-admin reset-online --node`)."""

from __future__ import annotations

from gchat.cluster.redis_client import Client
from gchat.cluster.redis_keys import ONE, Layout, Scripts


class Reaper:
    def __init__(self, client: Client, layout: Layout = ONE) -> None:
        self.client = client
        self.keys = layout
        self._scripts = Scripts(client)

    def reap(self, node: str, force: bool = False) -> list[int] | None:
        """Free a node's users; None (nothing done) when it is alive and not
        forced. Raises redis.RedisError."""
        freed = self._scripts.reap(keys=self.keys.anchor, args=[self.keys.prefix, node, "1" if force else "0"])
        return None if freed is None else [int(u) for u in freed]

    def live_nodes(self) -> dict[str, bool]:
        """Every registered node, with whether its heartbeat is alive."""
        nodes = sorted(n.decode() for n in self.client.smembers(self.keys.nodes))  # type: ignore[union-attr]
        pipe = self.client.pipeline(transaction=False)
        for n in nodes:
            pipe.exists(self.keys.node_key(n))
        return {n: bool(alive) for n, alive in zip(nodes, pipe.execute(), strict=True)}

    def sweep(self, me: str) -> dict[str, list[int]]:
        """Reap every other node whose heartbeat expired: node -> the users
        freed (a node another sweeper reaped first is left out)."""
        reaped: dict[str, list[int]] = {}
        for node, alive in self.live_nodes().items():
            if alive or node == me:
                continue
            freed = self.reap(node)
            if freed is not None:
                reaped[node] = freed
        return reaped
